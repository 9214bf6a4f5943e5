/**
 * Agent lifecycle against a fake server on a ManualClock, with the real
 * NodeIdentity, sync loop and state store: an evicted agent deletes its stored
 * SVID and attests again when its node attestor can; a join-token agent cannot,
 * so it names the remedy, stops calling the server and keeps serving the SVIDs
 * it holds until they expire. Transient failures are not eviction. A server
 * that rate-limits the agent is not called again before its retry hint.
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, describe, expect, it } from "vitest";
import { NodeIdentity } from "../../../../agent/attestation/node.js";
import { AgentCache } from "../../../../agent/cache/agent-cache.js";
import { AgentStateStore } from "../../../../agent/storage/agent-state-store.js";
import { agentSvidFromChain, type AgentSvid } from "../../../../agent/storage/agent-svid.js";
import { MAX_RETRY_HINT_MS, pushbackDelayMs, retryOnPushback, ServerPushback } from "../../../../agent/sync/pushback.js";
import { serverRpcError, type AttestResult, type MintedJwtSvid, type ServerClient, type SyncedEntry, type SyncResult, type X509SvidParams, type X509SvidResult } from "../../../../agent/sync/server-client.js";
import { isEvictionError, SyncLoop } from "../../../../agent/sync/sync-loop.js";
import { ManualClock } from "../../../../common/clock.js";
import { makeSelector } from "../../../../common/selector.js";
import { createJoinTokenAgentAttestor, JOIN_TOKEN_REATTEST_REMEDY } from "../../../../plugins/nodeattestor/join_token/agent.js";
import type { AgentNodeAttestor } from "../../../../plugins/nodeattestor/types.js";
import { isSigilError, SigilError } from "../../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { generateKeyPair, generateSigner } from "../../../../spiffe/signer.js";
import { createRootCa } from "../../../../spiffe/x509/ca.js";
import { issueLeaf, prepareLeafTemplate, type LeafTemplate } from "../../../../spiffe/x509/leaf.js";
import { randomSerial } from "../../../../spiffe/x509/serial.js";

const MIN = 60_000;
const HOUR = 60 * MIN;
const T0 = new Date("2030-01-01T00:00:00Z");
const td = parseTrustDomain("example.org");
const AGENT_ID = "spiffe://example.org/spire/agent/node-1";
const WEB = makeSelector("unix", "uid:1000");
const root = mkdtempSync(path.join(tmpdir(), "sigil-agent-eviction-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let dirs = 0;

/** A gRPC failure as grpc-js reports it, turned into the agent's error as the real client does. */
function rpcFailure(rpc: string, code: status, details: string, trailers: Record<string, string> = {}): SigilError {
  const metadata = new Metadata();
  for (const [k, v] of Object.entries(trailers)) metadata.set(k, v);
  const se = Object.assign(new Error(`${code} ${status[code]}: ${details}`), { code, details, metadata }) as ServiceError;
  return serverRpcError(rpc, se);
}

/** The server's answer to a caller it holds no record of (server/api/agent-api.ts). */
const notAttested = (rpc: string): SigilError =>
  rpcFailure(rpc, status.PERMISSION_DENIED, `agent api: ${AGENT_ID} is not an attested agent`, { "sigil-error-code": "ERR_AGENT_NOT_ATTESTED" });

/** A fake agent API: a test CA, one entry, an agent record that can be evicted, and switches for failures. */
class FakeServer implements ServerClient {
  readonly caDer: Uint8Array;
  readonly template: LeafTemplate;
  /** Serials of agent SVIDs the server accepts; eviction empties it. */
  readonly known = new Set<string>();
  readonly calls: string[] = [];
  readonly attestedWith: string[] = [];
  readonly usedTokens = new Set<string>();
  identity: AgentSvid | undefined;
  /** When set, every call but attestation fails with it. */
  failure: SigilError | undefined;
  /** When set, attestation fails with it. */
  attestFailure: SigilError | undefined;
  ttlMs = HOUR;
  batchSize = 0;

  constructor(readonly clock: ManualClock) {
    const signer = generateSigner("ec-p256");
    this.caDer = createRootCa({ trustDomain: td, notBefore: new Date(T0.getTime() - HOUR), notAfter: new Date(T0.getTime() + 1000 * HOUR), signer });
    this.template = prepareLeafTemplate({ issuerCertDer: this.caDer, issuerSigner: signer });
  }

  evict(): void {
    this.known.clear();
  }

