/**
 * SPIFFE Workload API client over `@grpc/grpc-js`.
 *
 * - Address: explicit, else `SPIFFE_ENDPOINT_SOCKET` (WEP-8), parsed strictly (WEP-9..11).
 * - Plaintext channel (WEP-7); every call carries `workload.spiffe.io: true` (WEP-5).
 * - Watchers keep their stream open and reconnect: at once after a stream that
 *   delivered messages ends (WAPI-4), with exponential backoff after failures
 *   such as Unavailable or PermissionDenied (WEP-16, WEP-17). InvalidArgument
 *   and Unimplemented are reported and stop the watcher (WEP-15, WEP-18).
 * - Every message is validated; an invalid one is reported through `onError`
 *   and dropped, so the caller keeps its previous state (WAPI-12).
 */
import { create } from "@bufbuild/protobuf";
import { Client, credentials, Metadata, status, type ChannelOptions, type ClientReadableStream, type StatusObject } from "@grpc/grpc-js";
import {
  JWTBundlesRequestSchema,
  JWTSVIDRequestSchema,
  SpiffeWorkloadAPI,
  ValidateJWTSVIDRequestSchema,
  X509BundlesRequestSchema,
  X509SVIDRequestSchema,
} from "../../proto/gen/spiffe/workload_pb.js";
import { SigilError, toSigilError } from "../errors.js";
import { grpcServiceDefinition } from "../grpc/service.js";
import { parseSpiffeId, type SpiffeId } from "../id.js";
import { resolveEndpointAddress, type EndpointAddress } from "./address.js";
import { backoffDelay, DEFAULT_BACKOFF, watchActionForStatus, type BackoffPolicy } from "./backoff.js";
import { WorkloadApiError, workloadApiErrorFromServiceError } from "./errors.js";
import {
  parseJwtBundlesResponse,
  parseJwtSvidResponse,
  parseValidateJwtSvidResponse,
  type JwtBundles,
  type WorkloadJwtSvid,
  type ValidatedJwtSvid,
} from "./jwt-context.js";
import { parseX509BundlesResponse, parseX509SvidResponse, type X509Bundles, type X509Context } from "./x509-context.js";

/** The security header every Workload API request carries (WEP-5). */
export const WORKLOAD_API_HEADER = "workload.spiffe.io";

const WORKLOAD_API = grpcServiceDefinition(SpiffeWorkloadAPI);

/** Options of {@link createWorkloadApiClient}. */
export interface WorkloadApiClientOptions {
  /** Endpoint address, `unix:///path` or `tcp://ip:port`. Default: `SPIFFE_ENDPOINT_SOCKET`. */
  readonly address?: string;
  /** Where `SPIFFE_ENDPOINT_SOCKET` is read from. Default `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Watcher retry backoff; unset fields take {@link DEFAULT_BACKOFF}'s values. */
  readonly backoff?: Partial<BackoffPolicy>;
  /** Extra grpc-js channel options. */
  readonly channelOptions?: Partial<ChannelOptions>;
}

/** Options of a single fetch. */
export interface CallOptions {
  /** Aborts the call; the promise rejects with a `CANCELLED` {@link WorkloadApiError}. */
  readonly signal?: AbortSignal;
}

/** Extra facts about a watch error. */
export interface WatchErrorInfo {
  /**
   * True when the watcher has stopped for good (InvalidArgument, Unimplemented).
   * Otherwise it keeps (or resumes) watching: a retried stream failure or a
   * discarded invalid message.
   */
  readonly terminal: boolean;
}

/** Receives updates from a watch. */
export type WatchUpdateHandler<T> = (update: T) => void;

/**
 * Receives watch errors: a {@link WorkloadApiError} for a failed stream (with
 * its `grpcCode`), or a `ERR_WORKLOAD_API_RESPONSE_INVALID` SigilError for a
 * discarded message.
 */
export type WatchErrorHandler = (error: SigilError, info: WatchErrorInfo) => void;

/** A running watch. */
export interface Watcher {
  /** Stops watching and cancels the stream. Idempotent. */
  close(): void;
  /** Resolves when the watcher has stopped, by `close()` or a terminal error. */
  readonly stopped: Promise<void>;
}

/** Parameters of {@link WorkloadApiClient.fetchJwtSvid}. */
export interface FetchJwtSvidParams {
  /** Audience(s); at least one, each non-empty (WAPI-26). */
  readonly audience: string | readonly string[];
  /** Ask for this identity only; default: every identity of the caller (WAPI-27). */
  readonly spiffeId?: SpiffeId | string;
  readonly signal?: AbortSignal;
}

