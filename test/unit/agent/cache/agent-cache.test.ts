/**
 * The agent cache and sync loop against a fake server (real certificates from
 * a test CA, time from a ManualClock): first sync, rotation at half life,
 * forced renewal on an entry change, deletion, serving while the server is
 * away, never serving an expired SVID, never serving an SVID or JWT-SVID of an
 * older entry revision, the JWT cache, bundles, metrics, and the agent SVID's
 * own lifecycle.
 */
import { X509Certificate, type KeyObject } from "node:crypto";
import { beforeEach, describe, expect, it } from "vitest";
import { NodeIdentity, explainAttestationFailure } from "../../../../agent/attestation/node.js";
import { AgentCache, jwtCacheKey } from "../../../../agent/cache/agent-cache.js";
import { AgentCacheMetrics } from "../../../../agent/cache/cache-metrics.js";
import type { AgentSvid } from "../../../../agent/storage/agent-svid.js";
import type {
  AttestResult,
  MintedJwtSvid,
  ServerClient,
  SyncedEntry,
  SyncResult,
  X509SvidParams,
  X509SvidResult,
} from "../../../../agent/sync/server-client.js";
import { renewalReason, SyncLoop } from "../../../../agent/sync/sync-loop.js";
import { ManualClock } from "../../../../common/clock.js";
import { Metrics } from "../../../../common/metrics.js";
import { makeSelector } from "../../../../common/selector.js";
import type { AgentNodeAttestor } from "../../../../plugins/nodeattestor/types.js";
import type { SpiffeBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { toX509Bundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { buildCsr } from "../../../../spiffe/csr.js";
import { isSigilError, SigilError } from "../../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { generateKeyPair, generateSigner } from "../../../../spiffe/signer.js";
import { createRootCa } from "../../../../spiffe/x509/ca.js";
import { issueLeaf, prepareLeafTemplate, type LeafTemplate } from "../../../../spiffe/x509/leaf.js";
import { randomSerial } from "../../../../spiffe/x509/serial.js";
import { StaticX509BundleSource } from "../../../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../../../spiffe/x509/verify.js";
import { agentSvidFromChain } from "../../../../agent/storage/agent-svid.js";
import { parseCsr } from "../../../../spiffe/csr.js";

const MIN = 60_000;
const HOUR = 60 * MIN;
const T0 = new Date("2030-01-01T00:00:00Z");
const td = parseTrustDomain("example.org");
const uid = (n: number) => makeSelector("unix", `uid:${n}`);
const gid = (n: number) => makeSelector("unix", `gid:${n}`);

/** A fake server: a test CA, an entry table, and switches for outages and per-entry refusals. */
class FakeServer implements ServerClient {
  readonly caDer: Uint8Array;
  readonly template: LeafTemplate;
  readonly entries = new Map<string, SyncedEntry>();
  readonly batches: string[][] = [];
  jwtMints = 0;
  renewals = 0;
  attestations = 0;
  identity: AgentSvid | undefined;
  available = true;
  refuse = new Set<string>();
  ttlMs = HOUR;
  jwtTtlMs = 10 * MIN;
  bundleSeq = 1n;
  #revision = 0;
  #lastRevision = "";
  #lastBundleSeq = 0n;

  constructor(readonly clock: ManualClock) {
    const signer = generateSigner("ec-p256");
    this.caDer = createRootCa({ trustDomain: td, notBefore: new Date(T0.getTime() - HOUR), notAfter: new Date(T0.getTime() + 1000 * HOUR), signer });
    this.template = prepareLeafTemplate({ issuerCertDer: this.caDer, issuerSigner: signer });
  }

  bundle(): SpiffeBundle {
    return { trustDomain: td, x509Authorities: [this.caDer], jwtAuthorities: new Map(), sequenceNumber: this.bundleSeq };
  }

  put(id: string, spiffePath: string, selectors = [uid(1000)], createdAt = T0): SyncedEntry {
    const old = this.entries.get(id);
    const e: SyncedEntry = {
      id,
      spiffeId: `spiffe://example.org${spiffePath}`,
      selectors,
      federatesWith: [],
      hint: "",
      createdAt,
      revision: (old?.revision ?? 0) + 1,
      jwtSvidTtlSeconds: 0,
      parentId: "spiffe://example.org/spire/agent/x",
      x509SvidTtlSeconds: 0,
      dnsNames: [],
      expiresAt: undefined,
    };
    this.entries.set(id, e);
    this.#revision++;
    return e;
  }

  delete(id: string): void {
    this.entries.delete(id);
    this.#revision++;
  }

  issue(spiffeId: string, spki: Uint8Array): Uint8Array[] {
    const now = this.clock.now();
    return [issueLeaf(this.template, { spiffeId: parseSpiffeId(spiffeId), subjectPublicKeyDer: spki, serial: randomSerial(), notBefore: now, notAfter: new Date(now.getTime() + this.ttlMs) })];
  }

  #check(): void {
    if (!this.available) throw new SigilError("ERR_UNAVAILABLE", "sync: SyncAuthorized: connect ECONNREFUSED");
  }

  async attest(attestor: AgentNodeAttestor): Promise<AttestResult> {
    this.#check();
    this.attestations++;
    const token = Buffer.from(await attestor.payload()).toString();
    if (token === "used") throw new SigilError("ERR_PERMISSION_DENIED", "sync: AttestAgent: join_token: join token not found or already used");
    const { privateKey, publicKey } = generateKeyPair("ec-p256");
    const chain = this.issue("spiffe://example.org/spire/agent/join_token/t", new Uint8Array(publicKey.export({ format: "der", type: "spki" })));
    return { svid: agentSvidFromChain(chain, privateKey), bundle: [this.caDer], selectors: [] };
  }

  async renew(): Promise<AgentSvid> {
    this.#check();
    this.renewals++;
    const { privateKey } = generateKeyPair("ec-p256");
    const csr = parseCsr(buildCsr(privateKey), ["ec-p256"]);
    return agentSvidFromChain(this.issue(this.identity!.spiffeId, csr.publicKeyDer), privateKey);
  }

  async sync(knownRevision: string): Promise<SyncResult> {
    this.#check();
    const revision = `r${this.#revision}-b${this.bundleSeq}`;
    if (knownRevision === revision) return { notModified: true, revision, entries: [], bundles: [] };
    this.#lastRevision = revision;
    this.#lastBundleSeq = this.bundleSeq;
    return { notModified: false, revision, entries: [...this.entries.values()], bundles: [this.bundle()] };
  }

  async batchNewX509Svid(params: readonly X509SvidParams[]): Promise<X509SvidResult[]> {
    this.#check();
    this.batches.push(params.map((p) => p.entryId));
    return params.map((p): X509SvidResult => {
      const e = this.entries.get(p.entryId);
      if (!e || this.refuse.has(p.entryId)) return { ok: false, code: 7, message: `params: entry ${p.entryId} is not authorized` };
      return { ok: true, chain: this.issue(e.spiffeId, p.publicKey) };
    });
  }

  async newJwtSvid(entryId: string, audience: readonly string[]): Promise<MintedJwtSvid> {
    this.#check();
    this.jwtMints++;
    const e = this.entries.get(entryId);
    if (!e) throw new SigilError("ERR_PERMISSION_DENIED", "not authorized");
    const now = this.clock.now();
    return { spiffeId: e.spiffeId, token: `jwt-${this.jwtMints}-${audience.join(",")}`, issuedAt: now, expiresAt: new Date(now.getTime() + this.jwtTtlMs) };
  }

  setIdentity(svid: AgentSvid): void {
    this.identity = svid;
  }

  setTrustBundle(): void {}

  close(): void {}
}

interface Harness {
  clock: ManualClock;
  server: FakeServer;
  cache: AgentCache;
  loop: SyncLoop;
  metrics: Metrics;
  notifications: () => number;
}

function harness(random = 0.5): Harness {
  const clock = new ManualClock(T0);
  const server = new FakeServer(clock);
  const metrics = new Metrics({ defaultMetrics: false });
  const cacheMetrics = new AgentCacheMetrics(metrics);
  const cache = new AgentCache({ trustDomain: td, clock, mintJwtSvid: (e, a) => server.newJwtSvid(e, a), metrics: cacheMetrics });
  const loop = new SyncLoop({ client: server, cache, clock, metrics: cacheMetrics, intervalMs: 5000, random: () => random });
  let n = 0;
  cache.subscribe(() => n++);
  return { clock, server, cache, loop, metrics, notifications: () => n };
}

function metricValue(text: string, name: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

describe("AgentCache with the sync loop", () => {
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });

  it("is not ready and has no bundles before the first sync", () => {
    expect(h.cache.ready()).toBe(false);
    expect(() => h.cache.bundles()).toThrow(expect.objectContaining({ code: "ERR_UNAVAILABLE" }));
    expect(h.cache.identitiesFor([uid(1000)])).toEqual([]);
  });

  it("first sync: one SVID per entry for agent-generated keys, verifiable, matched by selectors, oldest entry first, one notification", async () => {
    h.server.put("e-new", "/web", [uid(1000)], new Date(T0.getTime() + 1000));
    h.server.put("e-old", "/db", [uid(1000), gid(50)], T0);
    h.server.put("e-other", "/other", [uid(2000)]);
    const out = await h.loop.syncNow();
    expect(out).toMatchObject({ ok: true, rotated: 3, failed: 0 });
    expect(h.server.batches).toEqual([["e-new", "e-old", "e-other"]]);
    expect(h.notifications()).toBe(2); // sync (entries + bundle + ready), then the batch of SVIDs
    expect(h.cache.ready()).toBe(true);

    const ids = h.cache.identitiesFor([uid(1000), gid(50)]);
    expect(ids.map((i) => i.entry.id)).toEqual(["e-old", "e-new"]);
    expect(h.cache.identitiesFor([uid(1000)]).map((i) => i.entry.id)).toEqual(["e-new"]);
    const src = new StaticX509BundleSource([toX509Bundle(h.cache.bundles().own)]);
    for (const i of ids) {
      expect(verifyX509Svid(i.svid.chain, src, { now: h.clock.now() }).id.toString()).toBe(i.entry.spiffeId);
      expect(i.svid.notAfter.getTime() - i.svid.notBefore.getTime()).toBe(HOUR);
    }
    const text = await h.metrics.registry.metrics();
    expect(metricValue(text, "sigil_agent_cache_svids")).toBe(3);
    expect(metricValue(text, 'sigil_agent_svid_rotations_total{result="success"}')).toBe(3);
    expect(metricValue(text, 'sigil_agent_sync_total{result="success"}')).toBe(1);
    expect(metricValue(text, "sigil_agent_x509_svid_expiry_timestamp_seconds")).toBe((T0.getTime() + HOUR) / 1000);
  });

  it("an entry without selectors (never accepted by the server, but a datastore may hold one) is served to no caller", async () => {
    h.server.put("e-bare", "/bare", []);
    h.server.put("e-web", "/web", [uid(1000)]);
    await h.loop.syncNow();
    expect(h.cache.identitiesFor([uid(1000)]).map((i) => i.entry.id)).toEqual(["e-web"]);
    expect(h.cache.identitiesFor([uid(65534)])).toEqual([]);
    expect(h.cache.identitiesFor([])).toEqual([]);
  });

  it("names the closest entries and their missing selectors for a caller with no identity", async () => {
    h.server.put("e-two", "/two", [uid(1000), gid(50)]);
    h.server.put("e-one", "/one", [uid(1000), gid(60)]);
    h.server.put("e-none", "/none", [uid(2000)]);
    await h.loop.syncNow();
    const closest = h.cache.closestEntries([uid(1000), gid(50), gid(70)], 3);
    expect(closest.map((c) => [c.entry.id, c.missing])).toEqual([
      ["e-two", []],
      ["e-one", ["unix:gid:60"]],
    ]);
    expect(h.cache.closestEntries([uid(3000)], 3)).toEqual([]);
  });

  it("renews at half life, not before, and only the SVIDs that are due", async () => {
    h.server.put("a", "/a");
    await h.loop.syncNow();
    h.clock.advance(10 * MIN);
    h.server.put("b", "/b");
    await h.loop.syncNow();
    const firstA = h.cache.svidState("a")!.svid;
    expect(h.cache.svidState("a")!.renewAt).toEqual(new Date(T0.getTime() + 30 * MIN));

    h.clock.set(new Date(T0.getTime() + 30 * MIN - 1));
    expect(await h.loop.syncNow()).toMatchObject({ ok: true, notModified: true, rotated: 0 });
    h.clock.set(new Date(T0.getTime() + 30 * MIN));
    expect(await h.loop.syncNow()).toMatchObject({ ok: true, rotated: 1 });
    expect(h.server.batches.at(-1)).toEqual(["a"]);
    const renewedA = h.cache.svidState("a")!.svid;
    expect(renewedA.chain[0]).not.toEqual(firstA.chain[0]);
    expect(renewedA.notBefore).toEqual(h.clock.now());
    expect(renewedA.privateKeyPkcs8).not.toEqual(firstA.privateKeyPkcs8);
  });

  it("forces renewal when an entry's revision changes, even with a fresh SVID", async () => {
    h.server.put("a", "/a");
    h.server.put("b", "/b");
    await h.loop.syncNow();
    h.clock.advance(MIN);
    h.server.put("a", "/a-renamed");
    const before = h.notifications();
    expect(await h.loop.syncNow()).toMatchObject({ ok: true, rotated: 1 });
    expect(h.server.batches.at(-1)).toEqual(["a"]);
    expect(h.cache.identitiesFor([uid(1000)]).map((i) => i.entry.spiffeId)).toContain("spiffe://example.org/a-renamed");
    expect(h.notifications()).toBeGreaterThan(before);
  });

  it("drops the identity (and its JWTs) when its entry disappears, and notifies", async () => {
    h.server.put("a", "/a");
    h.server.put("b", "/b", [uid(1000)]);
    await h.loop.syncNow();
    await h.cache.fetchJwtSvid("a", ["x"]);
    expect(h.cache.jwtCount).toBe(1);
    h.server.delete("a");
    const before = h.notifications();
    await h.loop.syncNow();
    expect(h.notifications()).toBe(before + 1);
    expect(h.cache.identitiesFor([uid(1000)]).map((i) => i.entry.id)).toEqual(["b"]);
    expect(h.cache.svidCount).toBe(1);
    expect(h.cache.jwtCount).toBe(0);
    await expect(h.cache.fetchJwtSvid("a", ["x"])).rejects.toMatchObject({ code: "ERR_NOT_FOUND" });
  });

  it("keeps serving valid SVIDs while the server is away, backs off, and never serves an expired one", async () => {
    h.server.put("a", "/a");
    await h.loop.syncNow();
    h.server.available = false;
    h.clock.advance(45 * MIN); // past the renewal point
    const failed = await h.loop.syncNow();
    expect(failed.ok).toBe(false);
    expect(isSigilError(failed.error, "ERR_UNAVAILABLE")).toBe(true);
    expect(h.loop.consecutiveFailures).toBe(1);
    await h.loop.syncNow();
    expect(h.loop.consecutiveFailures).toBe(2);
    expect(h.cache.identitiesFor([uid(1000)])).toHaveLength(1);

    // At notAfter the SVID is no longer served, even before the loop runs again.
    h.clock.set(new Date(T0.getTime() + HOUR));
    expect(h.cache.identitiesFor([uid(1000)])).toEqual([]);
    const before = h.notifications();
    await h.loop.syncNow();
    expect(h.cache.svidCount).toBe(0);
    expect(h.notifications()).toBe(before + 1);
    const text = await h.metrics.registry.metrics();
    expect(metricValue(text, 'sigil_agent_sync_total{result="error"}')).toBe(3);
    expect(metricValue(text, "sigil_agent_cache_svids")).toBe(0);

    // Back: the entry gets a new SVID and the failure count resets.
    h.server.available = true;
    expect(await h.loop.syncNow()).toMatchObject({ ok: true, rotated: 1 });
    expect(h.loop.consecutiveFailures).toBe(0);
    expect(h.cache.identitiesFor([uid(1000)])).toHaveLength(1);
  });

  it("retries an SVID the server refused on the next round, keeping the others", async () => {
    h.server.put("a", "/a");
    h.server.put("b", "/b");
    h.server.refuse.add("b");
    expect(await h.loop.syncNow()).toMatchObject({ ok: true, rotated: 1, failed: 1 });
    expect(h.cache.identitiesFor([uid(1000)]).map((i) => i.entry.id)).toEqual(["a"]);
    h.server.refuse.clear();
    expect(await h.loop.syncNow()).toMatchObject({ rotated: 1, failed: 0 });
    expect(h.server.batches.at(-1)).toEqual(["b"]);
    const text = await h.metrics.registry.metrics();
    expect(metricValue(text, 'sigil_agent_svid_rotations_total{result="error"}')).toBe(1);
  });

  it("replaces the bundle snapshot when the server's bundle changes, and notifies", async () => {
    h.server.put("a", "/a");
    await h.loop.syncNow();
    expect(h.cache.bundles().own.sequenceNumber).toBe(1n);
    const before = h.notifications();
    h.server.bundleSeq = 2n;
    await h.loop.syncNow();
    expect(h.cache.bundles().own.sequenceNumber).toBe(2n);
    expect(h.notifications()).toBe(before + 1);
  });

  it("never lets rounds overlap", async () => {
    h.server.put("a", "/a");
    const [one, two] = await Promise.all([h.loop.syncNow(), h.loop.syncNow()]);
    expect(one.rotated + two.rotated).toBe(1);
    expect(h.server.batches).toHaveLength(1);
  });
});