  #issue(spiffeId: string): AgentSvid {
    const { privateKey, publicKey } = generateKeyPair("ec-p256");
    const now = this.clock.now();
    const chain = [issueLeaf(this.template, { spiffeId: parseSpiffeId(spiffeId), subjectPublicKeyDer: new Uint8Array(publicKey.export({ format: "der", type: "spki" })), serial: randomSerial(), notBefore: now, notAfter: new Date(now.getTime() + this.ttlMs) })];
    return agentSvidFromChain(chain, privateKey);
  }

  #authenticate(rpc: string): void {
    this.calls.push(rpc);
    if (this.failure) throw this.failure;
    if (!this.identity || !this.known.has(Buffer.from(this.identity.chain[0] as Uint8Array).toString("base64"))) throw notAttested(rpc);
  }

  async attest(attestor: AgentNodeAttestor): Promise<AttestResult> {
    this.calls.push("AttestAgent");
    if (this.attestFailure) throw this.attestFailure;
    const evidence = Buffer.from(await attestor.payload()).toString();
    this.attestedWith.push(evidence);
    if (attestor.name === "join_token") {
      if (this.usedTokens.has(evidence)) throw rpcFailure("AttestAgent", status.PERMISSION_DENIED, "join_token: join token not found or already used");
      this.usedTokens.add(evidence);
    }
    const svid = this.#issue(AGENT_ID);
    this.known.add(Buffer.from(svid.chain[0] as Uint8Array).toString("base64"));
    return { svid, bundle: [this.caDer], selectors: [] };
  }

  async renew(): Promise<AgentSvid> {
    this.#authenticate("RenewAgent");
    const svid = this.#issue(AGENT_ID);
    this.known.add(Buffer.from(svid.chain[0] as Uint8Array).toString("base64"));
    return svid;
  }

  async sync(knownRevision: string): Promise<SyncResult> {
    this.#authenticate("SyncAuthorized");
    if (knownRevision === "r1") return { notModified: true, revision: "r1", entries: [], bundles: [] };
    const entry: SyncedEntry = {
      id: "web",
      spiffeId: "spiffe://example.org/web",
      parentId: AGENT_ID,
      selectors: [WEB],
      federatesWith: [],
      hint: "",
      createdAt: T0,
      revision: 1,
      jwtSvidTtlSeconds: 0,
      x509SvidTtlSeconds: 0,
      dnsNames: [],
      expiresAt: undefined,
    };
    return { notModified: false, revision: "r1", entries: [entry], bundles: [{ trustDomain: td, x509Authorities: [this.caDer], jwtAuthorities: new Map() }] };
  }

  async batchNewX509Svid(params: readonly X509SvidParams[]): Promise<X509SvidResult[]> {
    this.#authenticate("BatchNewX509SVID");
    return params.map((p) => {
      const now = this.clock.now();
      return { ok: true, chain: [issueLeaf(this.template, { spiffeId: parseSpiffeId("spiffe://example.org/web"), subjectPublicKeyDer: p.publicKey, serial: randomSerial(), notBefore: now, notAfter: new Date(now.getTime() + this.ttlMs) })] };
    });
  }

  async newJwtSvid(): Promise<MintedJwtSvid> {
    throw new Error("not used");
  }

  setIdentity(svid: AgentSvid): void {
    this.identity = svid;
  }

  setTrustBundle(): void {}

  close(): void {}
}

/** A node attestor that can always prove the node again (as k8s_psat or tpm would). */
function reattestingAttestor(): AgentNodeAttestor & { proofs: number } {
  const a = {
    name: "fake_psat",
    proofs: 0,
    async payload(): Promise<Uint8Array> {
      a.proofs++;
      return Buffer.from(`proof-${a.proofs}`);
    },
    canReattest: () => true,
  };
  return a;
}

interface Harness {
  clock: ManualClock;
  server: FakeServer;
  store: AgentStateStore;
  cache: AgentCache;
  identity: NodeIdentity;
  loop: SyncLoop;
  problems: (string | undefined)[];
}

/** Starts an agent core the way agent/agent.ts composes it: identity from the stored SVID or attestation, then one sync. */
async function harness(attestor: AgentNodeAttestor, opts: { server?: FakeServer; store?: AgentStateStore; clock?: ManualClock } = {}): Promise<Harness> {
  const clock = opts.clock ?? new ManualClock(T0);
  const server = opts.server ?? new FakeServer(clock);
  const store = opts.store ?? new AgentStateStore(path.join(root, `d${dirs++}`));
  const cache = new AgentCache({ trustDomain: td, clock, mintJwtSvid: () => Promise.reject(new Error("not used")) });
  const identity = new NodeIdentity({ client: server, clock, attestor, store, random: () => 0.5 });
  await identity.start(store.load({ trustDomain: td, now: clock.now() }).svid);
  const problems: (string | undefined)[] = [];
  const loop = new SyncLoop({ client: server, cache, clock, identity, attestor, store, intervalMs: 5000, random: () => 0.5, onProblem: (p) => problems.push(p) });
  expect(await loop.syncNow()).toMatchObject({ ok: true, rotated: 1 });
  return { clock, server, store, cache, identity, loop, problems };
}

