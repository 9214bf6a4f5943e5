/**
 * The server's composition root: builds every subsystem from the config with
 * explicit dependencies (clock, logger, metrics, key manager, datastore), then
 * starts the listeners. Nothing here is a module-level singleton.
 *
 * Listeners:
 * - the agent API (gRPC over TLS, `bind_address:bind_port`): the server
 *   presents its own X509-SVID `spiffe://<td>/spire/server`; agents present
 *   theirs (optional at the TLS layer so attestation can run without one);
 * - the admin API on a local Unix socket (directory 0700, socket 0600), each
 *   call audited with the caller's uid, gid, pid and binary;
 * - optional HTTP health (`/live`, `/ready`) and Prometheus `/metrics`.
 */
import { availableParallelism } from "node:os";
import path from "node:path";
import { Server, ServerCredentials, experimental } from "@grpc/grpc-js";
import type { Clock } from "../common/clock.js";
import { systemClock } from "../common/clock.js";
import { waitForStopSignal } from "../common/signals.js";
import { createHealthService, addHealthService, type HealthService } from "../common/health/grpc-health.js";
import { startHealthServer, startMetricsServer, type HttpListener } from "../common/health/http-server.js";
import { createLogger, subsystemLogger, type Logger } from "../common/log.js";
import { Metrics, rpcMetricsInterceptor } from "../common/metrics.js";
import { serverSpiffeId } from "../common/reserved-ids.js";
import { createPlugins, PLUGIN_CATALOG } from "../plugins/catalog.js";
import { SigningPool } from "../plugins/keymanager/signing-pool.js";
import type { ServerNodeAttestor } from "../plugins/nodeattestor/types.js";
import { AgentAPI } from "../proto/gen/sigil/agent/v1/agent_pb.js";
import { AgentAdmin, BundleAdmin, EntryAdmin, SvidAdmin } from "../proto/gen/sigil/admin/v1/admin_pb.js";
import { SigilError } from "../spiffe/errors.js";
import { parseTrustDomain, type SpiffeId, type TrustDomain } from "../spiffe/id.js";
import { grpcServiceDefinition } from "../spiffe/grpc/service.js";
import { encodePemCertificates } from "../spiffe/pem.js";
import { generateKeyPair } from "../spiffe/signer.js";
import { createAdminApi } from "./api/admin-api.js";
import { createAdminCallers, serveAdminSocket } from "./api/admin-socket.js";
import { createAgentApi, toIndexed, type IndexedRecord } from "./api/agent-api.js";
import { MemoryCertificateProvider } from "./api/cert-provider.js";
import { agentApiRateLimits } from "./api/rate-limit.js";
import { CaManager } from "./ca/manager.js";
import { maxUsefulSvidTtlMs } from "./ca/rotation.js";
import type { ServerConfig } from "./config/schema.js";
import type { Datastore } from "./datastore/index.js";
import { EntryIndex } from "./registration/entry-index.js";

/** How often the CA rotator runs. */
const ROTATE_INTERVAL_MS = 10_000;
/** How often expired join tokens and long-expired issuance records are pruned. */
const PRUNE_INTERVAL_MS = 60_000;
/**
 * How long a stop waits for agent API calls in flight before cancelling them.
 * Any TLS client can open a call and never finish sending it; without a
 * bound, one such peer kept `sigil-server run` from exiting on SIGTERM.
 */
const AGENT_API_STOP_GRACE_MS = 5_000;

/**
 * Removes expired join tokens, and issuance records whose credential expired
 * more than `retentionMs` ago. Failures are logged; the next round tries again.
 */
export async function pruneExpired(datastore: Datastore, now: Date, retentionMs: number, log: Logger): Promise<void> {
  try {
    await datastore.pruneJoinTokens(now);
  } catch (err) {
    log.warn({ err }, "datastore: pruning join tokens failed");
  }
  try {
    // A retention longer than the epoch has lasted keeps everything.
    const removed = await datastore.pruneIssuances(new Date(Math.max(0, now.getTime() - retentionMs)));
    if (removed > 0) log.debug({ removed }, "issuance log: pruned records of long-expired credentials");
  } catch (err) {
    log.warn({ err }, "datastore: pruning the issuance log failed");
  }
}

/** Options for tests and embedding. */
export interface StartServerOptions {
  readonly clock?: Clock;
  /** Log destination (default stdout). */
  readonly logDestination?: { write(line: string): void };
}

