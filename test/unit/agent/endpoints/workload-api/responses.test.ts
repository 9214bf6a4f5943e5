/**
 * The Workload API response builders' identity invariant: an X509-SVID is
 * sent with the SPIFFE ID its certificate names, or not at all; and the
 * per-turn shared X509SVIDResponse (`x509SvidResponseFor`), against a real
 * agent cache: never another caller's identities, never a state from before a
 * rotation or an edit in the same turn.
 */
import { X509Certificate } from "node:crypto";
import { describe, expect, it } from "vitest";
import { AgentCache, type CachedSvidState } from "../../../../../agent/cache/agent-cache.js";
import type { CachedEntry, CachedIdentity } from "../../../../../agent/cache/types.js";
import {
  buildX509SvidResponse,
  MAX_HINT_BYTES,
  selectIdentities,
  svidSpiffeId,
  x509SvidResponseFor,
  type ResponseNote,
} from "../../../../../agent/endpoints/workload-api/responses.js";
import { systemClock } from "../../../../../common/clock.js";
import { parseSelector, type Selector } from "../../../../../common/selector.js";
import { X509SVIDResponseSchema, type X509SVIDResponse } from "../../../../../proto/gen/spiffe/workload_pb.js";
import { encodeMessage } from "../../../../../spiffe/grpc/service.js";
import { FakeTrustDomain } from "../../../../fakes/fake-workload-cache.js";

const own = FakeTrustDomain.create("example.org");
const bundles = { own: own.bundle(), federated: new Map() };

function identity(entryId: string, spiffeId: string, certFor = spiffeId): CachedIdentity {
  return {
    entry: { id: entryId, spiffeId, selectors: [parseSelector("unix:uid:1000")], federatesWith: [], hint: "", createdAt: new Date(0), revision: 1, jwtSvidTtlSeconds: 0 },
    svid: own.issueX509Svid(certFor),
  };
}