describe("join_token agent attestor", () => {
  it("can attest again only while its single-use token has not been sent, and names the remedy", async () => {
    const a = createJoinTokenAgentAttestor({ join_token: "tok-1" });
    expect(a.canReattest?.()).toBe(true);
    await a.payload();
    expect(a.canReattest?.()).toBe(false);
    expect(a.reattestRemedy).toBe(JOIN_TOKEN_REATTEST_REMEDY);
    expect(a.reattestRemedy).toMatch(/a new join token is needed: .*sigil-agent run --join-token/);
  });
});

describe("eviction is told apart from other failures", () => {
  it.each([
    ["not attested (evicted)", notAttested("SyncAuthorized"), true],
    // Only the server's code counts, never its wording.
    ["the same words without the code", rpcFailure("SyncAuthorized", status.PERMISSION_DENIED, `agent api: ${AGENT_ID} is not an attested agent`), false],
    ["the code on another status", rpcFailure("SyncAuthorized", status.UNAVAILABLE, "x", { "sigil-error-code": "ERR_AGENT_NOT_ATTESTED" }), false],
    ["banned", rpcFailure("SyncAuthorized", status.PERMISSION_DENIED, `agent api: agent ${AGENT_ID} is banned`), false],
    ["not its current SVID", rpcFailure("SyncAuthorized", status.PERMISSION_DENIED, `agent api: ${AGENT_ID} presented an SVID (serial 1f) that is not its current one`), false],
    ["server unreachable", rpcFailure("SyncAuthorized", status.UNAVAILABLE, "No connection established"), false],
    ["server restarting", rpcFailure("SyncAuthorized", status.CANCELLED, "Call cancelled"), false],
    ["rate limited", rpcFailure("SyncAuthorized", status.RESOURCE_EXHAUSTED, "rate limit; retry after 100ms"), false],
  ])("%s", (_name, error, evicted) => {
    expect(isEvictionError(error)).toBe(evicted);
  });
});

describe("an evicted join-token agent", () => {
  it("deletes its stored SVID, names the remedy once, stops calling the server, and serves its SVIDs until they expire", async () => {
    const h = await harness(createJoinTokenAgentAttestor({ join_token: "tok-1" }));
    expect(existsSync(h.store.svidPath)).toBe(true);
    const served = h.cache.identitiesFor([WEB]);
    expect(served).toHaveLength(1);

    h.server.evict();
    h.clock.advance(MIN);
    const out = await h.loop.syncNow();
    expect(out.ok).toBe(false);
    expect(isSigilError(out.error, "ERR_PERMISSION_DENIED")).toBe(true);
    expect(h.loop.evicted).toBe(true);
    expect(existsSync(h.store.svidPath)).toBe(false);
    expect(h.loop.problem).toBe(`agent ${AGENT_ID} was evicted; ${JOIN_TOKEN_REATTEST_REMEDY}`);
    expect(h.problems).toEqual([h.loop.problem]);
    // The used token is never sent again.
    expect(h.server.attestedWith).toEqual(["tok-1"]);

    // Later rounds leave the server alone; the workload keeps its still-valid SVID.
    const calls = h.server.calls.length;
    h.clock.advance(10 * MIN);
    expect((await h.loop.syncNow()).ok).toBe(false);
    expect(h.server.calls.length).toBe(calls);
    expect(h.loop.nextDelayMs).toBe(5000);
    expect(h.cache.identitiesFor([WEB]).map((i) => i.svid.chain[0])).toEqual(served.map((i) => i.svid.chain[0]));

    // Until it expires: then nothing is served.
    h.clock.set(served[0]!.svid.notAfter);
    await h.loop.syncNow();
    expect(h.cache.identitiesFor([WEB])).toEqual([]);
    expect(h.cache.svidCount).toBe(0);
    expect(h.problems).toHaveLength(1);
  });

  it("an eviction seen on RenewAgent is handled the same way", async () => {
    const h = await harness(createJoinTokenAgentAttestor({ join_token: "tok-1" }));
    h.server.evict();
    h.clock.set(h.identity.renewAt);
    const out = await h.loop.syncNow();
    expect(out).toMatchObject({ ok: false, agentSvid: "error" });
    expect(h.server.calls.at(-1)).toBe("RenewAgent");
    expect(h.loop.evicted).toBe(true);
    expect(existsSync(h.store.svidPath)).toBe(false);
  });

  it("restarted with a fresh join token over a stored SVID it had not yet seen refused, attests with the new token", async () => {
    const first = await harness(createJoinTokenAgentAttestor({ join_token: "tok-1" }));
    first.server.evict(); // while the agent is down: its SVID is still on disk
    const h = await harness(createJoinTokenAgentAttestor({ join_token: "tok-2" }), { server: first.server, store: first.store, clock: first.clock });
    expect(h.server.attestedWith).toEqual(["tok-1", "tok-2"]);
    expect(h.loop.problem).toBeUndefined();
    expect(h.problems).toEqual(["agent: spiffe://example.org/spire/agent/node-1 was evicted by the server; attesting again", undefined]);
    expect(existsSync(h.store.svidPath)).toBe(true);
    expect((await h.loop.syncNow()).ok).toBe(true);
  });

  it("restarted with its used token over a stored SVID, tries it once and then names the remedy", async () => {
    const first = await harness(createJoinTokenAgentAttestor({ join_token: "tok-1" }));
    first.server.evict();
    const clock = first.clock;
    const store = first.store;
    const attestor = createJoinTokenAgentAttestor({ join_token: "tok-1" });
    const cache = new AgentCache({ trustDomain: td, clock, mintJwtSvid: () => Promise.reject(new Error("not used")) });
    const identity = new NodeIdentity({ client: first.server, clock, attestor, store });
    await identity.start(store.load({ trustDomain: td, now: clock.now() }).svid);
    const loop = new SyncLoop({ client: first.server, cache, clock, identity, attestor, store, intervalMs: 5000 });
    expect((await loop.syncNow()).ok).toBe(false);
    expect(loop.problem).toMatch(/attesting again/);
    expect((await loop.syncNow()).ok).toBe(false);
    expect(loop.evicted).toBe(true);
    expect(loop.problem).toMatch(/a new join token is needed/);
    expect(first.server.attestedWith).toEqual(["tok-1", "tok-1"]);
  });
});

