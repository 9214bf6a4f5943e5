/**
 * The `bundle-endpoint` service (`federation.bundle_endpoint`): picks the
 * serving certificate of the configured profile and runs the
 * {@link startBundleEndpoint} listener over the CA's bundle.
 *
 * - `https_spiffe` with the server's own ID (the default): the server SVID of
 *   the `server-svid` service, renewed by it.
 * - `https_spiffe` with another `endpoint_spiffe_id`: an SVID of this
 *   trust domain minted for that ID on its own key, renewed like the server
 *   SVID (at half life and when the roots change) on {@link BundleEndpointService.refresh}.
 * - `https_web`: the configured certificate and key files, reloaded on change.
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import type { Service } from "../../common/service.js";
import { SigilError } from "../../spiffe/errors.js";
import { parseSpiffeId, type SpiffeId } from "../../spiffe/id.js";
import type { MemoryCertificateProvider } from "../api/cert-provider.js";
import { ServerSvidService, type ServerSvidDeps } from "../api/server-svid.js";
import type { CaManager } from "../ca/manager.js";
import type { ServerConfig } from "../config/schema.js";
import { startBundleEndpoint, type BundleEndpoint, type ServingCertificateSource } from "./bundle-endpoint.js";
import { ServingCertFile } from "./serving-cert-file.js";

/** Config key of the bundle endpoint section, for error messages. */
const SECTION = "federation.bundle_endpoint";

/** How the endpoint authenticates itself. */
export type BundleEndpointProfile =
  | { readonly kind: "https_spiffe"; readonly endpointId: SpiffeId }
  | { readonly kind: "https_web"; readonly certFilePath: string; readonly keyFilePath: string; readonly syncIntervalMs: number };

/** The resolved `federation.bundle_endpoint` settings. */
export interface BundleEndpointSettings {
  readonly host: string;
  readonly port: number;
  readonly path: string;
  /** Whole seconds. */
  readonly refreshHintSeconds: number;
  readonly profile: BundleEndpointProfile;
}

/**
 * The bundle endpoint settings of a server config, or undefined when it
 * has no `federation.bundle_endpoint`. The profile defaults to `https_spiffe`
 * with `serverId`.
 */
export function bundleEndpointSettings(config: ServerConfig, serverId: SpiffeId): BundleEndpointSettings | undefined {
  const be = config.federation?.bundle_endpoint;
  if (be === undefined) return undefined;
  const web = be.profile?.https_web?.serving_cert_file;
  const endpointId = be.profile?.https_spiffe?.endpoint_spiffe_id;
  const profile: BundleEndpointProfile =
    web !== undefined
      ? { kind: "https_web", certFilePath: web.cert_file_path, keyFilePath: web.key_file_path, syncIntervalMs: web.file_sync_interval }
      : { kind: "https_spiffe", endpointId: endpointId === undefined ? serverId : parseSpiffeId(endpointId) };
  if (profile.kind === "https_spiffe" && !profile.endpointId.trustDomain.equals(serverId.trustDomain)) {
    throw new SigilError(
      "ERR_INVALID_ARGUMENT",
      `config: ${SECTION}.profile.https_spiffe.endpoint_spiffe_id: ${profile.endpointId} is not in the trust domain ${serverId.trustDomain.name}`,
    );
  }
  return { host: be.address, port: be.port, path: be.path, refreshHintSeconds: Math.floor(be.refresh_hint / 1000), profile };
}

/**
 * The serving certificate of an SVID kept by a {@link ServerSvidService}'s
 * certificate provider (the agent API's TLS identity uses the same provider).
 */
export function svidServingCertificates(provider: MemoryCertificateProvider): ServingCertificateSource {
  return {
    current() {
      const id = provider.identity;
      if (id === null) throw new SigilError("ERR_UNAVAILABLE", "bundle endpoint: no SVID issued yet");
      return { certChainPem: id.certificate.toString("utf8"), privateKeyPem: id.privateKey.toString("utf8") };
    },
    onChange(listener) {
      const l = (): void => listener();
      provider.addIdentityCertificateListener(l);
      return () => provider.removeIdentityCertificateListener(l);
    },
  };
}

/** Dependencies of the {@link BundleEndpointService}. */
export interface BundleEndpointServiceDeps {
  readonly settings: BundleEndpointSettings;
  /** The CA service, started before this one: the bundle, and the signer of an endpoint SVID. */
  readonly ca: { readonly manager: CaManager };
  /** The server's SVID, served when the endpoint ID is the server's. */
  readonly serverSvid: { readonly certificates: MemoryCertificateProvider };
  readonly serverId: SpiffeId;
  /** Lifetime of an endpoint SVID minted for another ID (`server.default_x509_svid_ttl`). */
  readonly svidTtlMs: number;
  readonly clock: Clock;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Signs and records an endpoint SVID minted for another ID (the transparency log on); see {@link ServerSvidDeps.issue}. */
  readonly issueSvid?: ServerSvidDeps["issue"];
}

/** The `bundle-endpoint` service; see the module comment. */
export class BundleEndpointService implements Service {
  readonly name = "bundle-endpoint";
  readonly #d: BundleEndpointServiceDeps;
  /** The SVID minted for an `endpoint_spiffe_id` other than the server's. */
  #endpointSvid: ServerSvidService | undefined;
  #certFile: ServingCertFile | undefined;
  /** The listener, once started. */
  endpoint: BundleEndpoint | undefined;

  constructor(deps: BundleEndpointServiceDeps) {
    this.#d = deps;
  }

  async start(): Promise<void> {
    const { settings, ca, log } = this.#d;
    const certificates = await this.#certificates();
    try {
      this.endpoint = await startBundleEndpoint({
        host: settings.host,
        port: settings.port,
        path: settings.path,
        refreshHintSeconds: settings.refreshHintSeconds,
        bundles: ca.manager,
        certificates,
        metrics: this.#d.metrics,
        log,
      });
    } catch (e) {
      this.#certFile?.stop();
      throw e;
    }
    const profile = settings.profile;
    log.info(
      { url: this.endpoint.url, profile: profile.kind, ...(profile.kind === "https_spiffe" ? { endpoint_spiffe_id: profile.endpointId.toString() } : { cert_file: profile.certFilePath }) },
      "bundle endpoint listening",
    );
  }

  /** Renews an endpoint SVID minted for another ID when due (run after each CA rotation step); a no-op otherwise. */
  refresh(): Promise<void> {
    return this.#endpointSvid?.refresh() ?? Promise.resolve();
  }

  async stop(): Promise<void> {
    await this.endpoint?.close();
    this.#certFile?.stop();
    this.#endpointSvid?.stop();
  }

  async #certificates(): Promise<ServingCertificateSource> {
    const { settings, serverId } = this.#d;
    const profile = settings.profile;
    if (profile.kind === "https_web") {
      this.#certFile = new ServingCertFile({
        certFilePath: profile.certFilePath,
        keyFilePath: profile.keyFilePath,
        syncIntervalMs: profile.syncIntervalMs,
        configKey: `${SECTION}.profile.https_web.serving_cert_file`,
        log: this.#d.log,
      });
      this.#certFile.start();
      return this.#certFile;
    }
    if (profile.endpointId.equals(serverId)) return svidServingCertificates(this.#d.serverSvid.certificates);
    this.#endpointSvid = new ServerSvidService({ ca: this.#d.ca, serverId: profile.endpointId, ttlMs: this.#d.svidTtlMs, clock: this.#d.clock, issue: this.#d.issueSvid, log: this.#d.log });
    await this.#endpointSvid.start();
    return svidServingCertificates(this.#endpointSvid.certificates);
  }
}