/** A running server. */
export interface RunningServer {
  readonly trustDomain: TrustDomain;
  readonly serverId: SpiffeId;
  /** `host:port` of the agent API. */
  readonly agentApiAddress: string;
  readonly adminSocketPath: string;
  readonly datastore: Datastore;
  readonly ca: CaManager;
  readonly health?: HttpListener | undefined;
  readonly metricsListener?: HttpListener | undefined;
  readonly log: Logger;
  /** Runs one CA rotation step now (tests use it with a manual clock). */
  rotateNow(): Promise<void>;
  /** Stops every listener and closes the datastore. */
  stop(): Promise<void>;
}

function resolveDataPath(config: ServerConfig, p: string): string {
  return path.isAbsolute(p) ? p : path.resolve(p);
}

/** `server.signing_threads`, or its default: one less than the available cores, at most 4. */
export function signingThreads(configured: number | undefined, cores = availableParallelism()): number {
  return configured ?? Math.max(0, Math.min(4, cores - 1));
}

function bindAsync(server: Server, address: string, creds: ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => server.bindAsync(address, creds, (err, port) => (err ? reject(err) : resolve(port))));
}

/** Builds and starts the server; resolves once every listener is up. */
export async function startServer(config: ServerConfig, options: StartServerOptions = {}): Promise<RunningServer> {
  const clock = options.clock ?? systemClock;
  const s = config.server;
  const log = createLogger({ level: s.log_level, format: s.log_format, ...(options.logDestination ? { destination: options.logDestination } : {}) });
  const metrics = new Metrics();
  const trustDomain = parseTrustDomain(s.trust_domain);
  const serverId = serverSpiffeId(trustDomain);

  if (s.default_x509_svid_ttl > maxUsefulSvidTtlMs(s.ca_ttl)) {
    log.warn(
      { default_x509_svid_ttl_ms: s.default_x509_svid_ttl, ca_ttl_ms: s.ca_ttl },
      "server: default_x509_svid_ttl is longer than ca_ttl/6; SVIDs will be cut short at CA rotation",
    );
  }

  const plugins = config.plugins;
  const [openDatastore] = createPlugins("server", PLUGIN_CATALOG.DataStore, plugins.DataStore, { clock });
  if (openDatastore === undefined) throw new SigilError("ERR_INVALID_ARGUMENT", "server: plugins.DataStore: one DataStore plugin must be configured");
  const datastore = await openDatastore;
  const cleanups: (() => Promise<void> | void)[] = [() => datastore.close()];
  try {
    // The trust domain may never change under existing data.
    const bundles = await datastore.listBundles();
    const ownStored = bundles.find((b) => b.trustDomain === trustDomain.name);
    const journal = await datastore.listCaJournal();
    if (!ownStored && journal.length > 0) {
      throw new SigilError("ERR_INVALID_ARGUMENT", `server: the datastore holds a CA for another trust domain; trust_domain cannot change (config says ${trustDomain.name})`);
    }

    const threads = signingThreads(s.signing_threads);
    const signingPool = threads > 0 ? new SigningPool(threads) : undefined;
    if (signingPool) cleanups.push(() => signingPool.close());
    const [keyManager] = createPlugins("server", PLUGIN_CATALOG.KeyManager, plugins.KeyManager, { signingPool });
    if (keyManager === undefined) throw new SigilError("ERR_INVALID_ARGUMENT", "server: plugins.KeyManager: one KeyManager plugin must be configured");
    const [upstream] = createPlugins("server", PLUGIN_CATALOG.UpstreamAuthority, plugins.UpstreamAuthority, {});
    const ca = new CaManager(
      {
        trustDomain,
        caTtlMs: s.ca_ttl,
        caKeyType: s.ca_key_type,
        jwtKeyType: s.jwt_key_type ?? s.ca_key_type,
        caSubject: s.ca_subject
          ? {
              ...(s.ca_subject.country?.[0] ? { country: s.ca_subject.country[0] } : {}),
              ...(s.ca_subject.organization?.[0] ? { organization: s.ca_subject.organization[0] } : {}),
              ...(s.ca_subject.common_name ? { commonName: s.ca_subject.common_name } : {}),
            }
          : undefined,
        jwtIssuer: s.jwt_issuer,
      },
      {
        keyManager,
        store: datastore,
        clock,
        upstream,
        log: subsystemLogger(log, "ca_manager"),
        onAuthoritiesChanged: (x509, jwt) => {
          for (const slot of ["A", "B"]) {
            metrics.setCaX509Expiry(slot, x509.find((a) => a.slotId === slot)?.notAfter);
            metrics.setCaJwtKeyExpiry(slot, jwt.find((a) => a.slotId === slot)?.notAfter);
          }
        },
      },
    );
    await ca.start();

    // Entry index: subscribe first, then load, so no change is missed.
    const index = new EntryIndex<IndexedRecord>(serverId.toString());
    const unsubscribe = datastore.subscribe((event) => {
      if (event.kind !== "entry") return;
      if (event.op === "delete") {
        index.delete(event.objectId);
        return;
      }
      datastore.getEntry(event.objectId).then(
        (e) => (e ? index.upsert(toIndexed(e)) : index.delete(event.objectId)),
        (err: unknown) => log.error({ err, entry_id: event.objectId }, "entry index: cannot load a changed entry"),
      );
    });
    cleanups.push(unsubscribe);
    let pageToken: string | undefined;
    do {
      const page = await datastore.listEntries({ pageSize: 1000, ...(pageToken ? { pageToken } : {}) });
      for (const e of page.items) index.upsert(toIndexed(e));
      pageToken = page.nextPageToken;
    } while (pageToken);

    const attestors = new Map<string, ServerNodeAttestor>(
      createPlugins("server", PLUGIN_CATALOG.NodeAttestor, plugins.NodeAttestor, { trustDomain, store: datastore }).map((a) => [a.name, a]),
    );

    // The server's own TLS identity, re-issued on CA rotation and at half life.
    const certs = new MemoryCertificateProvider();
    let serverSvidRenewAt = 0;
    let servedRootsKey = "";
    const refreshServerIdentity = (): void => {
      const now = clock.now().getTime();
      const roots = ca.bundle().x509Authorities;
      const rootsKey = roots.map((r) => Buffer.from(r).toString("base64")).join(",");
      if (rootsKey !== servedRootsKey) {
        certs.setCaCertificates(encodePemCertificates(roots));
        servedRootsKey = rootsKey;
        serverSvidRenewAt = 0; // a new CA may be active: re-issue
      }
      if (now < serverSvidRenewAt) return;
      const { privateKey, publicKey } = generateKeyPair("ec-p256");
      const issued = ca.signX509Svid({
        spiffeId: serverId,
        publicKeyDer: new Uint8Array(publicKey.export({ format: "der", type: "spki" })),
        ttlMs: s.default_x509_svid_ttl,
      });
      certs.setIdentity(encodePemCertificates(issued.chain), privateKey.export({ format: "pem", type: "pkcs8" }).toString());
      serverSvidRenewAt = now + (issued.notAfter.getTime() - now) / 2;
    };
    refreshServerIdentity();

    const grpcHealth: HealthService = createHealthService({ "": "SERVING", "sigil.agent.v1.AgentAPI": "SERVING" });
    const defaultX509TtlMs = s.default_x509_svid_ttl;
    const agentApi = createAgentApi({
      trustDomain,
      datastore,
      ca,
      index,
      attestors,
      log: subsystemLogger(log, "agent_api"),
      metrics,
      agentTtlMs: s.agent_ttl ?? defaultX509TtlMs,
      defaultX509TtlMs,
      defaultJwtTtlMs: s.default_jwt_svid_ttl,
      auditEnabled: s.audit_log_enabled,
      now: () => clock.now(),
      rateLimits: agentApiRateLimits(s.ratelimit, clock),
    });
    const tlsServer = new Server({ interceptors: [rpcMetricsInterceptor(metrics)], "grpc.max_receive_message_length": 4 * 1024 * 1024 });
    tlsServer.addService(grpcServiceDefinition(AgentAPI), agentApi);
    addHealthService(tlsServer, grpcHealth);
    const tlsCreds = experimental.createCertificateProviderServerCredentials(certs, certs, false);
    const port = await bindAsync(tlsServer, `${s.bind_address}:${s.bind_port}`, tlsCreds);
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          // Calls in flight may finish; a peer that never completes its request must not hold the stop up.
          const force = setTimeout(() => tlsServer.forceShutdown(), AGENT_API_STOP_GRACE_MS);
          tlsServer.tryShutdown(() => {
            clearTimeout(force);
            resolve();
          });
        }),
    );

    // Admin API on the local socket, every call audited with the caller the kernel names.
    const adminSocketPath = resolveDataPath(config, s.socket_path);
    const adminCallers = createAdminCallers();
    const admin = createAdminApi({
      trustDomain,
      serverId: serverId.toString(),
      datastore,
      ca,
      log: subsystemLogger(log, "admin_api"),
      metrics,
      auditEnabled: s.audit_log_enabled,
      now: () => clock.now(),
      defaultX509TtlMs,
      defaultJwtTtlMs: s.default_jwt_svid_ttl,
      callerOf: (call) => adminCallers.callerOf(call),
    });
    const adminServer = new Server({ interceptors: [rpcMetricsInterceptor(metrics)] });
    adminServer.addService(grpcServiceDefinition(EntryAdmin), admin.entry);
    adminServer.addService(grpcServiceDefinition(AgentAdmin), admin.agent);
    adminServer.addService(grpcServiceDefinition(BundleAdmin), admin.bundle);
    adminServer.addService(grpcServiceDefinition(SvidAdmin), admin.svid);
    addHealthService(adminServer, grpcHealth);
    const adminSocket = await serveAdminSocket({ server: adminServer, socketPath: adminSocketPath, callers: adminCallers, log: subsystemLogger(log, "admin_api") });
    cleanups.push(() => adminSocket.close());

    // Background work: CA rotation (+ server identity), token pruning.
    let rotating = Promise.resolve();
    const rotateNow = (): Promise<void> => {
      rotating = rotating
        .then(() => ca.rotate())
        .then(refreshServerIdentity)
        .catch((err: unknown) => {
          log.error({ err }, "ca: rotation failed");
          grpcHealth.setStatus("", "NOT_SERVING");
        });
      return rotating;
    };
    const rotateTimer = setInterval(() => void rotateNow(), ROTATE_INTERVAL_MS);
    const pruneTimer = setInterval(() => void pruneExpired(datastore, clock.now(), s.issuance_log_retention, log), PRUNE_INTERVAL_MS);
    cleanups.push(() => {
      clearInterval(rotateTimer);
      clearInterval(pruneTimer);
    });

    const readiness = async () => {
      const reasons: string[] = [];
      if (!ca.x509Authorities().some((a) => a.status === "active" && a.notAfter.getTime() > clock.now().getTime())) reasons.push("ca: no active X.509 CA");
      try {
        await datastore.countAgents();
      } catch (e) {
        reasons.push(`datastore: ${(e as Error).message}`);
      }
      return { ready: reasons.length === 0, reasons };
    };
    let health: HttpListener | undefined;
    const hc = config.health_checks;
    if (hc?.listener_enabled) {
      health = await startHealthServer({ host: hc.bind_address, port: hc.bind_port, livePath: hc.live_path, readyPath: hc.ready_path, readiness, metrics });
      cleanups.push(() => health?.close());
    }
    let metricsListener: HttpListener | undefined;
    const prom = config.telemetry?.prometheus;
    if (prom) {
      metricsListener = await startMetricsServer({ host: prom.host, port: prom.port, metrics });
      cleanups.push(() => metricsListener?.close());
    }

    log.info(
      { trust_domain: trustDomain.name, agent_api: `${s.bind_address}:${port}`, admin_socket: adminSocketPath, health: health?.url, metrics: metricsListener?.url },
      "server started",
    );
    let stopped = false;
    return {
      trustDomain,
      serverId,
      agentApiAddress: `${s.bind_address}:${port}`,
      adminSocketPath,
      datastore,
      ca,
      health,
      metricsListener,
      log,
      rotateNow,
      async stop(): Promise<void> {
        if (stopped) return;
        stopped = true;
        grpcHealth.shutdown();
        await rotating;
        for (const c of cleanups.reverse()) await c();
        log.info({}, "server stopped");
      },
    };
  } catch (e) {
    for (const c of cleanups.reverse()) await c();
    throw e;
  }
}

/** Runs the server until SIGINT/SIGTERM (the `sigil-server run` command). */
export async function runServer(config: ServerConfig): Promise<void> {
  const server = await startServer(config);
  const signal = await waitForStopSignal();
  server.log.info({ signal }, "server: shutting down");
  await server.stop();
}


