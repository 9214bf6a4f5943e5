/**
 * `sigil-server oidc-discovery`: OIDC discovery as its own small process, a
 * workload of a local agent. It watches the JWT bundles over the SPIFFE
 * Workload API (`FetchJWTBundles`), so it needs neither the CA's datastore
 * nor the admin socket, and can run on a host that faces the internet while
 * the server does not. It publishes the bundle of one trust domain, the
 * issuer's, re-rendered on every update the agent sends (key preparation,
 * activation, and the removal of a retired key once its tokens expired).
 *
 * Ready (`/ready` of its `health_checks` listener) once the first bundle of
 * that trust domain has arrived; until then the documents answer 503.
 */
import path from "node:path";
import { loadConfigFile } from "../../common/config/load.js";
import { startHealthServer, type HttpListener } from "../../common/health/http-server.js";
import { createLogger, type Logger } from "../../common/log.js";
import { service, ServiceGroup } from "../../common/service.js";
import { waitForStopSignal } from "../../common/signals.js";
import { createWorkloadApiClient, type Watcher, type WorkloadApiClient } from "../../spiffe/workloadapi/client.js";
import type { JwtBundleMap } from "../../spiffe/workloadapi/jwt-context.js";
import { oidcProcessConfigSchema, type OidcProcessConfig } from "./config.js";
import { renderOidcDocuments, type OidcDocuments } from "./discovery.js";
import { startOidcListener, type OidcListener } from "./http.js";
import { RELYING_PARTY_MAX_KEYS } from "./service.js";

/**
 * Loads and validates a `sigil-server oidc-discovery` config file.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming each problem's key path (`workload_api.socket_path: …`).
 */
export function loadOidcProcessConfig(file: string, options: { readonly expandEnv?: boolean } = {}): OidcProcessConfig {
  return loadConfigFile(file, oidcProcessConfigSchema, options);
}

/** Options for tests and embedding. */
export interface StartOidcProcessOptions {
  /** Log destination (default stdout). */
  readonly logDestination?: { write(line: string): void };
}

/** A running discovery process. */
export interface RunningOidcProcess {
  /** The discovery listener. */
  readonly listener: OidcListener;
  /** The health listener, when `health_checks.listener_enabled`. */
  readonly health: HttpListener | undefined;
  readonly log: Logger;
  stop(): Promise<void>;
}

/**
 * Starts the bundle watch, the discovery listener and (when configured) the
 * health listener; resolves once they are bound, not once keys arrived.
 */
export async function startOidcProcess(config: OidcProcessConfig, options: StartOidcProcessOptions = {}): Promise<RunningOidcProcess> {
  const log = createLogger({ level: config.log_level, format: config.log_format, ...(options.logDestination ? { destination: options.logDestination } : {}) });
  const td = config.workload_api.trust_domain;
  let documents: OidcDocuments | undefined;
  let client: WorkloadApiClient | undefined;
  let watcher: Watcher | undefined;
  let listener: OidcListener | undefined;
  let health: HttpListener | undefined;

  const onBundles = (bundles: JwtBundleMap): void => {
    const bundle = bundles.get(td);
    if (bundle === undefined) {
      log.warn({ trust_domain: td, received: [...bundles.keys()] }, "oidc: the agent sent no JWT bundle for the issuer's trust domain; keeping the previous keys");
      return;
    }
    try {
      const next = renderOidcDocuments({ issuer: config.issuer, jwksUri: config.jwks_uri }, bundle.authorities);
      if (next.jwks !== documents?.jwks) log.info({ trust_domain: td, keys: next.keyCount }, "oidc: JWT keys updated");
      if (next.keyCount > RELYING_PARTY_MAX_KEYS) log.warn({ keys: next.keyCount }, `oidc: the JWK Set holds more than ${RELYING_PARTY_MAX_KEYS} keys; AWS STS refuses such sets`);
      documents = next;
    } catch (e) {
      log.error({ err: (e as Error).message }, "oidc: cannot render the documents for the new bundle; serving the previous ones");
    }
  };

  const watch = service(
    "jwt-bundle-watch",
    () => {
      client = createWorkloadApiClient({ address: `unix://${path.resolve(config.workload_api.socket_path)}` });
      watcher = client.watchJwtBundles(
        (b) => onBundles(b.bundles),
        (err, info) => log.warn({ err: err.message, terminal: info.terminal }, "oidc: JWT bundle watch failed; retrying"),
      );
    },
    () => {
      watcher?.close();
      client?.close();
    },
    () => (documents === undefined ? [`oidc: no JWT keys of ${td} received from the agent yet`] : []),
  );
  const http = service(
    "oidc-listener",
    async () => {
      listener = await startOidcListener({
        host: config.address,
        port: config.port,
        tls: config.tls ? { certFile: config.tls.cert_file_path, keyFile: config.tls.key_file_path } : undefined,
        issuer: config.issuer,
        jwksUri: config.jwks_uri,
        documents: () => documents,
        maxAgeSeconds: Math.floor(config.cache_max_age / 1000),
        log,
      });
    },
    () => listener?.close(),
  );
  const hc = config.health_checks.listener_enabled ? config.health_checks : undefined;
  const services: ServiceGroup = new ServiceGroup(
    [
      watch,
      http,
      ...(hc
        ? [
            service(
              "health-listener",
              async () => {
                health = await startHealthServer({ host: hc.bind_address, port: hc.bind_port, livePath: hc.live_path, readyPath: hc.ready_path, readiness: () => services.readiness() });
              },
              () => health?.close(),
            ),
          ]
        : []),
    ],
    log,
  );
  await services.start();
  const bound = listener as OidcListener | undefined;
  if (bound === undefined) throw new Error("oidc: listener not bound after start");
  log.info({ issuer: config.issuer, url: bound.url, health: health?.url, workload_api: config.workload_api.socket_path, trust_domain: td }, "oidc-discovery started");
  let stopped = false;
  return {
    listener: bound,
    health,
    log,
    async stop(): Promise<void> {
      if (stopped) return;
      stopped = true;
      await services.stop();
    },
  };
}

/** Runs the process until SIGINT/SIGTERM (the `sigil-server oidc-discovery` command). */
export async function runOidcProcess(config: OidcProcessConfig): Promise<void> {
  const stopSignal = waitForStopSignal();
  const running = await startOidcProcess(config);
  const signal = await stopSignal;
  running.log.info({ signal }, "oidc-discovery: shutting down");
  await running.stop();
}