describe("an evicted agent whose node attestor can attest again", () => {
  it("deletes its SVID, attests again in the same round, stores the new SVID and syncs", async () => {
    const attestor = reattestingAttestor();
    const h = await harness(attestor);
    const before = h.identity.current()!;
    h.server.evict();
    h.clock.advance(MIN);
    const out = await h.loop.syncNow();
    expect(out).toMatchObject({ ok: true, agentSvid: "reattested" });
    expect(attestor.proofs).toBe(2);
    expect(h.identity.current()!.chain[0]).not.toEqual(before.chain[0]);
    expect(h.store.load({ trustDomain: td, now: h.clock.now() }).svid?.chain[0]).toEqual(h.identity.current()!.chain[0]);
    expect(h.loop.problem).toBeUndefined();
    expect(h.problems).toEqual([`agent: ${AGENT_ID} was evicted by the server; attesting again`, undefined]);
    expect(h.cache.identitiesFor([WEB])).toHaveLength(1);
  });

  it("keeps trying while attestation fails (server away), not ready meanwhile, serving its SVIDs", async () => {
    const attestor = reattestingAttestor();
    const h = await harness(attestor);
    h.server.evict();
    h.server.attestFailure = rpcFailure("AttestAgent", status.UNAVAILABLE, "No connection established");
    expect((await h.loop.syncNow()).ok).toBe(false);
    expect(existsSync(h.store.svidPath)).toBe(false);
    expect(h.loop.problem).toMatch(/was evicted by the server; attesting again/);
    expect(h.loop.evicted).toBe(false);
    expect(h.cache.identitiesFor([WEB])).toHaveLength(1);

    h.server.attestFailure = undefined;
    h.clock.advance(h.loop.nextDelayMs);
    expect(await h.loop.syncNow()).toMatchObject({ ok: true, agentSvid: "reattested" });
    expect(h.loop.problem).toBeUndefined();
    expect(existsSync(h.store.svidPath)).toBe(true);
  });
});

describe("transient failures are not eviction", () => {
  it.each([
    ["the server is unreachable", rpcFailure("SyncAuthorized", status.UNAVAILABLE, "No connection established")],
    ["the agent is banned", rpcFailure("SyncAuthorized", status.PERMISSION_DENIED, `agent api: agent ${AGENT_ID} is banned`)],
  ])("%s: the stored SVID stays, no attestation, no problem", async (_name, failure) => {
    const attestor = reattestingAttestor();
    const h = await harness(attestor);
    h.server.failure = failure;
    expect((await h.loop.syncNow()).ok).toBe(false);
    expect(existsSync(h.store.svidPath)).toBe(true);
    expect(attestor.proofs).toBe(1);
    expect(h.loop.problem).toBeUndefined();
    expect(h.problems).toEqual([]);
    h.server.failure = undefined;
    expect((await h.loop.syncNow()).ok).toBe(true);
  });
});