/** A Workload API client. Create with {@link createWorkloadApiClient}; `close()` when done. */
export interface WorkloadApiClient {
  /** The endpoint this client talks to. */
  readonly address: EndpointAddress;
  /** The first complete X.509 context (SVIDs + bundles) from `FetchX509SVID`. */
  fetchX509Context(options?: CallOptions): Promise<X509Context>;
  /** Watches `FetchX509SVID`: every valid message becomes an update. */
  watchX509Context(onUpdate: WatchUpdateHandler<X509Context>, onError: WatchErrorHandler): Watcher;
  /** The first message of `FetchX509Bundles`. */
  fetchX509Bundles(options?: CallOptions): Promise<X509Bundles>;
  /** Watches `FetchX509Bundles`. */
  watchX509Bundles(onUpdate: WatchUpdateHandler<X509Bundles>, onError: WatchErrorHandler): Watcher;
  /** The default JWT-SVID (the first returned) for `audience`. */
  fetchJwtSvid(params: FetchJwtSvidParams): Promise<WorkloadJwtSvid>;
  /** Every JWT-SVID the server returns for `audience` (all identities unless `spiffeId` is set). */
  fetchJwtSvids(params: FetchJwtSvidParams): Promise<WorkloadJwtSvid[]>;
  /** The first message of `FetchJWTBundles`. */
  fetchJwtBundles(options?: CallOptions): Promise<JwtBundles>;
  /** Watches `FetchJWTBundles`. */
  watchJwtBundles(onUpdate: WatchUpdateHandler<JwtBundles>, onError: WatchErrorHandler): Watcher;
  /**
   * Validates a JWT-SVID through the agent's `ValidateJWTSVID` (preferred over
   * local validation, WAPI-36). Rejects with a {@link WorkloadApiError}
   * (SPIRE: InvalidArgument) when the token is not valid.
   */
  validateJwtSvid(token: string, audience: string, options?: CallOptions): Promise<ValidatedJwtSvid>;
  /** Stops every watcher, cancels every call and closes the channel. Idempotent. */
  close(): void;
}

/**
 * Creates a Workload API client. The channel connects lazily, on the first call.
 *
 * @example
 * ```ts
 * const client = createWorkloadApiClient({ address: "unix:///run/sigil/agent.sock" });
 * const ctx = await client.fetchX509Context();
 * ctx.defaultSvid.id.toString(); // "spiffe://example.org/web"
 * client.close();
 * ```
 * @throws SigilError `ERR_ENDPOINT_ADDRESS_INVALID` when no address is configured or it is malformed.
 */
export function createWorkloadApiClient(options: WorkloadApiClientOptions = {}): WorkloadApiClient {
  const address = resolveEndpointAddress(options.address, options.env ?? process.env);
  const backoff: BackoffPolicy = { ...DEFAULT_BACKOFF, ...options.backoff };
  return new GrpcWorkloadApiClient(address, backoff, options.channelOptions ?? {});
}

function securityMetadata(): Metadata {
  const md = new Metadata();
  md.set(WORKLOAD_API_HEADER, "true");
  return md;
}

/** `FetchX509SVID` from `/SpiffeWorkloadAPI/FetchX509SVID`. */
function rpcName(def: { readonly path: string }): string {
  return def.path.slice(def.path.lastIndexOf("/") + 1);
}

/** The client half of a grpc-js method definition. */
interface GrpcLike<I, O> {
  readonly path: string;
  readonly requestSerialize: (v: I) => Buffer;
  readonly responseDeserialize: (b: Buffer) => O;
}

function closedError(rpc: string): WorkloadApiError {
  return new WorkloadApiError(rpc, status.CANCELLED, "client is closed");
}

class GrpcWorkloadApiClient implements WorkloadApiClient {
  readonly address: EndpointAddress;
  readonly #backoff: BackoffPolicy;
  readonly #grpc: Client;
  readonly #cancels = new Set<() => void>();
  #closed = false;

  constructor(address: EndpointAddress, backoff: BackoffPolicy, channelOptions: Partial<ChannelOptions>) {
    this.address = address;
    this.#backoff = backoff;
    // WEP-7: the Workload Endpoint is plaintext; the caller is identified out of band.
    this.#grpc = new Client(address.grpcTarget, credentials.createInsecure(), channelOptions);
  }

