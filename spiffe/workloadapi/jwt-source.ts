/**
 * A live JWT source backed by a Workload API watcher, modelled on go-spiffe's
 * `workloadapi.JWTSource`: JWT bundles kept current, JWT-SVIDs fetched on
 * demand. It implements {@link JwtBundleSource}, so local validation can take
 * it directly (using only FetchJWTBundles keys, never X.509 bundles: WAPI-14).
 */
import type { JwtBundle, JwtBundleSource } from "../bundle/jwt-bundle.js";
import { SigilError } from "../errors.js";
import type { TrustDomain } from "../id.js";
import type { FetchJwtSvidParams, WorkloadApiClient } from "./client.js";
import type { JwtBundles, WorkloadJwtSvid } from "./jwt-context.js";
import { LiveValue, ownedClient, type LiveSourceEvents, type SourceOptions } from "./live-value.js";

/**
 * A live JWT source: JWT bundles from `FetchJWTBundles`, kept current by a
 * watcher, and JWT-SVIDs fetched on demand.
 *
 * @example
 * ```ts
 * const source = await JwtSource.create({ clientOptions: { address } });
 * const svid = await source.fetchJwtSvid({ audience: "api" });
 * validateJwtSvid(token, source, { audience: ["api"], now: new Date() });
 * ```
 */
export class JwtSource implements JwtBundleSource {
  readonly #live: LiveValue<JwtBundles>;
  readonly #client: WorkloadApiClient;
  readonly #ownsClient: boolean;

  private constructor(client: WorkloadApiClient, ownsClient: boolean, signal: AbortSignal | undefined) {
    this.#client = client;
    this.#ownsClient = ownsClient;
    this.#live = new LiveValue<JwtBundles>("jwt source", (u, e) => client.watchJwtBundles(u, e), signal);
  }

  /** Starts watching and resolves once the first JWT bundles have arrived. */
  static async create(options: SourceOptions = {}): Promise<JwtSource> {
    const { client, owned } = ownedClient(options);
    const source = new JwtSource(client, owned, options.signal);
    try {
      await source.#live.ready;
    } catch (e) {
      source.close();
      throw e;
    }
    return source;
  }

  /** Fetches the default JWT-SVID for the audience (or the one for `spiffeId`). */
  fetchJwtSvid(params: FetchJwtSvidParams): Promise<WorkloadJwtSvid> {
    this.#checkOpen();
    return this.#client.fetchJwtSvid(params);
  }

  /** Fetches every JWT-SVID the caller is entitled to for the audience. */
  fetchJwtSvids(params: FetchJwtSvidParams): Promise<WorkloadJwtSvid[]> {
    this.#checkOpen();
    return this.#client.fetchJwtSvids(params);
  }

  /** The JWT bundle of `td`, or undefined when it is not trusted (WAPI-37). */
  getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined {
    this.#checkOpen();
    return this.#live.value?.getJwtBundleForTrustDomain(td);
  }

  /** Subscribes to `update` (new bundles) or `error`. Returns an unsubscribe function. */
  on<E extends keyof LiveSourceEvents<JwtBundles>>(event: E, listener: LiveSourceEvents<JwtBundles>[E]): () => void {
    return this.#live.on(event, listener);
  }

  /** Stops watching, and closes the client if the source created it. Idempotent. */
  close(): void {
    this.#live.close("jwt source");
    if (this.#ownsClient) this.#client.close();
  }

  #checkOpen(): void {
    if (this.#live.closed) throw new SigilError("ERR_WORKLOAD_API", "workloadapi: jwt source is closed");
  }
}
