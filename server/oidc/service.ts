/**
 * The server's `oidc-discovery` service (`oidc_discovery.enabled`): serves the
 * trust domain's JWT keys from the CA's bundle as OIDC discovery documents,
 * with `server.jwt_issuer` as the issuer. The documents are rendered again on
 * every bundle change ({@link CaManager.onBundleChange}), so a prepared key
 * is published as soon as the CA publishes it, and a retired key stays until
 * the CA drops it (when the last token it signed has expired).
 */
import type { Logger } from "../../common/log.js";
import type { Service } from "../../common/service.js";
import type { SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { SigilError } from "../../spiffe/errors.js";
import type { CaManager } from "../ca/manager.js";
import type { OidcDiscoveryConfig } from "./config.js";
import { renderOidcDocuments, type OidcDocuments } from "./discovery.js";
import { startOidcListener, type OidcListener } from "./http.js";

/** Relying parties such as AWS STS accept at most this many keys in a JWK Set. */
export const RELYING_PARTY_MAX_KEYS = 100;

/** Dependencies of the {@link OidcDiscoveryService}. */
export interface OidcDiscoveryServiceDeps {
  /** The `oidc_discovery` section. */
  readonly config: OidcDiscoveryConfig;
  /** `server.jwt_issuer`: the issuer of the documents. */
  readonly issuer: string;
  /** The CA service, started before this one. */
  readonly ca: { readonly manager: CaManager };
  readonly log: Logger;
}

/** The `oidc-discovery` service; see the module comment. */
export class OidcDiscoveryService implements Service {
  readonly name = "oidc-discovery";
  readonly #d: OidcDiscoveryServiceDeps;
  #documents: OidcDocuments | undefined;
  #unsubscribe: (() => void) | undefined;
  /** The bound listener, once started. */
  listener: OidcListener | undefined;

  constructor(deps: OidcDiscoveryServiceDeps) {
    this.#d = deps;
  }

  async start(): Promise<void> {
    const { config, issuer, log } = this.#d;
    const manager = this.#d.ca.manager;
    this.#render(manager.bundle());
    this.#unsubscribe = manager.onBundleChange((b) => this.#render(b));
    try {
      this.listener = await startOidcListener({
        host: config.address,
        port: config.port,
        tls: config.tls ? { certFile: config.tls.cert_file_path, keyFile: config.tls.key_file_path } : undefined,
        issuer,
        jwksUri: config.jwks_uri,
        documents: () => this.#documents,
        maxAgeSeconds: Math.floor(config.cache_max_age / 1000),
        log,
      });
    } catch (e) {
      this.#unsubscribe();
      throw e;
    }
    if (!config.tls) log.info({ url: this.listener.url }, "oidc: serving plain HTTP; relying parties need HTTPS in front of it");
  }

  #render(bundle: SpiffeBundle): void {
    try {
      this.#documents = renderOidcDocuments({ issuer: this.#d.issuer, jwksUri: this.#d.config.jwks_uri }, bundle.jwtAuthorities);
      if (this.#documents.keyCount > RELYING_PARTY_MAX_KEYS) {
        this.#d.log.warn({ keys: this.#documents.keyCount }, `oidc: the JWK Set holds more than ${RELYING_PARTY_MAX_KEYS} keys; AWS STS refuses such sets`);
      }
    } catch (e) {
      // Keep serving the previous documents: a relying party must not lose every key.
      this.#d.log.error({ err: e instanceof SigilError ? e.message : String(e) }, "oidc: cannot render the documents for the new bundle; serving the previous ones");
    }
  }

  async stop(): Promise<void> {
    this.#unsubscribe?.();
    await this.listener?.close();
  }
}