describe("JWT-SVID cache", () => {
  let h: Harness;
  beforeEach(async () => {
    h = harness();
    h.server.put("a", "/a");
    await h.loop.syncNow();
  });

  it("reuses a token while more than half its lifetime remains, per (entry, sorted audience)", async () => {
    const t1 = await h.cache.fetchJwtSvid("a", ["b", "a"]);
    const t2 = await h.cache.fetchJwtSvid("a", ["a", "b", "a"]);
    expect(t2.token).toBe(t1.token);
    expect(h.server.jwtMints).toBe(1);
    expect(jwtCacheKey("a", ["b", "a"])).toBe(jwtCacheKey("a", ["a", "b"]));
    await h.cache.fetchJwtSvid("a", ["c"]);
    expect(h.server.jwtMints).toBe(2);

    h.clock.advance(5 * MIN - 1);
    expect((await h.cache.fetchJwtSvid("a", ["a", "b"])).token).toBe(t1.token);
    h.clock.advance(1);
    const t3 = await h.cache.fetchJwtSvid("a", ["a", "b"]);
    expect(t3.token).not.toBe(t1.token);
  });

  it("shares one mint between concurrent callers", async () => {
    const [x, y] = await Promise.all([h.cache.fetchJwtSvid("a", ["q"]), h.cache.fetchJwtSvid("a", ["q"])]);
    expect(x.token).toBe(y.token);
    expect(h.server.jwtMints).toBe(1);
  });

  it("serves a cached, unexpired token when the server is away, and fails once it has expired", async () => {
    const t1 = await h.cache.fetchJwtSvid("a", ["x"]);
    h.server.available = false;
    h.clock.advance(7 * MIN);
    expect((await h.cache.fetchJwtSvid("a", ["x"])).token).toBe(t1.token);
    await expect(h.cache.fetchJwtSvid("a", ["new-audience"])).rejects.toMatchObject({ code: "ERR_UNAVAILABLE" });
    h.clock.advance(3 * MIN);
    await expect(h.cache.fetchJwtSvid("a", ["x"])).rejects.toMatchObject({ code: "ERR_UNAVAILABLE" });
  });

  it("refuses an empty audience and unknown entries", async () => {
    await expect(h.cache.fetchJwtSvid("a", [])).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    await expect(h.cache.fetchJwtSvid("nope", ["x"])).rejects.toMatchObject({ code: "ERR_NOT_FOUND" });
  });

  it("evicts the oldest token beyond the size limit", async () => {
    const clock = new ManualClock(T0);
    const server = new FakeServer(clock);
    server.put("a", "/a");
    const cache = new AgentCache({ trustDomain: td, clock, mintJwtSvid: (e, a) => server.newJwtSvid(e, a), jwtCacheMaxSize: 2 });
    await new SyncLoop({ client: server, cache, clock, intervalMs: 5000 }).syncNow();
    await cache.fetchJwtSvid("a", ["1"]);
    await cache.fetchJwtSvid("a", ["2"]);
    await cache.fetchJwtSvid("a", ["3"]);
    expect(cache.jwtCount).toBe(2);
    await cache.fetchJwtSvid("a", ["1"]);
    expect(server.jwtMints).toBe(4);
  });
});