describe("server retry hints (ResourceExhausted)", () => {
  const limited = (rpc: string, ms: number) =>
    rpcFailure(rpc, status.RESOURCE_EXHAUSTED, `rate limit: agent ${AGENT_ID} asked for more than 1 X509-SVIDs per second; retry after ${ms}ms`, { "grpc-retry-pushback-ms": String(ms) });

  it.each([
    [1000, 0, 1000],
    [1000, 0.5, 1100],
    [1000, 1, 1200],
    [0, 1, 0],
    [10 * HOUR, 0, MAX_RETRY_HINT_MS],
  ])("pushbackDelayMs(%d, random %d) = %d: never shorter than the hint, capped", (hint, random, want) => {
    expect(pushbackDelayMs(hint, random)).toBe(want);
  });

  it("the sync loop does not call the server again before the hint (with jitter) has passed", async () => {
    const h = await harness(reattestingAttestor());
    h.server.failure = limited("SyncAuthorized", 3000);
    h.clock.advance(MIN);
    const out = await h.loop.syncNow();
    expect(out.ok).toBe(false);
    expect(h.loop.retryAfter).toEqual(new Date(h.clock.now().getTime() + 3300)); // random 0.5: 10% on top
    expect(h.loop.nextDelayMs).toBe(Math.max(3300, 10_000));
    h.server.failure = undefined;

    const calls = h.server.calls.length;
    h.clock.advance(3299);
    const held = await h.loop.syncNow();
    expect(isSigilError(held.error, "ERR_RESOURCE_EXHAUSTED")).toBe(true);
    expect(h.server.calls.length).toBe(calls);

    h.clock.advance(1);
    expect((await h.loop.syncNow()).ok).toBe(true);
    expect(h.server.calls.length).toBeGreaterThan(calls);
  });

  it("a hint longer than the backoff sets the next round's delay", async () => {
    const h = await harness(reattestingAttestor());
    h.server.failure = limited("BatchNewX509SVID", 60_000);
    h.clock.set(h.cache.svidState("web")!.renewAt);
    expect((await h.loop.syncNow()).ok).toBe(false);
    expect(h.loop.nextDelayMs).toBe(66_000);
  });

  it("ServerPushback refuses locally until the hint has passed, then calls again", async () => {
    const clock = new ManualClock(T0);
    const pushback = new ServerPushback({ clock, random: () => 0, what: "NewJWTSVID" });
    const refusal = limited("NewJWTSVID", 2000);
    let calls = 0;
    const call = async (): Promise<string> => {
      calls++;
      if (calls === 1) throw refusal;
      return "ok";
    };
    // The caller (a workload asking for a JWT-SVID) sees ResourceExhausted with the hint, whatever the server client made of it.
    await expect(pushback.run(call)).rejects.toMatchObject({ code: "ERR_RESOURCE_EXHAUSTED", retryAfterMs: 2000, cause: refusal });
    clock.advance(1999);
    await expect(pushback.run(call)).rejects.toMatchObject({ code: "ERR_RESOURCE_EXHAUSTED", retryAfterMs: 1 });
    expect(calls).toBe(1);
    clock.advance(1);
    expect(await pushback.run(call)).toBe("ok");
    expect(calls).toBe(2);
    // A failure without a hint passes through untouched.
    const other = new SigilError("ERR_PERMISSION_DENIED", "not authorized");
    await expect(pushback.run(() => Promise.reject(other))).rejects.toBe(other);
  });

  it("node attestation at start-up waits out the hint and tries again; a failure without a hint is thrown at once", async () => {
    const slept: number[] = [];
    let attempts = 0;
    const result = await retryOnPushback(
      async () => {
        attempts++;
        if (attempts < 3) throw limited("AttestAgent", 500 * attempts);
        return "attested";
      },
      { what: "node attestation", random: () => 1, sleep: async (ms) => void slept.push(ms) },
    );
    expect(result).toBe("attested");
    expect(slept).toEqual([600, 1200]);

    const refused = rpcFailure("AttestAgent", status.PERMISSION_DENIED, "join_token: join token not found or already used");
    await expect(retryOnPushback(() => Promise.reject(refused), { what: "node attestation", sleep: async () => expect.fail("must not wait") })).rejects.toBe(refused);
  });
});
