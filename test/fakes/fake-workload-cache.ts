/**
 * A fake {@link WorkloadCache} for tests of the Workload API and SDS endpoints:
 * the test adds and removes identities, rotates SVIDs and changes bundles, and
 * every change notifies subscribers as the real cache does.
 *
 * Identity material is real: {@link FakeTrustDomain} is a CA built with
 * Sigil's own X.509 builders (no OpenSSL needed) plus a JWT signing key, so
 * responses can be checked with the real Workload API client and validators.
 */
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { EventEmitter, once } from "node:events";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DeliveryRecorder } from "../../agent/cache/deliveries.js";
import { createCallerAttester, type AttestedCaller } from "../../agent/attestation/workload.js";
import type { PeerCredentials } from "../../agent/endpoints/peer.js";
import { createPeerTracker, startWorkloadEndpoint, type PeerTracker } from "../../agent/endpoints/server.js";
import { createWorkloadApiHandler, type WorkloadApiProfiles } from "../../agent/endpoints/workload-api/handler.js";
import type { HealthService } from "../../common/health/grpc-health.js";
import { createLogger } from "../../common/log.js";
import { Metrics } from "../../common/metrics.js";
import { createUnixWorkloadAttestor } from "../../plugins/workloadattestor/unix/index.js";
import type { WorkloadAttestor } from "../../plugins/workloadattestor/types.js";
import { parseSelector, selectorsSubsetOf, type Selector } from "../../common/selector.js";
import type {
  BundleSnapshot,
  CachedEntry,
  CachedIdentity,
  CachedJwtSvid,
  CachedX509Svid,
  WorkloadCache,
} from "../../agent/cache/types.js";
import type { SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { SigilError } from "../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain, type TrustDomain } from "../../spiffe/id.js";
import { signJwtSvid } from "../../spiffe/jwt/sign.js";
import { generateSigner, type Signer } from "../../spiffe/signer.js";
import { createRootCa } from "../../spiffe/x509/ca.js";
import { issueLeaf, prepareLeafTemplate, type LeafTemplate } from "../../spiffe/x509/leaf.js";
import { randomSerial } from "../../spiffe/x509/serial.js";

const HOUR = 3_600_000;

/** A test trust domain: an X.509 root CA and a JWT signing key. */
export class FakeTrustDomain {
  readonly trustDomain: TrustDomain;
  /** The root CA certificate, DER. */
  readonly caDer: Uint8Array;
  readonly jwtSigner: Signer;
  readonly #template: LeafTemplate;

  private constructor(td: TrustDomain, caSigner: Signer, caDer: Uint8Array, jwtSigner: Signer) {
    this.trustDomain = td;
    this.caDer = caDer;
    this.jwtSigner = jwtSigner;
    this.#template = prepareLeafTemplate({ issuerCertDer: caDer, issuerSigner: caSigner });
  }

  /** Creates a trust domain with a fresh P-256 root (valid one day) and JWT key (`kid` `<td>-jwt-1`). */
  static create(name: string): FakeTrustDomain {
    const td = parseTrustDomain(name);
    const caSigner = generateSigner("ec-p256", `${name}-ca`);
    const now = Date.now();
    const caDer = createRootCa({ trustDomain: td, notBefore: new Date(now - HOUR), notAfter: new Date(now + 24 * HOUR), signer: caSigner });
    return new FakeTrustDomain(td, caSigner, caDer, generateSigner("ec-p256", `${name}-jwt-1`));
  }

  /** The SPIFFE bundle of this trust domain (its root and JWT key). */
  bundle(): SpiffeBundle {
    return {
      trustDomain: this.trustDomain,
      x509Authorities: [this.caDer],
      jwtAuthorities: new Map<string, KeyObject>([[this.jwtSigner.id, this.jwtSigner.publicKey]]),
    };
  }

  /** Issues an X509-SVID for `spiffeId` (valid one hour from now unless told). */
  issueX509Svid(spiffeId: string, notAfter: Date = new Date(Date.now() + HOUR)): CachedX509Svid {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const notBefore = new Date(Date.now() - 60_000);
    const leaf = issueLeaf(this.#template, {
      spiffeId: parseSpiffeId(spiffeId),
      subjectPublicKeyDer: new Uint8Array(publicKey.export({ type: "spki", format: "der" })),
      serial: randomSerial(),
      notBefore,
      notAfter,
    });
    return {
      chain: [leaf],
      privateKey,
      privateKeyPkcs8: new Uint8Array(privateKey.export({ type: "pkcs8", format: "der" })),
      notBefore,
      notAfter,
    };
  }

  /** Signs a JWT-SVID with this trust domain's key. */
  signJwt(spiffeId: string, audience: readonly string[], ttlSeconds = 300, extraClaims: Readonly<Record<string, unknown>> = {}): string {
    const now = Date.now();
    return signJwtSvid({
      spiffeId: parseSpiffeId(spiffeId),
      audience,
      issuedAt: new Date(now),
      expiresAt: new Date(now + ttlSeconds * 1000),
      signer: this.jwtSigner,
      extraClaims,
    });
  }
}

