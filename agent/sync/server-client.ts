/**
 * The agent's connection to the server's agent API (gRPC over TLS).
 *
 * The server is authenticated as exactly the X509-SVID
 * `spiffe://<td>/spire/server` (any other SVID of the trust domain, a
 * workload's or an agent's, is refused), verified against the agent's bundle
 * of its own trust domain in a
 * `checkServerIdentity` hook (OpenSSL first checks the chain against the same
 * roots). The agent presents its agent SVID as TLS client certificate on every
 * call but attestation; the channel is rebuilt whenever that SVID or the
 * trusted roots change. With `insecureBootstrap` and no roots yet, attestation
 * alone runs without authenticating the server (trust on first use); its
 * result's bundle is trusted from then on.
 *
 * Several servers: the client holds a list of addresses (all servers of the
 * trust domain share its database; each has its own CA, and the bundle holds
 * them all). It starts at a random one and sticks to it while it answers; a
 * call that finds it unavailable (UNAVAILABLE, deadline) is retried once on
 * each of the others in turn, the first that answers becoming the current
 * one. When none answers the call fails and the sync loop backs off. Any
 * server can attest, renew and sign: the server is checked only to hold an
 * SVID `spiffe://<td>/spire/server` under the bundle, never a specific
 * certificate.
 */