describe("buildX509SvidResponse", () => {
  it("never sends an identity whose certificate names another SPIFFE ID than the entry; says so in a note and sends the others", () => {
    const good = identity("e-good", "spiffe://example.org/b");
    const stale = identity("e-stale", "spiffe://example.org/b2", "spiffe://example.org/a");
    const notes: ResponseNote[] = [];
    const resp = buildX509SvidResponse([stale, good], bundles, own.trustDomain, notes);
    expect(resp?.svids.map((s) => s.spiffeId)).toEqual(["spiffe://example.org/b"]);
    for (const s of resp?.svids ?? []) expect(new X509Certificate(s.x509Svid).subjectAltName).toBe(`URI:${s.spiffeId}`);
    expect(notes).toEqual([{ entryId: "e-stale", message: expect.stringMatching(/names spiffe:\/\/example\.org\/b2 but its certificate's URI SAN is spiffe:\/\/example\.org\/a; SVID not sent/) }]);
  });

  it("answers undefined (no identity) when the only identity's certificate does not match", () => {
    const notes: ResponseNote[] = [];
    expect(buildX509SvidResponse([identity("e", "spiffe://example.org/b", "spiffe://example.org/a")], bundles, own.trustDomain, notes)).toBeUndefined();
    expect(notes).toHaveLength(1);
  });

  it("svidSpiffeId reads the leaf's URI SAN; an empty chain or undecodable leaf has none", () => {
    const i = identity("e", "spiffe://example.org/web");
    expect(svidSpiffeId(i.svid)).toBe("spiffe://example.org/web");
    expect(svidSpiffeId({ ...i.svid, chain: [] })).toBeUndefined();
    expect(svidSpiffeId({ ...i.svid, chain: [new Uint8Array([0x30, 0x03, 0x02, 0x01])] })).toBeUndefined();
  });
});

describe("x509SvidResponseFor: one response per turn, shared only by callers with the very same identities", () => {
  const uid = parseSelector("unix:uid:1000");
  const gid = parseSelector("unix:gid:2000");

  function entry(id: string, spiffeId: string, selectors = [uid], revision = 1, hint = ""): CachedEntry {
    return { id, spiffeId, selectors, federatesWith: [], hint, createdAt: new Date(Number(id.replace(/\D/g, "")) * 1000), revision, jwtSvidTtlSeconds: 0 };
  }

  function svidState(e: CachedEntry, svid = own.issueX509Svid(e.spiffeId)): CachedSvidState {
    return { svid, entryRevision: e.revision, renewAt: new Date(Date.now() + 1_800_000) };
  }

  /** A real agent cache holding `entries`, each with a fresh SVID. */
  function cacheWith(entries: CachedEntry[]): AgentCache {
    const cache = new AgentCache({ trustDomain: own.trustDomain, clock: systemClock, mintJwtSvid: () => Promise.reject(new Error("no JWTs here")) });
    cache.update({ entries, bundles: [own.bundle()], svids: new Map(entries.map((e) => [e.id, svidState(e)])), synced: true });
    return cache;
  }

  /** What the handler computes for a caller with `selectors`. */
  function responseFor(cache: AgentCache, selectors: Selector[], notes: ResponseNote[] = []): X509SVIDResponse | undefined {
    const identities = selectIdentities(cache.identitiesFor(selectors), notes);
    return identities.length === 0 ? undefined : x509SvidResponseFor(identities, cache.bundles(), own.trustDomain, notes);
  }

  it("replicas share one response object; a rotation in the same turn is never answered from the memo", () => {
    const web = entry("e1", "spiffe://example.org/web");
    const cache = cacheWith([web]);
    const first = responseFor(cache, [uid]);
    expect(responseFor(cache, [uid])).toBe(first);
    const before = encodeMessage(X509SVIDResponseSchema, first!);
    const rotated = own.issueX509Svid(web.spiffeId);
    cache.update({ svids: new Map([[web.id, svidState(web, rotated)]]) });
    const after = responseFor(cache, [uid]);
    expect(after).not.toBe(first);
    expect(after?.svids[0]?.x509Svid).toEqual(rotated.chain[0]);
    expect(after?.svids[0]?.x509SvidKey).toEqual(rotated.privateKeyPkcs8);
    expect(encodeMessage(X509SVIDResponseSchema, after!).equals(before)).toBe(false);
    // The first response's bytes are untouched by the rotation (nothing shared is rewritten).
    expect(encodeMessage(X509SVIDResponseSchema, first!).equals(before)).toBe(true);
  });

  it("an entry edited in the same turn (new revision, new SPIFFE ID) is not served from the old response", () => {
    const web = entry("e1", "spiffe://example.org/web");
    const cache = cacheWith([web]);
    expect(responseFor(cache, [uid])?.svids.map((s) => s.spiffeId)).toEqual(["spiffe://example.org/web"]);
    const edited = entry("e1", "spiffe://example.org/admin", [uid], 2);
    cache.update({ entries: [edited] });
    expect(responseFor(cache, [uid])).toBeUndefined(); // waiting for the new revision's SVID
    cache.update({ svids: new Map([[edited.id, svidState(edited)]]) });
    expect(responseFor(cache, [uid])?.svids.map((s) => s.spiffeId)).toEqual(["spiffe://example.org/admin"]);
  });

  it("a caller matching more entries never gets, nor gives, the response of one matching fewer", () => {
    const cache = cacheWith([entry("e1", "spiffe://example.org/web"), entry("e2", "spiffe://example.org/db", [uid, gid])]);
    const narrow = responseFor(cache, [uid]);
    const wide = responseFor(cache, [uid, gid]);
    expect(narrow?.svids.map((s) => s.spiffeId)).toEqual(["spiffe://example.org/web"]);
    expect(wide?.svids.map((s) => s.spiffeId)).toEqual(["spiffe://example.org/web", "spiffe://example.org/db"]);
    expect(responseFor(cache, [uid])).toBe(narrow);
  });

  it("identities copied to drop an over-long hint are never shared, and every caller is told why (notes are per caller)", () => {
    const long = entry("e1", "spiffe://example.org/web", [uid], 1, "h".repeat(MAX_HINT_BYTES + 1));
    const cache = cacheWith([long]);
    const notesA: ResponseNote[] = [];
    const notesB: ResponseNote[] = [];
    const a = responseFor(cache, [uid], notesA);
    const b = responseFor(cache, [uid], notesB);
    expect(a?.svids[0]?.hint).toBe("");
    expect(b?.svids[0]?.hint).toBe("");
    expect(notesA).toHaveLength(1);
    expect(notesB).toEqual(notesA);
  });

  it("a shared response's notes reach each of its callers", () => {
    const cache = cacheWith([entry("e1", "spiffe://example.org/web")]);
    // An SVID whose certificate names another ID: the builder's note, memoised with the response.
    const web = cache.entries()[0]!;
    cache.update({ svids: new Map([[web.id, svidState(web, own.issueX509Svid("spiffe://example.org/other"))]]) });
    const notesA: ResponseNote[] = [];
    const notesB: ResponseNote[] = [];
    expect(responseFor(cache, [uid], notesA)).toBeUndefined();
    expect(responseFor(cache, [uid], notesB)).toBeUndefined();
    expect(notesA).toHaveLength(1);
    expect(notesB).toEqual(notesA);
  });
});