/** What a test says about an identity; the rest gets defaults. */
export interface FakeIdentityInit {
  readonly spiffeId: string;
  /** `type:value` strings, e.g. `unix:uid:1000`. */
  readonly selectors: readonly string[];
  /** Default: a counter-based `entry-<n>`. */
  readonly entryId?: string;
  readonly federatesWith?: readonly string[];
  readonly hint?: string;
  /** Default: increases with each added identity, so insertion order is age order. */
  readonly createdAt?: Date;
}

/** A recorded `fetchJwtSvid` call. */
export interface FakeJwtRequest {
  readonly entryId: string;
  readonly audience: readonly string[];
}

/** Options of {@link FakeWorkloadCache}. */
export interface FakeWorkloadCacheOptions {
  /** The agent's trust domain (default a fresh `example.org`). */
  readonly trustDomain?: FakeTrustDomain;
  /** Default true. */
  readonly ready?: boolean;
}

/** An in-memory {@link WorkloadCache} the test drives. */
export class FakeWorkloadCache implements WorkloadCache {
  readonly own: FakeTrustDomain;
  /** Every `fetchJwtSvid` call, in order. */
  readonly jwtRequests: FakeJwtRequest[] = [];
  /** When set, `fetchJwtSvid` rejects with it (e.g. the server is unreachable). */
  jwtFailure: Error | undefined;

  readonly #identities = new Map<string, CachedIdentity>();
  readonly #federated = new Map<string, SpiffeBundle>();
  readonly #foreign = new Map<string, FakeTrustDomain>();
  readonly #listeners = new Set<() => void>();
  readonly #events = new EventEmitter();
  #ownBundle: SpiffeBundle;
  #ready: boolean;
  #seq = 0;

  constructor(options: FakeWorkloadCacheOptions = {}) {
    this.own = options.trustDomain ?? FakeTrustDomain.create("example.org");
    this.#ownBundle = this.own.bundle();
    this.#ready = options.ready ?? true;
  }

  // --- WorkloadCache --------------------------------------------------------