/** The SPIFFE ID in an identity's leaf certificate, read by Node (not by the code under test). */
function certId(chain: readonly Uint8Array[]): string {
  return (new X509Certificate(chain[0]!).subjectAltName ?? "").replace(/^URI:/, "");
}

/** A promise and the function that resolves it. */
function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return { open, opened };
}

describe("an edited entry never serves its old certificate", () => {
  let h: Harness;
  /** What each selector set was offered at every notification: [entry's SPIFFE ID, certificate's SPIFFE ID]. */
  let seen: Map<number, [string, string][]>;
  beforeEach(async () => {
    h = harness();
    h.server.put("a", "/a", [uid(1000)]);
    h.server.put("other", "/other", [uid(1000)]);
    await h.loop.syncNow();
    seen = new Map([
      [1000, []],
      [2000, []],
    ]);
    h.cache.subscribe(() => {
      for (const [n, list] of seen) for (const i of h.cache.identitiesFor([uid(n)])) list.push([i.entry.spiffeId, certId(i.svid.chain)]);
    });
  });

  it("a changed SPIFFE ID: at every notification each identity's certificate names the entry's ID; the new ID comes with a new certificate", async () => {
    const old = h.cache.svidState("a")!.svid;
    h.server.put("a", "/b", [uid(1000)]);
    expect(await h.loop.syncNow()).toMatchObject({ ok: true, rotated: 1 });
    const offered = seen.get(1000)!;
    for (const [entryId, cert] of offered) expect(cert).toBe(entryId);
    expect(offered.map(([id]) => id)).not.toContain("spiffe://example.org/a");
    expect(offered.map(([id]) => id)).toContain("spiffe://example.org/b");
    const now = h.cache.identitiesFor([uid(1000)]).find((i) => i.entry.id === "a")!;
    expect(certId(now.svid.chain)).toBe("spiffe://example.org/b");
    expect(now.svid.chain[0]).not.toEqual(old.chain[0]);
  });

  it("changed selectors: the SVID is dropped at once for old and new selectors alike; the entry is pending for the new ones until its new SVID arrives", async () => {
    const old = h.cache.svidState("a")!.svid;
    h.server.put("a", "/a", [uid(2000)]);
    h.server.refuse.add("a"); // the new SVID does not arrive this round
    expect(await h.loop.syncNow()).toMatchObject({ ok: true, rotated: 0, failed: 1 });
    expect(h.cache.svidState("a")).toBeUndefined();
    expect(h.cache.identitiesFor([uid(1000)]).map((i) => i.entry.id)).toEqual(["other"]);
    expect(h.cache.identitiesFor([uid(2000)])).toEqual([]);
    expect(h.cache.pendingFor([uid(2000)]).map((e) => [e.id, e.revision])).toEqual([["a", 2]]);
    expect(h.cache.pendingFor([uid(1000)])).toEqual([]);
    expect(seen.get(2000)).toEqual([]);

    h.server.refuse.clear();
    expect(await h.loop.syncNow()).toMatchObject({ ok: true, rotated: 1 });
    const got = h.cache.identitiesFor([uid(2000)]);
    expect(got.map((i) => i.entry.id)).toEqual(["a"]);
    expect(got[0]!.svid.chain[0]).not.toEqual(old.chain[0]);
    expect(h.cache.pendingFor([uid(2000)])).toEqual([]);
    expect(h.cache.identitiesFor([uid(1000)]).map((i) => i.entry.id)).toEqual(["other"]);
  });

  it("an edit of any other field (TTL, DNS names, hint, federates_with) also withdraws the SVID until it is re-issued", async () => {
    const e = h.server.entries.get("a")!;
    h.server.entries.set("a", { ...e, hint: "new-hint", dnsNames: ["a.example"], revision: e.revision + 1 });
    h.server.put("other", "/other", [uid(1000)]); // bumps the sync revision
    h.server.refuse.add("a");
    await h.loop.syncNow();
    expect(h.cache.identitiesFor([uid(1000)]).map((i) => i.entry.id)).toEqual(["other"]);
    expect(h.cache.pendingFor([uid(1000)]).map((x) => x.id)).toEqual(["a"]);
  });

  it("pendingFor is empty while every entry holds a current SVID, and lists an entry whose SVID expired before renewal", async () => {
    expect(h.cache.pendingFor([uid(1000)])).toEqual([]);
    h.server.available = false;
    h.clock.set(new Date(T0.getTime() + HOUR));
    expect(h.cache.pendingFor([uid(1000)]).map((e) => e.id).sort()).toEqual(["a", "other"]);
    expect(h.cache.pendingFor([uid(2000)])).toEqual([]);
    h.server.available = true;
    await h.loop.syncNow();
    expect(h.cache.pendingFor([uid(1000)])).toEqual([]);
  });

  it("an SVID issued for an older revision that arrives after the edit is discarded", async () => {
    const stale = h.cache.svidState("a")!;
    h.server.put("a", "/b", [uid(1000)]);
    h.cache.update({ entries: [...h.server.entries.values()] });
    expect(h.cache.svidState("a")).toBeUndefined();
    h.cache.update({ svids: new Map([["a", stale]]) });
    expect(h.cache.svidState("a")).toBeUndefined();
    expect(h.cache.identitiesFor([uid(1000)]).map((i) => i.entry.id)).toEqual(["other"]);
    expect(h.cache.pendingFor([uid(1000)]).map((x) => x.id)).toEqual(["a"]);
  });

  it("cached JWT-SVIDs of the old revision are dropped; the next one names the new ID", async () => {
    expect((await h.cache.fetchJwtSvid("a", ["x"])).spiffeId).toBe("spiffe://example.org/a");
    h.server.put("a", "/b", [uid(1000)]);
    await h.loop.syncNow();
    expect(h.cache.jwtCount).toBe(0);
    const next = await h.cache.fetchJwtSvid("a", ["x"]);
    expect(next.spiffeId).toBe("spiffe://example.org/b");
    expect(h.server.jwtMints).toBe(2);
  });

  it("a JWT-SVID whose mint straddles the edit is neither served nor cached, and a caller after the edit does not share that mint", async () => {
    const g = gate();
    const cache = new AgentCache({
      trustDomain: td,
      clock: h.clock,
      // The server answers for the revision it had when asked; the answer arrives after the edit.
      mintJwtSvid: async (e, a) => {
        const minted = await h.server.newJwtSvid(e, a);
        await g.opened;
        return minted;
      },
    });
    const loop = new SyncLoop({ client: h.server, cache, clock: h.clock, intervalMs: 5000 });
    await loop.syncNow();
    const before = cache.fetchJwtSvid("a", ["x"]);
    h.server.put("a", "/b", [uid(1000)]);
    await loop.syncNow();
    const after = cache.fetchJwtSvid("a", ["x"]);
    g.open();
    await expect(before).rejects.toMatchObject({ code: "ERR_UNAVAILABLE" });
    expect((await after).spiffeId).toBe("spiffe://example.org/b");
    expect(cache.jwtCount).toBe(1);
    expect((await cache.fetchJwtSvid("a", ["x"])).spiffeId).toBe("spiffe://example.org/b");
  });

  it("a JWT-SVID the server mints for another SPIFFE ID than the agent's entry names (edit not synced yet) is refused, not cached", async () => {
    h.server.put("a", "/b", [uid(1000)]);
    await expect(h.cache.fetchJwtSvid("a", ["x"])).rejects.toMatchObject({ code: "ERR_UNAVAILABLE" });
    expect(h.cache.jwtCount).toBe(0);
    await h.loop.syncNow();
    expect((await h.cache.fetchJwtSvid("a", ["x"])).spiffeId).toBe("spiffe://example.org/b");
  });

  it("a JWT-SVID whose entry is removed during the mint is not served", async () => {
    const g = gate();
    const cache = new AgentCache({
      trustDomain: td,
      clock: h.clock,
      mintJwtSvid: async (e, a) => {
        const minted = await h.server.newJwtSvid(e, a);
        await g.opened;
        return minted;
      },
    });
    const loop = new SyncLoop({ client: h.server, cache, clock: h.clock, intervalMs: 5000 });
    await loop.syncNow();
    const pending = cache.fetchJwtSvid("a", ["x"]);
    h.server.delete("a");
    await loop.syncNow();
    g.open();
    await expect(pending).rejects.toMatchObject({ code: "ERR_UNAVAILABLE" });
    expect(cache.jwtCount).toBe(0);
  });
});

