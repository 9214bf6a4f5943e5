/**
 * A live X.509 source backed by a Workload API watcher, modelled on go-spiffe's
 * `workloadapi.X509Source`: create once, then read the current SVID and
 * bundles synchronously while the watcher keeps them fresh. It implements
 * {@link X509BundleSource}, so verification code can take it directly.
 */
import { status } from "@grpc/grpc-js";
import type { X509Bundle, X509BundleSource } from "../bundle/x509-bundle.js";
import { SigilError } from "../errors.js";
import type { TrustDomain } from "../id.js";
import type { WorkloadApiClient } from "./client.js";
import { isWorkloadApiError } from "./errors.js";
import { LiveValue, ownedClient, type LiveSourceEvents, type SourceOptions } from "./live-value.js";
import type { X509Context, X509Svid } from "./x509-context.js";

/**
 * A live X.509 source: the workload's X509-SVIDs and the X.509 bundles from
 * `FetchX509SVID`, kept current by a watcher.
 *
 * Once the stream ends with PermissionDenied (the caller lost its identity),
 * the SVIDs are dropped until the next update (WAPI-23); bundles stay.
 *
 * @example
 * ```ts
 * const source = await X509Source.create({ clientOptions: { address } });
 * const svid = source.getX509Svid();
 * verifyX509Svid(peerChain, source, { now: new Date() });
 * source.close();
 * ```
 */
export class X509Source implements X509BundleSource {
  readonly #live: LiveValue<X509Context>;
  readonly #client: WorkloadApiClient;
  readonly #ownsClient: boolean;
  #svidsRevoked = false;

  private constructor(client: WorkloadApiClient, ownsClient: boolean, signal: AbortSignal | undefined) {
    this.#client = client;
    this.#ownsClient = ownsClient;
    this.#live = new LiveValue<X509Context>("x509 source", (u, e) => client.watchX509Context(u, e), signal);
    this.#live.on("update", () => {
      this.#svidsRevoked = false;
    });
    this.#live.on("error", (err) => {
      if (isWorkloadApiError(err, status.PERMISSION_DENIED)) this.#svidsRevoked = true;
    });
  }

  /**
   * Starts watching and resolves once the first X.509 context has arrived.
   * Unavailable / PermissionDenied are retried meanwhile (WEP-16/17); a
   * terminal error (InvalidArgument, Unimplemented) or `signal` rejects.
   */
  static async create(options: SourceOptions = {}): Promise<X509Source> {
    const { client, owned } = ownedClient(options);
    const source = new X509Source(client, owned, options.signal);
    try {
      await source.#live.ready;
    } catch (e) {
      source.close();
      throw e;
    }
    return source;
  }

  /** The latest complete context, or undefined once SVIDs were revoked. */
  get context(): X509Context | undefined {
    return this.#svidsRevoked ? undefined : this.#live.value;
  }

  /**
   * The default SVID (the first sent, WAPI-39), or the one with `hint`.
   *
   * @throws SigilError `ERR_NOT_FOUND` when no SVID (with that hint) is held,
   *   `ERR_WORKLOAD_API` after `close()`.
   */
  getX509Svid(hint?: string): X509Svid {
    this.#checkOpen();
    const ctx = this.context;
    if (ctx === undefined) {
      throw new SigilError("ERR_NOT_FOUND", "workloadapi: x509 source holds no X509-SVID (identity revoked)");
    }
    if (hint === undefined) return ctx.defaultSvid;
    const svid = ctx.svidByHint(hint);
    if (svid === undefined) throw new SigilError("ERR_NOT_FOUND", `workloadapi: x509 source has no X509-SVID with hint ${JSON.stringify(hint)}`);
    return svid;
  }

  /** All current SVIDs, default first; empty once revoked. */
  getX509Svids(): readonly X509Svid[] {
    this.#checkOpen();
    return this.context?.svids ?? [];
  }

  /** The X.509 bundle of `td`, or undefined when it is not trusted. */
  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    this.#checkOpen();
    return this.#live.value?.getX509BundleForTrustDomain(td);
  }

  /** Subscribes to `update` (every new context) or `error` (watch errors). Returns an unsubscribe function. */
  on<E extends keyof LiveSourceEvents<X509Context>>(event: E, listener: LiveSourceEvents<X509Context>[E]): () => void {
    return this.#live.on(event, listener);
  }

  /** Stops watching, and closes the client if the source created it. Idempotent. */
  close(): void {
    this.#live.close("x509 source");
    if (this.#ownsClient) this.#client.close();
  }

  #checkOpen(): void {
    if (this.#live.closed) throw new SigilError("ERR_WORKLOAD_API", "workloadapi: x509 source is closed");
  }
}