  identitiesFor(selectors: readonly Selector[]): CachedIdentity[] {
    return [...this.#identities.values()]
      .filter((i) => i.entry.selectors.length > 0 && selectorsSubsetOf(i.entry.selectors, selectors))
      .sort((a, b) => a.entry.createdAt.getTime() - b.entry.createdAt.getTime() || (a.entry.id < b.entry.id ? -1 : a.entry.id > b.entry.id ? 1 : 0));
  }

  bundles(): BundleSnapshot {
    if (!this.#ready) throw new SigilError("ERR_UNAVAILABLE", "cache: not synced yet");
    return { own: this.#ownBundle, federated: new Map(this.#federated) };
  }

  ready(): boolean {
    return this.#ready;
  }

  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener);
    this.#events.emit("listeners");
    return () => {
      this.#listeners.delete(listener);
      this.#events.emit("listeners");
    };
  }

  async fetchJwtSvid(entryId: string, audience: readonly string[]): Promise<CachedJwtSvid> {
    this.jwtRequests.push({ entryId, audience: [...audience] });
    if (this.jwtFailure !== undefined) throw this.jwtFailure;
    const identity = this.#identities.get(entryId);
    if (identity === undefined) throw new SigilError("ERR_NOT_FOUND", `cache: no entry ${entryId}`);
    const spiffeId = identity.entry.spiffeId;
    const td = this.#domainOf(spiffeId);
    const ttl = identity.entry.jwtSvidTtlSeconds;
    return { spiffeId, token: td.signJwt(spiffeId, audience, ttl), expiresAt: new Date(Date.now() + ttl * 1000) };
  }

  // --- test controls --------------------------------------------------------

  /** Number of current subscribers (open streams). */
  get listenerCount(): number {
    return this.#listeners.size;
  }

  /** Resolves once exactly `n` subscribers are registered, or rejects after `timeoutMs`. */
  async waitForListeners(n: number, timeoutMs = 10_000): Promise<void> {
    const signal = AbortSignal.timeout(timeoutMs);
    while (this.#listeners.size !== n) await once(this.#events, "listeners", { signal });
  }

  /** Marks the cache ready or not; notifies. */
  setReady(ready: boolean): void {
    this.#ready = ready;
    this.#notify();
  }

  /** Adds an identity with a freshly issued SVID; notifies. */
  addIdentity(init: FakeIdentityInit): CachedIdentity {
    this.#seq += 1;
    const entry: CachedEntry = {
      id: init.entryId ?? `entry-${this.#seq}`,
      spiffeId: init.spiffeId,
      selectors: init.selectors.map(parseSelector),
      federatesWith: [...(init.federatesWith ?? [])],
      hint: init.hint ?? "",
      createdAt: init.createdAt ?? new Date(Date.UTC(2030, 0, 1) + this.#seq * 1000),
      revision: 1,
      jwtSvidTtlSeconds: 300,
    };
    const identity: CachedIdentity = { entry, svid: this.#domainOf(init.spiffeId).issueX509Svid(init.spiffeId) };
    this.#identities.set(entry.id, identity);
    this.#notify();
    return identity;
  }

  /** Removes an identity; notifies. */
  removeIdentity(entryId: string): void {
    this.#identities.delete(entryId);
    this.#notify();
  }

  /** Replaces an identity's SVID with a new one (rotation); notifies. Returns the new SVID. */
  rotate(entryId: string): CachedX509Svid {
    const identity = this.#identities.get(entryId);
    if (identity === undefined) throw new Error(`fake cache: no entry ${entryId}`);
    const svid = this.#domainOf(identity.entry.spiffeId).issueX509Svid(identity.entry.spiffeId);
    this.#identities.set(entryId, { entry: identity.entry, svid });
    this.#notify();
    return svid;
  }

  /** Adds or replaces a federated trust domain's bundle; notifies. */
  setFederated(domain: FakeTrustDomain, bundle: SpiffeBundle = domain.bundle()): void {
    this.#foreign.set(domain.trustDomain.name, domain);
    this.#federated.set(domain.trustDomain.name, bundle);
    this.#notify();
  }

  /** Drops a federated bundle; notifies. */
  removeFederated(name: string): void {
    this.#federated.delete(name);
    this.#notify();
  }

  /** Replaces the own bundle (e.g. a CA rotation adding a root); notifies. */
  setOwnBundle(bundle: SpiffeBundle): void {
    this.#ownBundle = bundle;
    this.#notify();
  }

  /** Calls the listeners without changing anything (the cache may notify spuriously). */
  notify(): void {
    this.#notify();
  }

  #domainOf(spiffeId: string): FakeTrustDomain {
    const name = parseSpiffeId(spiffeId).trustDomain.name;
    if (name === this.own.trustDomain.name) return this.own;
    const d = this.#foreign.get(name);
    if (d === undefined) throw new Error(`fake cache: no trust domain ${name}; call setFederated first`);
    return d;
  }

  #notify(): void {
    for (const l of [...this.#listeners]) l();
  }
}

// ---------------------------------------------------------------------------
// A real Workload Endpoint (socket, peer credentials, attestation, handler)
// in front of a fake cache, for endpoint tests.

/** Options of {@link startTestAgentEndpoint}. */
export interface TestAgentEndpointOptions<C extends WorkloadCache = FakeWorkloadCache> {
  /** A fake, or the agent's real cache (test/support/agent-cache.ts) where the requirement lives in the cache. */
  readonly cache: C;
  /** The agent's trust domain; default a fake cache's own. */
  readonly trustDomain?: TrustDomain;
  /** Attestors run on each caller; default the real `unix` attestor. */
  readonly attestors?: readonly WorkloadAttestor[];
  /** Replaces attestation entirely (receives the call's peer credentials). */
  readonly attest?: (peer: PeerCredentials | undefined) => Promise<readonly Selector[]>;
  readonly attestTimeoutMs?: number;
  readonly allowUnauthenticatedVerifiers?: boolean;
  readonly allowedForeignJwtClaims?: readonly string[];
  readonly profiles?: WorkloadApiProfiles;
  readonly health?: HealthService;
  /** Told of every SVID the Workload API sends (pick-up reporting). */
  readonly deliveries?: DeliveryRecorder;
}

/** A running test endpoint. `close()` it in `afterEach`. */
export interface TestAgentEndpoint<C extends WorkloadCache = FakeWorkloadCache> {
  /** `unix:///…/api.sock`. */
  readonly address: string;
  readonly socketPath: string;
  /** The socket's directory (mode 0755, so clients of other uids can reach the socket). */
  readonly dir: string;
  readonly cache: C;
  readonly metrics: Metrics;
  readonly peers: PeerTracker;
  /** Every log line written, parsed. */
  readonly logs: Array<Record<string, unknown>>;
  /** Peer credentials of every attested call, in order. */
  readonly attestedPeers: PeerCredentials[];
  close(): Promise<void>;
}

/** Starts a Workload Endpoint on a fresh temp-dir socket, wired as the agent wires it. */
export async function startTestAgentEndpoint<C extends WorkloadCache = FakeWorkloadCache>(options: TestAgentEndpointOptions<C>): Promise<TestAgentEndpoint<C>> {
  const trustDomain = options.trustDomain ?? (options.cache instanceof FakeWorkloadCache ? options.cache.own.trustDomain : undefined);
  if (trustDomain === undefined) throw new Error("startTestAgentEndpoint: give the trustDomain of a cache that is not a FakeWorkloadCache");
  const dir = await mkdtemp(join(tmpdir(), "sigil-wep-"));
  try {
    return await startInDir(dir, trustDomain, options);
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}

async function startInDir<C extends WorkloadCache>(dir: string, trustDomain: TrustDomain, options: TestAgentEndpointOptions<C>): Promise<TestAgentEndpoint<C>> {
  await chmod(dir, 0o755);
  const socketPath = join(dir, "api.sock");
  const logs: Array<Record<string, unknown>> = [];
  const log = createLogger({ level: "debug", destination: { write: (line) => void logs.push(JSON.parse(line) as Record<string, unknown>) } });
  const metrics = new Metrics({ defaultMetrics: false });
  const peers = createPeerTracker();
  const attestedPeers: PeerCredentials[] = [];
  const attestors = options.attestors ?? [createUnixWorkloadAttestor({})];
  const realAttest = createCallerAttester({ resolvePeer: (p) => peers.lookup(p), attestors, timeoutMs: options.attestTimeoutMs ?? 10_000, log });
  const attest = async (callPeer: string): Promise<AttestedCaller> => {
    const peer = peers.lookup(callPeer);
    if (peer !== undefined) attestedPeers.push(peer);
    return options.attest !== undefined ? fixedCaller(await options.attest(peer)) : realAttest(callPeer);
  };
  const handler = createWorkloadApiHandler({
    cache: options.cache,
    attest,
    trustDomain,
    log,
    metrics,
    ...(options.allowUnauthenticatedVerifiers === undefined ? {} : { allowUnauthenticatedVerifiers: options.allowUnauthenticatedVerifiers }),
    ...(options.allowedForeignJwtClaims === undefined ? {} : { allowedForeignJwtClaims: options.allowedForeignJwtClaims }),
    ...(options.profiles === undefined ? {} : { profiles: options.profiles }),
    ...(options.deliveries === undefined ? {} : { deliveries: options.deliveries }),
  });
  const endpoint = await startWorkloadEndpoint({ socketPath, services: [handler], peers, metrics, log, ...(options.health === undefined ? {} : { health: options.health }) });
  return {
    address: endpoint.address,
    socketPath,
    dir,
    cache: options.cache,
    metrics,
    peers,
    logs,
    attestedPeers,
    async close() {
      try {
        await endpoint.close();
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
}

/** An attested caller with fixed selectors that never changes (for handler tests that replace attestation). */
export function fixedCaller(selectors: readonly Selector[]): AttestedCaller {
  return { selectors, recheck: () => undefined };
}

/** Selectors the unix attestor gives the current process: `unix:uid:<uid>`. */
export function ownUidSelector(): string {
  return `unix:uid:${process.geteuid?.() ?? 0}`;
}
