/**
 * The Workload API response builders' identity invariant: an X509-SVID is
 * sent with the SPIFFE ID its certificate names, or not at all.
 */
import { X509Certificate } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { CachedIdentity } from "../../../../../agent/cache/types.js";
import { buildX509SvidResponse, svidSpiffeId, type ResponseNote } from "../../../../../agent/endpoints/workload-api/responses.js";
import { parseSelector } from "../../../../../common/selector.js";
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