import type { KeyObject } from "node:crypto";
import { setMaxListeners } from "node:events";
import type { PeerCertificate } from "node:tls";
import { create } from "@bufbuild/protobuf";
import { Client, credentials, InterceptingCall, Metadata, status, type ChannelCredentials, type Interceptor, type ChannelOptions, type ClientDuplexStream, type ClientReadableStream, type ServiceError } from "@grpc/grpc-js";
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import { serverSpiffeId } from "../../common/reserved-ids.js";
import { createUnaryClient, type UnaryClient } from "../../common/rpc/unary-client.js";
import { makeSelector, type Selector } from "../../common/selector.js";
import type { AgentNodeAttestor } from "../../plugins/nodeattestor/types.js";
import {
  AgentAPI,
  AttestAgentRequestSchema,
  WatchChangesRequestSchema,
  type AttestAgentRequest,
  type AttestAgentResponse,
  type WatchChangesResponse,
} from "../../proto/gen/sigil/agent/v1/agent_pb.js";
import type { Entry as WireEntry } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { parseSpiffeBundle, type SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { X509Bundle } from "../../spiffe/bundle/x509-bundle.js";
import { buildCsr } from "../../spiffe/csr.js";
import { isSigilError, SigilError, type ErrorCode } from "../../spiffe/errors.js";
import { grpcServiceDefinition } from "../../spiffe/grpc/service.js";
import { parseSpiffeId, parseTrustDomain, type TrustDomain } from "../../spiffe/id.js";
import { encodePemCertificates, encodePemPrivateKey } from "../../spiffe/pem.js";
import { generateKeyPair } from "../../spiffe/signer.js";
import { StaticX509BundleSource } from "../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../spiffe/x509/verify.js";
import type { PendingDelivery } from "../cache/deliveries.js";
import type { CachedEntry } from "../cache/types.js";
import { agentSvidFromChain, type AgentSvid } from "../storage/agent-svid.js";

type AgentMethods = (typeof AgentAPI)["method"];

/** What node attestation yields. */
export interface AttestResult {
  readonly svid: AgentSvid;
  /** The own trust domain's X.509 authorities (DER) as the server sent them. */
  readonly bundle: readonly Uint8Array[];
  /** Selectors the attestation produced. */
  readonly selectors: readonly Selector[];
}

/** A registration entry as synced, with the fields the agent uses beyond the endpoints' view. */
export interface SyncedEntry extends CachedEntry {
  readonly parentId: string;
  readonly x509SvidTtlSeconds: number;
  readonly dnsNames: readonly string[];
  /** When the entry expires; undefined for never. */
  readonly expiresAt: Date | undefined;
}

/** The answer to SyncAuthorized. */
export interface SyncResult {
  /** True when nothing changed since `knownRevision`; then `entries` and `bundles` are empty. */
  readonly notModified: boolean;
  readonly revision: string;
  /** All authorized entries; with `delta`, only those added or changed since `knownRevision`. */
  readonly entries: readonly SyncedEntry[];
  /** Own trust domain's bundle first, then federated ones; with `delta`, empty when no bundle changed. */
  readonly bundles: readonly SpiffeBundle[];
  /** Set when the answer is relative to `knownRevision`: the IDs of the entries no longer authorized. */
  readonly delta?: { readonly removedEntryIds: readonly string[] } | undefined;
  /**
   * The own trust domain's tainted authorities, in full in every answer that
   * is not `notModified` (the revision covers them); undefined then.
   */
  readonly taint?: TaintSet | undefined;
}

/** Tainted authorities as the server sends them. */
export interface TaintSet {
  /** Lower-case hex SHA-256 of each tainted X.509 CA certificate's SubjectPublicKeyInfo. */
  readonly x509SpkiSha256: ReadonlySet<string>;
  /** Key IDs of tainted JWT signing keys. */
  readonly jwtKeyIds: ReadonlySet<string>;
}

const SPKI_SHA256_HEX = /^[0-9a-f]{64}$/;

/**
 * Reads the taint fields of a SyncAuthorized answer.
 *
 * @throws SigilError `ERR_INTERNAL` naming the field when a value is malformed
 */
export function parseTaintSet(x509: readonly string[], jwt: readonly string[]): TaintSet {
  x509.forEach((v, i) => {
    if (!SPKI_SHA256_HEX.test(v)) throw new SigilError("ERR_INTERNAL", `sync: SyncAuthorized: malformed response: tainted_x509_authorities[${i}] is not a lower-case hex SHA-256`);
  });
  jwt.forEach((v, i) => {
    if (v.length === 0) throw new SigilError("ERR_INTERNAL", `sync: SyncAuthorized: malformed response: tainted_jwt_keys[${i}] is empty`);
  });
  return { x509SpkiSha256: new Set(x509), jwtKeyIds: new Set(jwt) };
}

/** An open WatchChanges stream. */
export interface ChangeWatch {
  /** Ends the stream (no `onEnd` follows). */
  cancel(): void;
}

/** One X509-SVID request: an authorized entry and the SubjectPublicKeyInfo (DER) of the agent-generated key. */
export interface X509SvidParams {
  readonly entryId: string;
  readonly publicKey: Uint8Array;
}

/** One X509-SVID result, in request order. */
export type X509SvidResult =
  | { readonly ok: true; readonly chain: readonly Uint8Array[] }
  | { readonly ok: false; readonly code: number; readonly message: string };

/** A JWT-SVID minted by the server. */
export interface MintedJwtSvid {
  readonly spiffeId: string;
  readonly token: string;
  readonly issuedAt: Date;
  readonly expiresAt: Date;
}

/**
 * What the agent asks of the server. {@link GrpcServerClient} talks to a real
 * server; tests substitute a fake.
 */
export interface ServerClient {
  /** Node attestation (AttestAgent) with a fresh agent key, answering challenges through the attestor. */
  attest(attestor: AgentNodeAttestor): Promise<AttestResult>;
  /** Renews the current agent SVID for a fresh key (RenewAgent). The caller installs it with {@link ServerClient.setIdentity}. */
  renew(): Promise<AgentSvid>;
  /**
   * Entries and bundles for this agent (SyncAuthorized); `knownRevision` "" on
   * the first call. With `acceptDelta` the answer may be a delta. `deliveries`
   * (first deliveries to workloads) are reported with the call.
   */
  sync(knownRevision: string, acceptDelta?: boolean, deliveries?: readonly PendingDelivery[]): Promise<SyncResult>;
  /**
   * Opens a WatchChanges stream to the current server: `onNotice` on each
   * pushed notice, `onEnd` once when the stream ends (the server went away,
   * or the agent opened a newer one). Optional: fakes may not push.
   */
  watchChanges?(onNotice: (revision: string) => void, onEnd: (error: SigilError) => void): ChangeWatch;
  /** Signs X509-SVIDs for agent-generated keys (BatchNewX509SVID). */
  batchNewX509Svid(params: readonly X509SvidParams[]): Promise<X509SvidResult[]>;
  /** Mints a JWT-SVID (NewJWTSVID). */
  newJwtSvid(entryId: string, audience: readonly string[]): Promise<MintedJwtSvid>;
  /** Sets the agent SVID presented to the server (rebuilds the channel). */
  setIdentity(svid: AgentSvid): void;
  /** Sets the X.509 roots the server is verified against (rebuilds the channel when they change). */
  setTrustBundle(roots: readonly Uint8Array[]): void;
  /** Closes the channel and cancels every call in flight; later calls fail at once (the agent is stopping). */
  close(): void;
}

/** Options of {@link GrpcServerClient}. */
export interface ServerClientOptions {
  /** `host:port` of the agent API, or of every server's (see the module comment). */
  readonly address: string | readonly string[];
  readonly trustDomain: TrustDomain;
  readonly clock: Clock;
  /** X.509 roots (DER) to verify the server against; may be empty only with `insecureBootstrap`. */
  readonly roots: readonly Uint8Array[];
  /** Attest without authenticating the server while no roots are known. */
  readonly insecureBootstrap?: boolean;
  /** Per-call deadline (default 30s). */
  readonly deadlineMs?: number;
  readonly log?: Logger;
  /** Uniform random numbers in [0, 1) for the first server (default `Math.random`). */
  readonly random?: () => number;
}

/**
 * Request metadata carrying the intermediates of the agent SVID's chain
 * (DER, one value each). The TLS client certificate reaches the server
 * without them, and another server of the cluster, whose own CA did not sign
 * the agent's SVID, needs them to build the path to the bundle's root (an
 * upstream authority above every server's CA).
 */
export const AGENT_CHAIN_METADATA_KEY = "sigil-agent-chain-bin";

/** HTTP/2 flow-control window of the agent's channel to the server (stream and connection). */
const FLOW_CONTROL_WINDOW = 4 << 20;

const GRPC_TO_CODE: Readonly<Partial<Record<number, ErrorCode>>> = {
  [status.INVALID_ARGUMENT]: "ERR_INVALID_ARGUMENT",
  [status.NOT_FOUND]: "ERR_NOT_FOUND",
  [status.ALREADY_EXISTS]: "ERR_ALREADY_EXISTS",
  [status.FAILED_PRECONDITION]: "ERR_FAILED_PRECONDITION",
  [status.PERMISSION_DENIED]: "ERR_PERMISSION_DENIED",
  [status.UNAUTHENTICATED]: "ERR_PERMISSION_DENIED",
  [status.RESOURCE_EXHAUSTED]: "ERR_RESOURCE_EXHAUSTED",
  [status.UNAVAILABLE]: "ERR_UNAVAILABLE",
  [status.DEADLINE_EXCEEDED]: "ERR_UNAVAILABLE",
  [status.CANCELLED]: "ERR_UNAVAILABLE",
};

/**
 * Sigil error codes the agent acts on when the server names them in its
 * `sigil-error-code` trailer; any other code is read from the gRPC status.
 */
const SERVER_CODES_ACTED_ON: ReadonlySet<string> = new Set<ErrorCode>(["ERR_AGENT_NOT_ATTESTED"]);

/**
 * A server RPC failure as a SigilError: `sync: SyncAuthorized: <server's message>`,
 * the code from the server's `sigil-error-code` trailer when it is one the
 * agent acts on (`ERR_AGENT_NOT_ATTESTED`: evicted), else from the gRPC status
 * (UNAVAILABLE and DEADLINE_EXCEEDED become `ERR_UNAVAILABLE`, the "server is
 * away" case).
 */
export function serverRpcError(rpc: string, e: unknown): SigilError {
  if (isSigilError(e)) return e;
  const se = e as Partial<ServiceError>;
  const named = se.code === status.PERMISSION_DENIED ? se.metadata?.get("sigil-error-code")[0] : undefined;
  const code =
    (typeof named === "string" && SERVER_CODES_ACTED_ON.has(named) ? (named as ErrorCode) : undefined) ??
    (typeof se.code === "number" ? GRPC_TO_CODE[se.code] : undefined) ??
    "ERR_INTERNAL";
  const detail = se.details || (e instanceof Error ? e.message : String(e));
  return new SigilError(code, `sync: ${rpc}: ${detail}`, { cause: e });
}

function unixSeconds(v: bigint): Date | undefined {
  return v === 0n ? undefined : new Date(Number(v) * 1000);
}

/** Converts a wire entry; throws on a malformed one so a bad sync is not half-applied. */
function syncedEntry(e: WireEntry): SyncedEntry {
  return {
    id: e.id,
    spiffeId: parseSpiffeId(e.spiffeId).toString(),
    parentId: e.parentId,
    selectors: e.selectors.map((s) => makeSelector(s.type, s.value)),
    federatesWith: [...e.federatesWith],
    hint: e.hint,
    createdAt: unixSeconds(e.createdAt) ?? new Date(0),
    revision: Number(e.revision),
    jwtSvidTtlSeconds: e.jwtSvidTtl,
    x509SvidTtlSeconds: e.x509SvidTtl,
    dnsNames: [...e.dnsNames],
    expiresAt: unixSeconds(e.expiresAt),
  };
}

/** The issuer chain the server presented after its leaf (OpenSSL's view), without the self-loop at the root. */
function presentedChain(cert: PeerCertificate): Uint8Array[] {
  const out: Uint8Array[] = [new Uint8Array(cert.raw)];
  const seen = new Set<string>([cert.fingerprint256]);
  let c = (cert as { issuerCertificate?: PeerCertificate }).issuerCertificate;
  while (c && c.raw && !seen.has(c.fingerprint256)) {
    seen.add(c.fingerprint256);
    out.push(new Uint8Array(c.raw));
    c = (c as { issuerCertificate?: PeerCertificate }).issuerCertificate;
  }
  return out;
}

/** The agent API client over grpc-js. */
export class GrpcServerClient implements ServerClient {
  readonly #opts: ServerClientOptions;
  readonly #serverId: string;
  readonly #def = grpcServiceDefinition(AgentAPI);
  #roots: readonly Uint8Array[];
  #rootsKey: string;
  #identity: AgentSvid | undefined;
  #api: UnaryClient<AgentMethods> | undefined;
  readonly #addresses: readonly string[];
  #current: number;
  /** Aborted by {@link close}: cancels the calls in flight, so stopping the agent does not wait out their deadlines. */
  readonly #closing = new AbortController();

  constructor(options: ServerClientOptions) {
    if (options.roots.length === 0 && options.insecureBootstrap !== true) {
      throw new SigilError("ERR_INVALID_ARGUMENT", "sync: no trust bundle to verify the server with (set trust_bundle_path, trust_bundle_url or insecure_bootstrap)");
    }
    this.#addresses = typeof options.address === "string" ? [options.address] : [...new Set(options.address)];
    if (this.#addresses.length === 0) throw new SigilError("ERR_INVALID_ARGUMENT", "sync: no server address");
    // Agents spread across the servers; each then sticks to its pick while it answers.
    this.#current = Math.min(this.#addresses.length - 1, Math.floor((options.random ?? Math.random)() * this.#addresses.length));
    this.#opts = options;
    this.#serverId = serverSpiffeId(options.trustDomain).toString();
    this.#roots = [...options.roots];
    this.#rootsKey = rootsKey(this.#roots);
    // Every call in flight listens on it (many at once when workloads mint JWT-SVIDs together): not a leak.
    setMaxListeners(0, this.#closing.signal);
  }

  /** The address of the server calls go to now. */
  get currentAddress(): string {
    return this.#addresses[this.#current] as string;
  }

  /** Every server address, in configured order. */
  get addresses(): readonly string[] {
    return this.#addresses;
  }

  /** The SPIFFE ID the server must present. */
  get serverId(): string {
    return this.#serverId;
  }

  setIdentity(svid: AgentSvid): void {
    this.#identity = svid;
    this.#dropChannel();
  }

  setTrustBundle(roots: readonly Uint8Array[]): void {
    if (roots.length === 0) throw new SigilError("ERR_BUNDLE_INVALID", `sync: the bundle of ${this.#opts.trustDomain.name} holds no X.509 authority`);
    const key = rootsKey(roots);
    if (key === this.#rootsKey) return;
    this.#roots = [...roots];
    this.#rootsKey = key;
    this.#dropChannel();
  }

  close(): void {
    this.#closing.abort();
    this.#dropChannel();
  }

  async attest(attestor: AgentNodeAttestor): Promise<AttestResult> {
    return this.#withFailover(() => this.#attestOnce(attestor));
  }

  async #attestOnce(attestor: AgentNodeAttestor): Promise<AttestResult> {
    // Not cancelled by close() once sent: the server may spend a single-use token on it, so its answer is awaited.
    this.#checkOpen("AttestAgent");
    const { privateKey } = generateKeyPair("ec-p256");
    const payload = await attestor.payload();
    const client = new Client(this.currentAddress, this.#credentials(undefined), this.#channelOptions());
    let result: AttestAgentResponse["step"] & { case: "result" };
    try {
      result = await new Promise((resolve, reject) => {
        const def = this.#def.attestAgent;
        const call: ClientDuplexStream<AttestAgentRequest, AttestAgentResponse> = client.makeBidiStreamRequest(
          def.path,
          def.requestSerialize,
          def.responseDeserialize,
          new Metadata(),
          { deadline: this.#deadline() },
        );
        let settled = false;
        const fail = (e: unknown): void => {
          if (settled) return;
          settled = true;
          call.cancel();
          reject(serverRpcError("AttestAgent", e));
        };
        call.on("data", (m: AttestAgentResponse) => {
          if (m.step.case === "result") {
            settled = true;
            call.end();
            resolve(m.step);
          } else if (m.step.case === "challenge") {
            if (!attestor.answer) {
              fail(new SigilError("ERR_PERMISSION_DENIED", `sync: AttestAgent: the server sent a challenge but the ${attestor.name} attestor answers none`));
              return;
            }
            attestor.answer(m.step.value).then(
              (answer) => call.write(create(AttestAgentRequestSchema, { step: { case: "challengeResponse", value: answer } })),
              fail,
            );
          }
        });
        call.on("error", fail);
        call.on("end", () => fail(new SigilError("ERR_INTERNAL", "sync: AttestAgent: the server ended the stream without a result")));
        call.write(
          create(AttestAgentRequestSchema, {
            step: { case: "params", value: { data: { type: attestor.name, payload }, csr: buildCsr(privateKey) } },
          }),
        );
      });
    } finally {
      client.close();
    }
    const r = result.value;
    const svid = this.#checkedAgentSvid("AttestAgent", r.svid?.certChain ?? [], privateKey);
    if (r.bundle.length === 0) throw new SigilError("ERR_BUNDLE_INVALID", "sync: AttestAgent: the result holds no bundle");
    return { svid, bundle: [...r.bundle], selectors: r.selectors.map((s) => makeSelector(s.type, s.value)) };
  }

  async renew(): Promise<AgentSvid> {
    const current = this.#identity;
    if (!current) throw new SigilError("ERR_UNAVAILABLE", "sync: RenewAgent: the agent has no SVID yet; attest first");
    const { privateKey } = generateKeyPair("ec-p256");
    const res = await this.#call("RenewAgent", (api) => api.renewAgent({ csr: buildCsr(privateKey) }, this.#callOptions()));
    const svid = this.#checkedAgentSvid("RenewAgent", res.svid?.certChain ?? [], privateKey);
    if (svid.spiffeId !== current.spiffeId) {
      throw new SigilError("ERR_PERMISSION_DENIED", `sync: RenewAgent: the server renewed ${svid.spiffeId}, not ${current.spiffeId}`);
    }
    return svid;
  }

  async sync(knownRevision: string, acceptDelta = false, deliveries: readonly PendingDelivery[] = []): Promise<SyncResult> {
    const wireDeliveries = deliveries.map((d) => ({
      credential: "serial" in d.credential ? { case: "serial" as const, value: d.credential.serial } : { case: "jwtSha256" as const, value: d.credential.jwtSha256 },
      deliveredAt: BigInt(Math.floor(d.deliveredAt.getTime() / 1000)),
    }));
    const res = await this.#call("SyncAuthorized", (api) => api.syncAuthorized({ knownRevision, acceptDelta, deliveries: wireDeliveries }, this.#callOptions()));
    if (res.notModified) return { notModified: true, revision: res.revision, entries: [], bundles: [] };
    const taint = parseTaintSet(res.taintedX509Authorities, res.taintedJwtKeys);
    let entries: SyncedEntry[];
    let bundles: SpiffeBundle[];
    try {
      entries = res.entries.map(syncedEntry);
      bundles = res.bundles.map((b) => parseSpiffeBundle(b.spiffeBundleJson, parseTrustDomain(b.trustDomain)).bundle);
    } catch (e) {
      throw new SigilError("ERR_INTERNAL", `sync: SyncAuthorized: malformed response: ${(e as Error).message}`, { cause: e });
    }
    if (res.delta) {
      if (!acceptDelta) throw new SigilError("ERR_INTERNAL", "sync: SyncAuthorized: the server answered a delta that was not asked for");
      if (bundles.length > 0 && bundles[0]?.trustDomain.name !== this.#opts.trustDomain.name) {
        throw new SigilError("ERR_INTERNAL", `sync: SyncAuthorized: the first bundle is not the one of ${this.#opts.trustDomain.name}`);
      }
      return { notModified: false, revision: res.revision, entries, bundles, delta: { removedEntryIds: [...res.removedEntryIds] }, taint };
    }
    const own = bundles[0];
    if (!own || own.trustDomain.name !== this.#opts.trustDomain.name) {
      throw new SigilError("ERR_INTERNAL", `sync: SyncAuthorized: the first bundle is not the one of ${this.#opts.trustDomain.name}`);
    }
    return { notModified: false, revision: res.revision, entries, bundles, taint };
  }

  async batchNewX509Svid(params: readonly X509SvidParams[]): Promise<X509SvidResult[]> {
    if (params.length === 0) return [];
    const res = await this.#call("BatchNewX509SVID", (api) =>
      api.batchNewX509SVID(
        { params: params.map((p) => ({ entryId: p.entryId, key: { case: "publicKey" as const, value: p.publicKey } })) },
        this.#callOptions(),
      ),
    );
    if (res.results.length !== params.length) {
      throw new SigilError("ERR_INTERNAL", `sync: BatchNewX509SVID: ${res.results.length} results for ${params.length} requests`);
    }
    return res.results.map((r): X509SvidResult => {
      const code = r.status?.code ?? 0;
      if (code !== 0 || !r.svid || r.svid.certChain.length === 0) return { ok: false, code: code || status.INTERNAL, message: r.status?.message || "no SVID in the result" };
      return { ok: true, chain: [...r.svid.certChain] };
    });
  }

  async newJwtSvid(entryId: string, audience: readonly string[]): Promise<MintedJwtSvid> {
    const res = await this.#call("NewJWTSVID", (api) => api.newJWTSVID({ entryId, audience: [...audience] }, this.#callOptions()));
    return {
      spiffeId: res.spiffeId,
      token: res.token,
      issuedAt: new Date(Number(res.issuedAt) * 1000),
      expiresAt: new Date(Number(res.expiresAt) * 1000),
    };
  }

  watchChanges(onNotice: (revision: string) => void, onEnd: (error: SigilError) => void): ChangeWatch {
    const def = this.#def.watchChanges;
    const address = this.currentAddress;
    // No deadline: the stream lives as long as the server; keepalive pings find a dead peer.
    const call: ClientReadableStream<WatchChangesResponse> = this.#channel().raw.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, create(WatchChangesRequestSchema), new Metadata(), {});
    let ended = false;
    const end = (e: unknown): void => {
      if (ended) return;
      ended = true;
      onEnd(serverRpcError("WatchChanges", e));
    };
    call.on("data", (m: WatchChangesResponse) => {
      if (!ended) onNotice(m.revision);
    });
    call.on("error", end);
    call.on("end", () => end(new SigilError("ERR_UNAVAILABLE", `the server at ${address} ended the change stream`)));
    return {
      cancel: () => {
        ended = true;
        call.cancel();
      },
    };
  }

  async #call<T>(rpc: string, fn: (api: UnaryClient<AgentMethods>) => Promise<T>): Promise<T> {
    return this.#withFailover(async () => {
      try {
        return await fn(this.#channel());
      } catch (e) {
        const err = serverRpcError(rpc, e);
        // A TLS connection made while the server did not yet trust the SVID's CA (one activated at once
        // after a taint) stays unauthenticated for its whole life: a refused call's connection is not reused.
        if (isSigilError(err, "ERR_PERMISSION_DENIED")) this.#dropChannel();
        throw err;
      }
    });
  }

  /**
   * Runs `attempt` on the current server and, while it fails as unavailable,
   * once on each other server in turn; the first that answers becomes the
   * current one.
   */
  async #withFailover<T>(attempt: () => Promise<T>): Promise<T> {
    let last: unknown;
    for (let tried = 0; tried < this.#addresses.length; tried++) {
      try {
        return await attempt();
      } catch (e) {
        if (this.#addresses.length === 1 || !isSigilError(e, "ERR_UNAVAILABLE") || this.#closing.signal.aborted) throw e;
        last = e;
        const from = this.currentAddress;
        this.#current = (this.#current + 1) % this.#addresses.length;
        this.#dropChannel();
        this.#opts.log?.warn({ err: e, from, to: this.currentAddress }, "sync: the server is unavailable; failing over to the next one");
      }
    }
    throw last;
  }

  #checkedAgentSvid(rpc: string, chain: readonly Uint8Array[], privateKey: KeyObject): AgentSvid {
    let svid: AgentSvid;
    try {
      svid = agentSvidFromChain(chain, privateKey);
    } catch (e) {
      throw new SigilError("ERR_INTERNAL", `sync: ${rpc}: the server returned an unusable agent SVID: ${(e as Error).message}`, { cause: e });
    }
    if (!parseSpiffeId(svid.spiffeId).memberOf(this.#opts.trustDomain)) {
      throw new SigilError("ERR_PERMISSION_DENIED", `sync: ${rpc}: the agent SVID ${svid.spiffeId} is not in trust domain ${this.#opts.trustDomain.name}`);
    }
    return svid;
  }

  /** Options of every unary call: the deadline, and cancellation when the client closes. */
  #callOptions(): { deadlineMs: number; signal: AbortSignal } {
    return { deadlineMs: this.#opts.deadlineMs ?? 30_000, signal: this.#closing.signal };
  }

  /** Refuses work once the client is closed: the agent is stopping (not a server to fail over from). */
  #checkOpen(rpc: string): void {
    if (this.#closing.signal.aborted) throw new SigilError("ERR_UNAVAILABLE", `sync: ${rpc}: the agent is stopping`);
  }

  #deadline(): Date {
    // grpc-js deadlines are wall-clock; the injected clock only drives certificate checks.
    return new Date(Date.now() + (this.#opts.deadlineMs ?? 30_000));
  }

  #channelOptions(): ChannelOptions {
    return {
      // SNI is the trust domain: the address is usually an IP, which SNI may not carry.
      "grpc.ssl_target_name_override": this.#opts.trustDomain.name,
      // Each channel gets its own connections: a rebuilt channel must not reuse the old identity's TLS session.
      "grpc.use_local_subchannel_pool": 1,
      // A batch of SVIDs is ~650 bytes each: HTTP/2's default 64 KiB window
      // would stall every large BatchNewX509SVID response on window updates.
      "grpc-node.flow_control_window": FLOW_CONTROL_WINDOW,
    };
  }

  #channel(): UnaryClient<AgentMethods> {
    this.#checkOpen("call");
    if (!this.#identity) throw new SigilError("ERR_UNAVAILABLE", "sync: the agent has no SVID yet; attest first");
    if (this.#roots.length === 0) throw new SigilError("ERR_UNAVAILABLE", "sync: no trust bundle to verify the server with");
    if (!this.#api) {
      const intermediates = this.#identity.chain.slice(1).map((c) => Buffer.from(c));
      const withChain: Interceptor = (options, nextCall) =>
        new InterceptingCall(nextCall(options), {
          start: (metadata, listener, next) => {
            for (const c of intermediates) metadata.add(AGENT_CHAIN_METADATA_KEY, c);
            next(metadata, listener);
          },
        });
      this.#api = createUnaryClient(AgentAPI, this.currentAddress, this.#credentials(this.#identity), {
        ...this.#channelOptions(),
        ...(intermediates.length > 0 ? { interceptors: [withChain] } : {}),
      });
    }
    return this.#api;
  }

  #dropChannel(): void {
    // In-flight calls on the old channel finish; new calls use the new one.
    this.#api?.close();
    this.#api = undefined;
  }

  #credentials(identity: AgentSvid | undefined): ChannelCredentials {
    const key = identity ? Buffer.from(encodePemPrivateKey(new Uint8Array(identity.privateKey.export({ format: "der", type: "pkcs8" })))) : null;
    const chain = identity ? Buffer.from(encodePemCertificates(identity.chain)) : null;
    if (this.#roots.length === 0) {
      // Insecure bootstrap: nothing is verified; only attestation ever uses this.
      this.#opts.log?.warn({ server: this.currentAddress }, "sync: insecure_bootstrap: the server is not authenticated for this attestation");
      return credentials.createSsl(null, key, chain, { rejectUnauthorized: false, checkServerIdentity: () => undefined });
    }
    const roots = this.#roots;
    const bundleSource = new StaticX509BundleSource([new X509Bundle(this.#opts.trustDomain, roots)]);
    const expected = this.#serverId;
    const clock = this.#opts.clock;
    return credentials.createSsl(Buffer.from(encodePemCertificates(roots)), key, chain, {
      rejectUnauthorized: true,
      checkServerIdentity: (_host: string, cert: PeerCertificate): Error | undefined => {
        try {
          const { id } = verifyX509Svid(presentedChain(cert), bundleSource, { now: clock.now() });
          if (id.toString() !== expected) return new Error(`sync: the server presented ${id.toString()}, expected ${expected}`);
          return undefined;
        } catch (e) {
          return new Error(`sync: the server's certificate is not a valid SVID of ${this.#opts.trustDomain.name}: ${(e as Error).message}`);
        }
      },
    });
  }
}

function rootsKey(roots: readonly Uint8Array[]): string {
  return roots.map((r) => Buffer.from(r).toString("base64")).join(",");
}

/** Creates the agent API client. */
export function createServerClient(options: ServerClientOptions): GrpcServerClient {
  return new GrpcServerClient(options);
}