describe("renewalReason", () => {
  const entry = { id: "e", spiffeId: "spiffe://example.org/a", selectors: [], federatesWith: [], hint: "", createdAt: T0, revision: 3, jwtSvidTtlSeconds: 0 };
  const state = (revision: number) => ({
    svid: { chain: [], privateKey: undefined as unknown as KeyObject, privateKeyPkcs8: new Uint8Array(), notBefore: T0, notAfter: new Date(T0.getTime() + HOUR) },
    entryRevision: revision,
    renewAt: new Date(T0.getTime() + 30 * MIN),
  });
  it.each([
    ["no SVID yet", undefined, 0, "new"],
    ["fresh", state(3), 10 * MIN, undefined],
    ["just before the renewal point", state(3), 30 * MIN - 1, undefined],
    ["at the renewal point", state(3), 30 * MIN, "due"],
    ["entry changed", state(2), MIN, "entry-changed"],
    ["expired", state(3), HOUR, "expired"],
  ] as const)("%s", (_name, s, offset, want) => {
    expect(renewalReason(entry, s, new Date(T0.getTime() + offset))).toBe(want);
  });
});

describe("NodeIdentity (agent SVID)", () => {
  function setup(token = "fresh") {
    const clock = new ManualClock(T0);
    const server = new FakeServer(clock);
    const attestor: AgentNodeAttestor = { name: "join_token", payload: async () => Buffer.from(token) };
    const identity = new NodeIdentity({ client: server, clock, attestor, random: () => 0.5 });
    return { clock, server, identity };
  }

  it("attests without a stored SVID, renews through RenewAgent at half life, and installs each SVID on the connection", async () => {
    const { clock, server, identity } = setup();
    const svid = await identity.start(undefined);
    expect(server.attestations).toBe(1);
    expect(server.identity).toBe(svid);
    clock.advance(30 * MIN - 1);
    expect(await identity.maintain()).toBe("none");
    clock.advance(1);
    expect(await identity.maintain()).toBe("renewed");
    expect(server.renewals).toBe(1);
    expect(server.identity).not.toBe(svid);
    expect(server.identity?.spiffeId).toBe(svid.spiffeId);
  });

  it("uses a valid stored SVID without attesting, and re-attests once it has expired", async () => {
    const { clock, server, identity } = setup();
    const stored = await server.attest({ name: "join_token", payload: async () => Buffer.from("x") });
    server.attestations = 0;
    await identity.start(stored.svid);
    expect(server.attestations).toBe(0);
    clock.advance(HOUR);
    expect(await identity.maintain()).toBe("reattested");
    expect(server.attestations).toBe(1);
  });

  it("keeps syncing with a valid agent SVID when renewal fails, and stops once it has expired", async () => {
    const { clock, server, identity } = setup();
    await identity.start(undefined);
    const cache = new AgentCache({ trustDomain: td, clock, mintJwtSvid: (e, a) => server.newJwtSvid(e, a) });
    const loop = new SyncLoop({ client: server, cache, clock, identity, intervalMs: 5000 });
    const renew = server.renew.bind(server);
    server.renew = async () => {
      throw new SigilError("ERR_INTERNAL", "sync: RenewAgent: boom");
    };
    clock.advance(40 * MIN);
    expect(await loop.syncNow()).toMatchObject({ ok: true, agentSvid: "error" });
    server.renew = renew;
    expect(await loop.syncNow()).toMatchObject({ ok: true, agentSvid: "renewed" });
  });

  it("explains that a used join token must be replaced", async () => {
    const { identity } = setup("used");
    const e = await identity.start(undefined).catch((err: unknown) => err);
    expect(isSigilError(e, "ERR_PERMISSION_DENIED")).toBe(true);
    expect((e as Error).message).toContain("a join token works once");
    expect((e as Error).message).toContain("sigil-server token generate");
  });

  it("says what is missing without an attestor", async () => {
    const clock = new ManualClock(T0);
    const identity = new NodeIdentity({ client: new FakeServer(clock), clock });
    await expect(identity.start(undefined)).rejects.toThrow(/no valid agent SVID is stored and no join token is configured/);
  });

  it("explainAttestationFailure keeps codes and names the subsystem", () => {
    expect(explainAttestationFailure("join_token", new SigilError("ERR_UNAVAILABLE", "x")).message).toBe("node attestation: the server cannot be reached: x");
    expect(explainAttestationFailure("tpm", new SigilError("ERR_PERMISSION_DENIED", "no")).message).toBe("node attestation: no");
    expect(explainAttestationFailure("tpm", new Error("boom")).code).toBe("ERR_INTERNAL");
  });
});
