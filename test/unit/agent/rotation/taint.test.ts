/**
 * Agent behaviour under a taint, against a fake server with real
 * certificates and a ManualClock: which chains a taint covers (signed by a
 * tainted root, through a tainted intermediate, not a CA of the same name
 * with another key), the batch plan (sizes, order, injected random), the
 * sync loop replacing covered SVIDs at the planned point and not before
 * (the old SVID served until then, untainted ones untouched, the agent SVID
 * too, a taint never hidden by a delta), and JWT-SVIDs of a tainted key
 * dropped from the cache.
 */
import { SigilError } from "../../../../spiffe/errors.js";
import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { NodeIdentity } from "../../../../agent/attestation/node.js";
import { AgentCache } from "../../../../agent/cache/agent-cache.js";
import { AgentCacheMetrics } from "../../../../agent/cache/cache-metrics.js";
import { jwtKeyId, lastPlannedAt, planTaintReplacements, spkiSha256Hex, TaintMatcher } from "../../../../agent/rotation/taint.js";
import { agentSvidFromChain, type AgentSvid } from "../../../../agent/storage/agent-svid.js";
import { parseTaintSet, type MintedJwtSvid, type ServerClient, type SyncedEntry, type SyncResult, type TaintSet, type X509SvidParams, type X509SvidResult } from "../../../../agent/sync/server-client.js";
import { SyncLoop } from "../../../../agent/sync/sync-loop.js";
import { ManualClock } from "../../../../common/clock.js";
import { Metrics } from "../../../../common/metrics.js";
import { makeSelector } from "../../../../common/selector.js";
import type { SpiffeBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { generateKeyPair, generateSigner, type Signer } from "../../../../spiffe/signer.js";
import { createIntermediateCa, createRootCa } from "../../../../spiffe/x509/ca.js";
import { decodeCertificate } from "../../../../spiffe/x509/decode-certificate.js";
import type { DistinguishedName } from "../../../../spiffe/x509/name.js";
import { issueLeaf, prepareLeafTemplate, type LeafTemplate } from "../../../../spiffe/x509/leaf.js";
import { randomSerial } from "../../../../spiffe/x509/serial.js";

const HOUR = 3_600_000;
const T0 = new Date("2030-01-01T00:00:00Z");
const td = parseTrustDomain("example.org");
const SAME_NAME: DistinguishedName = { organization: "Sigil", commonName: "one name for every CA" };

interface Ca {
  readonly der: Uint8Array;
  readonly signer: Signer;
  readonly template: LeafTemplate;
  /** Its chain below the bundle: [] for a root, [itself] for an intermediate. */
  readonly chain: readonly Uint8Array[];
  readonly spki: string;
}

function rootCa(subject?: DistinguishedName): Ca {
  const signer = generateSigner("ec-p256");
  const der = createRootCa({ trustDomain: td, notBefore: new Date(T0.getTime() - HOUR), notAfter: new Date(T0.getTime() + 1000 * HOUR), signer, ...(subject ? { subject } : {}) });
  return { der, signer, template: prepareLeafTemplate({ issuerCertDer: der, issuerSigner: signer }), chain: [], spki: spkiSha256Hex(decodeCertificate(der)) };
}

function intermediateCa(parent: Ca, subject?: DistinguishedName): Ca {
  const signer = generateSigner("ec-p256");
  const der = createIntermediateCa({
    trustDomain: td,
    notBefore: new Date(T0.getTime() - HOUR),
    notAfter: new Date(T0.getTime() + 999 * HOUR),
    subjectPublicKey: signer.publicKey,
    issuerCertDer: parent.der,
    issuerSigner: parent.signer,
    ...(subject ? { subject } : {}),
  });
  return { der, signer, template: prepareLeafTemplate({ issuerCertDer: der, issuerSigner: signer }), chain: [der, ...parent.chain], spki: spkiSha256Hex(decodeCertificate(der)) };
}

function leaf(ca: Ca, spiffeId: string, spki: Uint8Array, now: Date, ttlMs = HOUR): Uint8Array[] {
  return [issueLeaf(ca.template, { spiffeId: parseSpiffeId(spiffeId), subjectPublicKeyDer: spki, serial: randomSerial(), notBefore: now, notAfter: new Date(now.getTime() + ttlMs) }), ...ca.chain];
}

const someKey = (): Uint8Array => new Uint8Array(generateKeyPair("ec-p256").publicKey.export({ format: "der", type: "spki" }));

describe("which chains a taint covers", () => {
  const rootA = rootCa();
  const rootB = rootCa();
  const interA = intermediateCa(rootA);
  const bundle = [rootA.der, rootB.der];

  it("the server's hash is the SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex", () => {
    const spki = decodeCertificate(rootA.der).spki;
    expect(rootA.spki).toBe(createHash("sha256").update(spki).digest("hex"));
    expect(rootA.spki).toMatch(/^[0-9a-f]{64}$/);
  });

  it("a leaf signed by a tainted root of the bundle is covered; one signed by another root is not", () => {
    const m = new TaintMatcher(new Set([rootA.spki]), bundle);
    expect(m.covers(leaf(rootA, "spiffe://example.org/w", someKey(), T0))).toBe(true);
    expect(m.covers(leaf(rootB, "spiffe://example.org/w", someKey(), T0))).toBe(false);
  });

  it("a leaf under a tainted intermediate is covered, and so is everything under a tainted root through an untainted intermediate", () => {
    const underInter = leaf(interA, "spiffe://example.org/w", someKey(), T0);
    expect(new TaintMatcher(new Set([interA.spki]), bundle).covers(underInter)).toBe(true);
    expect(new TaintMatcher(new Set([rootA.spki]), bundle).covers(underInter)).toBe(true);
    expect(new TaintMatcher(new Set([rootB.spki]), bundle).covers(underInter)).toBe(false);
  });

  it("upstream: the bundle holds only the upstream root; a tainted Sigil intermediate is found in the SVID's chain, and its successor of the same name under the same root is not covered", () => {
    const upstreamRoot = rootCa();
    const upstreamInter = intermediateCa(upstreamRoot);
    for (const parent of [upstreamRoot, upstreamInter]) {
      // Both carry the configured ca_subject: only the key tells them apart.
      const old = intermediateCa(parent, SAME_NAME);
      const successor = intermediateCa(parent, SAME_NAME);
      expect(decodeCertificate(old.der).subject).toEqual(decodeCertificate(successor.der).subject);
      const m = new TaintMatcher(new Set([old.spki]), [upstreamRoot.der]);
      expect(m.covers(leaf(old, "spiffe://example.org/w", someKey(), T0))).toBe(true);
      expect(m.covers(leaf(successor, "spiffe://example.org/w", someKey(), T0))).toBe(false);
      // A leaf sent without its intermediate cannot be judged through it (the server always sends the chain).
      expect(m.covers(leaf(successor, "spiffe://example.org/w", someKey(), T0).slice(0, 1))).toBe(false);
    }
  });

  it("a CA with the same subject name but another key is told apart (key identifiers)", () => {
    const x = rootCa(SAME_NAME);
    const y = rootCa(SAME_NAME);
    const m = new TaintMatcher(new Set([x.spki]), [x.der, y.der]);
    expect(m.covers(leaf(x, "spiffe://example.org/w", someKey(), T0))).toBe(true);
    expect(m.covers(leaf(y, "spiffe://example.org/w", someKey(), T0))).toBe(false);
  });

  it("an empty taint covers nothing, and a malformed taint field is refused naming it", () => {
    expect(new TaintMatcher(new Set(), bundle).covers(leaf(rootA, "spiffe://example.org/w", someKey(), T0))).toBe(false);
    expect(() => parseTaintSet(["ABC"], [])).toThrow(/tainted_x509_authorities\[0\] is not a lower-case hex SHA-256/);
    expect(() => parseTaintSet([rootA.spki], ["k", ""])).toThrow(/tainted_jwt_keys\[1\] is empty/);
  });
});

describe("replacement plan", () => {
  it("batches of at most batchSize, soonest-expiring first, each at its own random point of the spread", () => {
    const items = Array.from({ length: 250 }, (_, i) => ({ id: `e${i}`, notAfter: new Date(T0.getTime() + HOUR + (250 - i) * 1000) }));
    const draws = [0.5, 0, 0.9];
    const plan = planTaintReplacements(items, T0, { batchSize: 100, spreadMs: 10_000 }, () => draws.shift() ?? 1);
    const byTime = new Map<number, string[]>();
    for (const [id, at] of plan) byTime.set(at.getTime() - T0.getTime(), [...(byTime.get(at.getTime() - T0.getTime()) ?? []), id]);
    expect([...byTime.keys()].sort((a, b) => a - b)).toEqual([0, 5000, 9000]);
    expect(byTime.get(5000)).toHaveLength(100);
    expect(byTime.get(0)).toHaveLength(100);
    expect(byTime.get(9000)).toHaveLength(50);
    // e249 expires first: it is in the first batch (offset 5000); e0 expires last.
    expect(byTime.get(5000)).toContain("e249");
    expect(byTime.get(9000)).toContain("e0");
  });

  it("names the last request time of a plan of 300,000 SVIDs (too many to spread into Math.max)", () => {
    const items = Array.from({ length: 300_000 }, (_, i) => ({ id: `e${i}`, notAfter: new Date(T0.getTime() + HOUR + i) }));
    let draw = 0;
    const plan = planTaintReplacements(items, T0, { batchSize: 1000, spreadMs: 300_000 }, () => (draw = (draw + 7) % 300) / 300);
    expect(() => Math.max(...[...plan.values()].map((d) => d.getTime()))).toThrow(RangeError);
    const expected = [...plan.values()].reduce((m, d) => Math.max(m, d.getTime()), 0);
    expect(lastPlannedAt(plan)?.getTime()).toBe(expected);
    expect(lastPlannedAt(new Map())).toBeUndefined();
  });
});

/** A fake server with two authorities: A signs until `switchTo(B)`; the taint is part of the revision. */
class TaintServer implements ServerClient {
  readonly entries = new Map<string, SyncedEntry>();
  readonly batches: number[] = [];
  readonly roots: Ca[];
  issuer: Ca;
  taint: TaintSet = { x509SpkiSha256: new Set(), jwtKeyIds: new Set() };
  jwtKid = "kid-a";
  identity: AgentSvid | undefined;
  syncs = 0;
  renewals = 0;
  #revision = 1;

  constructor(readonly clock: ManualClock, readonly a: Ca, readonly b: Ca) {
    this.issuer = a;
    this.roots = [a, b];
  }

  bundle(): SpiffeBundle {
    return { trustDomain: td, x509Authorities: this.roots.map((r) => r.der), jwtAuthorities: new Map(), sequenceNumber: 1n };
  }

  put(id: string): void {
    this.entries.set(id, {
      id, spiffeId: `spiffe://example.org/${id}`, selectors: [makeSelector("unix", "uid:1000")], federatesWith: [], hint: "", createdAt: T0, revision: 1,
      jwtSvidTtlSeconds: 0, parentId: "spiffe://example.org/spire/agent/x", x509SvidTtlSeconds: 0, dnsNames: [], expiresAt: undefined,
    });
    this.#revision++;
  }

  revision(): string {
    return `r${this.#revision}|${[...this.taint.x509SpkiSha256].join(",")}|${[...this.taint.jwtKeyIds].join(",")}`;
  }

  async sync(knownRevision: string): Promise<SyncResult> {
    this.syncs++;
    const revision = this.revision();
    if (knownRevision === revision) return { notModified: true, revision, entries: [], bundles: [] };
    // A delta with no entry or bundle change: only the taint moved.
    if (knownRevision.split("|")[0] === revision.split("|")[0]) return { notModified: false, revision, entries: [], bundles: [], delta: { removedEntryIds: [] }, taint: this.taint };
    return { notModified: false, revision, entries: [...this.entries.values()], bundles: [this.bundle()], taint: this.taint };
  }

  async batchNewX509Svid(params: readonly X509SvidParams[]): Promise<X509SvidResult[]> {
    this.batches.push(params.length);
    return params.map((p) => ({ ok: true as const, chain: leaf(this.issuer, this.entries.get(p.entryId)!.spiffeId, p.publicKey, this.clock.now()) }));
  }

  async newJwtSvid(entryId: string): Promise<MintedJwtSvid> {
    const header = Buffer.from(JSON.stringify({ alg: "ES256", kid: this.jwtKid, typ: "JWT" })).toString("base64url");
    const now = this.clock.now();
    return { spiffeId: this.entries.get(entryId)!.spiffeId, token: `${header}.e30.sig`, issuedAt: now, expiresAt: new Date(now.getTime() + HOUR) };
  }

  async attest(): Promise<never> {
    throw new Error("not used");
  }

  /** Set: RenewAgent is refused (as when the agent SVID no longer verifies). */
  refuseRenew = false;

  async renew(): Promise<AgentSvid> {
    this.renewals++;
    if (this.refuseRenew) throw new SigilError("ERR_PERMISSION_DENIED", "agent api: no client certificate");
    const { privateKey, publicKey } = generateKeyPair("ec-p256");
    return agentSvidFromChain(leaf(this.issuer, "spiffe://example.org/spire/agent/x", new Uint8Array(publicKey.export({ format: "der", type: "spki" })), this.clock.now()), privateKey);
  }

  setIdentity(svid: AgentSvid): void {
    this.identity = svid;
  }

  setTrustBundle(): void {}
  close(): void {}
}

function harness(random: () => number, withIdentity = false) {
  const clock = new ManualClock(T0);
  const server = new TaintServer(clock, rootCa(), rootCa());
  const metrics = new Metrics();
  const cacheMetrics = new AgentCacheMetrics(metrics);
  const cache = new AgentCache({ trustDomain: td, clock, mintJwtSvid: (e, a) => server.newJwtSvid(e), metrics: cacheMetrics });
  const identity = new NodeIdentity({ client: server, clock, random: () => 0.5 });
  const loop = new SyncLoop({ client: server, cache, clock, ...(withIdentity ? { identity } : {}), intervalMs: 5000, metrics: cacheMetrics, random, taintBatchSize: 2, taintSpreadMs: 10_000 });
  const servedChains = (): Uint8Array[][] => cache.identitiesFor([makeSelector("unix", "uid:1000")]).map((i) => [...i.svid.chain]);
  const issuedBy = (ca: Ca) => (chain: readonly Uint8Array[]): boolean => new TaintMatcher(new Set([ca.spki]), [ca.der]).covers(chain);
  return { clock, server, metrics, cache, identity, loop, servedChains, issuedBy };
}

describe("the sync loop under a taint", () => {
  it("replaces covered SVIDs at their planned points (old ones served until then), leaves others alone, renews the agent SVID, and counts it", async () => {
    // Rotation jitter draws, then one draw per taint batch and one for the agent SVID.
    const draws: number[] = [];
    const h = harness(() => draws.shift() ?? 0.5, true);
    const { server, clock, loop, cache } = h;
    for (const id of ["a", "b", "c"]) server.put(id);
    const { privateKey, publicKey } = generateKeyPair("ec-p256");
    await h.identity.start(agentSvidFromChain(leaf(server.a, "spiffe://example.org/spire/agent/x", new Uint8Array(publicKey.export({ format: "der", type: "spki" })), T0, 4 * HOUR), privateKey));
    await loop.syncNow();
    expect(h.servedChains().every(h.issuedBy(server.a))).toBe(true);

    // B takes over; a fourth entry gets its SVID from B before the taint.
    server.issuer = server.b;
    server.put("d");
    clock.advance(1000);
    await loop.syncNow();
    const dBefore = cache.svidState("d")!.svid;
    expect(h.issuedBy(server.b)(dBefore.chain)).toBe(true);

    server.taint = { x509SpkiSha256: new Set([server.a.spki]), jwtKeyIds: new Set() };
    // Batches of 2 (a, b | c) at +3 s and +8 s; the agent SVID drawn at +6 s, but renewed with the first batch.
    draws.push(0.3, 0.8, 0.6);
    await loop.syncNow();
    expect(loop.pendingTaintReplacements).toBe(3);
    expect(server.batches.slice(-1)).toEqual([1]); // only d's first issue so far
    expect(h.servedChains()).toHaveLength(4); // never a gap: the tainted ones are still served

    clock.advance(3000);
    server.batches.length = 0;
    await loop.syncNow();
    expect(server.batches).toEqual([2]);
    expect(loop.pendingTaintReplacements).toBe(1);
    expect(h.servedChains()).toHaveLength(4);
    // No workload gets a new SVID before its agent does: a revoke after the workloads' replacements must not cut the agent off.
    expect(server.renewals).toBe(1);
    expect(h.issuedBy(server.b)(h.identity.current()!.chain)).toBe(true);

    clock.advance(3000);
    await loop.syncNow();
    expect(server.renewals).toBe(1);

    clock.advance(2000);
    await loop.syncNow();
    expect(server.batches).toEqual([2, 1]);
    expect(loop.pendingTaintReplacements).toBe(0);
    const served = h.servedChains();
    expect(served).toHaveLength(4);
    expect(served.every(h.issuedBy(server.b))).toBe(true);
    // The untainted SVID was never replaced.
    expect(cache.svidState("d")!.svid).toBe(dBefore);
    const text = await h.metrics.registry.metrics();
    expect(text).toMatch(/sigil_agent_taint_replacements_total\{svid="workload"\} 3/);
    expect(text).toMatch(/sigil_agent_taint_replacements_total\{svid="agent"\} 1/);

    // Nothing more to do: another round asks for nothing.
    clock.advance(1000);
    await loop.syncNow();
    expect(server.batches).toEqual([2, 1]);
  });

  it("a refused renewal of the agent SVID under a taint is retried at the sync schedule, not in a tight loop", async () => {
    const h = harness(() => 0, true);
    h.server.put("a");
    const { privateKey, publicKey } = generateKeyPair("ec-p256");
    await h.identity.start(agentSvidFromChain(leaf(h.server.a, "spiffe://example.org/spire/agent/x", new Uint8Array(publicKey.export({ format: "der", type: "spki" })), T0, 4 * HOUR), privateKey));
    h.server.taint = { x509SpkiSha256: new Set([h.server.a.spki]), jwtKeyIds: new Set() };
    h.server.refuseRenew = true;
    h.loop.start();
    try {
      // The manual clock stands still, so the sync schedule (5 s of real time) brings no further round while this waits.
      for (let i = 0; i < 50 && h.server.renewals < 1; i++) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      await h.loop.stop();
    }
    expect(h.server.renewals).toBe(1);
  });

  it("an SVID the server still signs with the tainted key is replaced once, not in a loop", async () => {
    const h = harness(() => 0);
    h.server.put("a");
    await h.loop.syncNow();
    h.server.taint = { x509SpkiSha256: new Set([h.server.a.spki]), jwtKeyIds: new Set() };
    await h.loop.syncNow();
    await h.loop.syncNow();
    await h.loop.syncNow();
    expect(h.server.batches).toEqual([1, 1]);
  });

  it("drops cached JWT-SVIDs whose kid is tainted; the next fetch mints one with the new key", async () => {
    const h = harness(() => 0);
    h.server.put("a");
    await h.loop.syncNow();
    const before = await h.cache.fetchJwtSvid("a", ["aud"]);
    expect(jwtKeyId(before.token)).toBe("kid-a");
    expect(h.cache.jwtCount).toBe(1);
    h.server.taint = { x509SpkiSha256: new Set(), jwtKeyIds: new Set(["kid-a"]) };
    h.server.jwtKid = "kid-b";
    await h.loop.syncNow();
    expect(h.cache.jwtCount).toBe(0);
    const after = await h.cache.fetchJwtSvid("a", ["aud"]);
    expect(jwtKeyId(after.token)).toBe("kid-b");
    expect(await h.metrics.registry.metrics()).toMatch(/sigil_agent_taint_jwt_svids_dropped_total 1/);
  });

  it("a token the server still signs with a tainted key is handed out but not cached", async () => {
    const h = harness(() => 0);
    h.server.put("a");
    h.server.taint = { x509SpkiSha256: new Set(), jwtKeyIds: new Set(["kid-a"]) };
    await h.loop.syncNow();
    const t = await h.cache.fetchJwtSvid("a", ["aud"]);
    expect(jwtKeyId(t.token)).toBe("kid-a");
    expect(h.cache.jwtCount).toBe(0);
  });
});