  fetchX509Context(options: CallOptions = {}): Promise<X509Context> {
    return this.#fetchFirst(WORKLOAD_API.fetchX509SVID, create(X509SVIDRequestSchema), parseX509SvidResponse, options);
  }

  watchX509Context(onUpdate: WatchUpdateHandler<X509Context>, onError: WatchErrorHandler): Watcher {
    return this.#watch(WORKLOAD_API.fetchX509SVID, create(X509SVIDRequestSchema), parseX509SvidResponse, onUpdate, onError);
  }

  fetchX509Bundles(options: CallOptions = {}): Promise<X509Bundles> {
    return this.#fetchFirst(WORKLOAD_API.fetchX509Bundles, create(X509BundlesRequestSchema), parseX509BundlesResponse, options);
  }

  watchX509Bundles(onUpdate: WatchUpdateHandler<X509Bundles>, onError: WatchErrorHandler): Watcher {
    return this.#watch(
      WORKLOAD_API.fetchX509Bundles,
      create(X509BundlesRequestSchema),
      parseX509BundlesResponse,
      onUpdate,
      onError,
    );
  }

  async fetchJwtSvid(params: FetchJwtSvidParams): Promise<WorkloadJwtSvid> {
    const svids = await this.fetchJwtSvids(params);
    return svids[0] as WorkloadJwtSvid; // parseJwtSvidResponse guarantees at least one
  }

  async fetchJwtSvids(params: FetchJwtSvidParams): Promise<WorkloadJwtSvid[]> {
    const audience = typeof params.audience === "string" ? [params.audience] : [...params.audience];
    if (audience.length === 0 || audience.some((a) => a === "")) {
      throw new SigilError("ERR_INVALID_ARGUMENT", "workloadapi: fetchJwtSvid: audience must be specified (non-empty values)");
    }
    let requested: SpiffeId | undefined;
    if (params.spiffeId !== undefined) {
      requested = typeof params.spiffeId === "string" ? parseSpiffeId(params.spiffeId) : params.spiffeId;
    }
    const req = create(JWTSVIDRequestSchema, { audience, spiffeId: requested?.toString() ?? "" });
    const resp = await this.#unary(WORKLOAD_API.fetchJWTSVID, req, params.signal);
    return parseJwtSvidResponse(resp, requested);
  }

  fetchJwtBundles(options: CallOptions = {}): Promise<JwtBundles> {
    return this.#fetchFirst(WORKLOAD_API.fetchJWTBundles, create(JWTBundlesRequestSchema), parseJwtBundlesResponse, options);
  }

  watchJwtBundles(onUpdate: WatchUpdateHandler<JwtBundles>, onError: WatchErrorHandler): Watcher {
    return this.#watch(WORKLOAD_API.fetchJWTBundles, create(JWTBundlesRequestSchema), parseJwtBundlesResponse, onUpdate, onError);
  }

  async validateJwtSvid(token: string, audience: string, options: CallOptions = {}): Promise<ValidatedJwtSvid> {
    if (token === "") throw new SigilError("ERR_INVALID_ARGUMENT", "workloadapi: validateJwtSvid: svid must be specified");
    if (audience === "") throw new SigilError("ERR_INVALID_ARGUMENT", "workloadapi: validateJwtSvid: audience must be specified");
    const req = create(ValidateJWTSVIDRequestSchema, { svid: token, audience });
    const resp = await this.#unary(WORKLOAD_API.validateJWTSVID, req, options.signal);
    return parseValidateJwtSvidResponse(resp);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const cancel of [...this.#cancels]) cancel();
    this.#cancels.clear();
    this.#grpc.close();
  }

  #unary<I, O>(def: GrpcLike<I, O>, req: I, signal: AbortSignal | undefined): Promise<O> {
    const rpc = rpcName(def);
    if (this.#closed) return Promise.reject(closedError(rpc));
    if (signal?.aborted === true) return Promise.reject(new WorkloadApiError(rpc, status.CANCELLED, "aborted"));
    return new Promise<O>((resolve, reject) => {
      const call = this.#grpc.makeUnaryRequest(
        def.path,
        def.requestSerialize,
        def.responseDeserialize,
        req,
        securityMetadata(),
        {},
        (err, value) => {
          this.#cancels.delete(cancel);
          signal?.removeEventListener("abort", cancel);
          if (err !== null || value === undefined) {
            reject(this.#closed ? closedError(rpc) : workloadApiErrorFromServiceError(rpc, err ?? {}));
          } else {
            resolve(value);
          }
        },
      );
      const cancel = (): void => call.cancel();
      this.#cancels.add(cancel);
      signal?.addEventListener("abort", cancel, { once: true });
    });
  }

  /** Opens a stream, resolves with its first valid message, then cancels it. */
  #fetchFirst<I, O, T>(def: GrpcLike<I, O>, req: I, parse: (m: O) => T, options: CallOptions): Promise<T> {
    const rpc = rpcName(def);
    if (this.#closed) return Promise.reject(closedError(rpc));
    const signal = options.signal;
    if (signal?.aborted === true) return Promise.reject(new WorkloadApiError(rpc, status.CANCELLED, "aborted"));
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const call = this.#grpc.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, req, securityMetadata(), {});
      const cancel = (): void => call.cancel();
      const finish = (): void => {
        settled = true;
        this.#cancels.delete(cancel);
        signal?.removeEventListener("abort", cancel);
        call.cancel();
      };
      this.#cancels.add(cancel);
      signal?.addEventListener("abort", cancel, { once: true });
      call.on("data", (msg: O) => {
        if (settled) return;
        let value: T;
        try {
          value = parse(msg);
        } catch (e) {
          finish();
          reject(e);
          return;
        }
        finish();
        resolve(value);
      });
      call.on("error", () => {
        // Reported through "status".
      });
      call.on("status", (st: StatusObject) => {
        if (settled) return;
        finish();
        if (this.#closed) reject(closedError(rpc));
        else if (st.code === status.OK) reject(new WorkloadApiError(rpc, status.UNAVAILABLE, "stream ended before the first message"));
        else reject(workloadApiErrorFromServiceError(rpc, st));
      });
    });
  }

  #watch<I, O, T>(
    def: GrpcLike<I, O>,
    req: I,
    parse: (m: O) => T,
    onUpdate: WatchUpdateHandler<T>,
    onError: WatchErrorHandler,
  ): Watcher {
    const rpc = rpcName(def);
    let stoppedResolve!: () => void;
    const stopped = new Promise<void>((r) => (stoppedResolve = r));
    let stoppedFlag = false;
    let call: ClientReadableStream<O> | undefined;
    let timer: NodeJS.Timeout | undefined;
    // Consecutive attempts that delivered no message; reset by any message.
    let failures = 0;
    const backoff = this.#backoff;

    const stop = (): void => {
      if (stoppedFlag) return;
      stoppedFlag = true;
      this.#cancels.delete(stop);
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      const c = call;
      call = undefined;
      c?.cancel();
      stoppedResolve();
    };

    const report = (e: SigilError, terminal: boolean): void => {
      try {
        onError(e, { terminal });
      } catch {
        // A throwing handler must not break the watch loop.
      }
    };

    const connect = (): void => {
      timer = undefined;
      if (stoppedFlag) return;
      let delivered = false;
      const c = this.#grpc.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, req, securityMetadata(), {});
      call = c;
      c.on("data", (msg: O) => {
        if (stoppedFlag || call !== c) return;
        delivered = true;
        failures = 0;
        let value: T;
        try {
          value = parse(msg);
        } catch (e) {
          // WAPI-12: report and discard; the caller keeps its previous state.
          report(toSigilError(e, "ERR_WORKLOAD_API_RESPONSE_INVALID", `workloadapi: ${rpc}`), false);
          return;
        }
        try {
          onUpdate(value);
        } catch {
          // A throwing handler must not break the watch loop.
        }
      });
      c.on("error", () => {
        // Reported through "status".
      });
      c.on("status", (st: StatusObject) => {
        if (stoppedFlag || call !== c) return;
        call = undefined;
        if (st.code !== status.OK) {
          const err = workloadApiErrorFromServiceError(rpc, st);
          if (watchActionForStatus(st.code) === "stop") {
            report(err, true);
            stop();
            return;
          }
          report(err, false);
        }
        // WAPI-4: a stream that worked reconnects at once; failures back off.
        if (!delivered) failures++;
        const delay = backoffDelay(backoff, failures);
        if (delay === 0) setImmediate(connect);
        else timer = setTimeout(connect, delay);
      });
    };

    if (this.#closed) {
      stoppedFlag = true;
      stoppedResolve();
    } else {
      this.#cancels.add(stop);
      connect();
    }
    return { close: stop, stopped };
  }
}
