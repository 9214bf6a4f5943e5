/**
 * The server's composition root: the named services `sigil-server` is made
 * of, each built with explicit dependencies (clock, logger, metrics, the
 * services it uses), started in order by a {@link ServiceGroup} and stopped
 * in reverse. Nothing here is a module-level singleton.
 *
 * | service | what it does |
 * |---|---|
 * | `datastore` | opens the DataStore plugin; refuses a trust-domain change under existing data |
 * | `signing-pool` | signing threads for the key manager (`server.signing_threads` > 0) |
 * | `ca` | KeyManager and UpstreamAuthority plugins, CA slots restored or created, bundle published |
 * | `transparency-log` | (`transparency_log.enabled`) the log tree rebuilt and checked against the last checkpoint, the log key loaded, a checkpoint every `checkpoint_interval`, each sent to `witnesses`; the witness key loaded when `witness` is set (docs/transparency.md) |
 * | `notifiers` | (`plugins.Notifier`) Notifier plugins, told of the bundle at start and after every change (publishing runs in the background) |
 * | `change-feed` | follows the change events every server sharing the database commits (NOTIFY-woken on PostgreSQL, polled on MySQL and SQLite) |
 * | `entry-index` | the entry index, loaded and following the change feed |
 * | `federation` | `federation.federates_with` applied; each relationship's bundle fetched from its endpoint at its refresh hint |
 * | `server-svid` | the server's own X509-SVID, the agent API's TLS identity |
 * | `bundle-endpoint` | (`federation.bundle_endpoint`) the trust domain's SPIFFE bundle over HTTPS for federated servers |
 * | `agent-api` | the agent API, gRPC over TLS on `bind_address:bind_port` |
 * | `admin-socket` | the admin API on its Unix socket, every call audited |
 * | `ca-rotation` | a CA rotation step every 10 s, then the server SVID's (and bundle endpoint SVID's) renewal |
 * | `k8s-controller` | (`k8s_controller.enabled`) entries for the pods of a Kubernetes cluster from `ClusterSPIFFEID`s |
 * | `prune` | expired join tokens, long-expired issuance records and old change events, every minute |
 * | `oidc-discovery` | (`oidc_discovery.enabled`) OIDC discovery documents of the JWT keys, issuer `server.jwt_issuer` |
 * | `tlog-listener` | (`transparency_log.listen_address`) the log's checkpoint, tiles and entry bundles over HTTP(S) (C2SP tlog-tiles) |
 * | `health-listener`, `metrics-listener` | optional HTTP `/live`, `/ready`, `/metrics` |
 * | `grpc-health` | `grpc.health.v1` on both gRPC listeners: SERVING once every service before it started |
 *
 * `/ready` is the group's readiness: every service started, and none reports
 * a reason (`datastore: …` while it does not answer, `ca: no active X.509 CA`).
 */
import { availableParallelism } from "node:os";
import path from "node:path";
import type { Clock } from "../common/clock.js";
import { systemClock } from "../common/clock.js";
import { createHealthService, type HealthService } from "../common/health/grpc-health.js";
import { startHealthServer, startMetricsServer, type HttpListener } from "../common/health/http-server.js";
import { HttpListenerService } from "../common/health/listener-service.js";
import { createLogger, subsystemLogger, type Logger } from "../common/log.js";
import { Metrics } from "../common/metrics.js";
import { serverSpiffeId } from "../common/reserved-ids.js";
import { service, ServiceGroup } from "../common/service.js";
import { waitForStopSignal } from "../common/signals.js";
import { SigningPool } from "../plugins/keymanager/signing-pool.js";
import { parseTrustDomain, type SpiffeId, type TrustDomain } from "../spiffe/id.js";
import { AdminListener } from "./api/admin-listener.js";
import { AgentApiListener } from "./api/agent-api-listener.js";
import { agentApiRateLimits } from "./api/rate-limit.js";
import { ServerSvidService } from "./api/server-svid.js";
import type { CaManager, IssuedX509, X509SvidRequest } from "./ca/manager.js";
import { Issuer } from "./issuance/issuer.js";
import { CaRotationJob } from "./ca/rotation-job.js";
import { maxUsefulSvidTtlMs } from "./ca/rotation.js";
import { NotifierService } from "./ca/notifier-service.js";
import { caSettings, CaService } from "./ca/service.js";
import type { ServerConfig } from "./config/schema.js";
import type { AttestedAgent, Datastore, StoredBundle } from "./datastore/index.js";
import { ChangeFeed, changeFeedSettings } from "./datastore/change-feed.js";
import { FeedCache } from "./datastore/feed-cache.js";
import { serverInstanceId } from "./ca/instance-id.js";
import { PruneJob } from "./datastore/prune.js";
import { DatastoreService } from "./datastore/service.js";
import { createParentResolver } from "./api/parent-resolver.js";
import { K8sController } from "./k8s-controller/controller.js";
import { datastoreEntryStore } from "./k8s-controller/entry-store.js";
import { k8sControllerSettings } from "./k8s-controller/settings.js";
import { EntryIndexFeed } from "./registration/entry-index-feed.js";
import { FederationPoller } from "./federation/poller.js";
import { BundleEndpointService, bundleEndpointSettings } from "./federation/bundle-endpoint-service.js";
import { OidcDiscoveryService } from "./oidc/service.js";
import type { OidcListener } from "./oidc/http.js";
import { TransparencyLogService } from "./tlog/service.js";
import { tlogListenerService } from "./tlog/http.js";
import type { KeyManager } from "../plugins/keymanager/types.js";

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
  /** `https://host:port/path` of the SPIFFE bundle endpoint (`federation.bundle_endpoint`). */
  readonly bundleEndpointUrl?: string | undefined;
  /** The OIDC discovery listener (`oidc_discovery.enabled`). */
  readonly oidcDiscovery?: OidcListener | undefined;
  /** The transparency log's tiles listener (`transparency_log.listen_address`). */
  readonly tlogListener?: HttpListener | undefined;
  readonly log: Logger;
  /** Runs one CA rotation step now (tests use it with a manual clock). */
  rotateNow(): Promise<void>;
  /** Stops every service, in reverse start order (the datastore closes last). */
  stop(): Promise<void>;
}

/** `server.signing_threads`, or its default: one less than the available cores, at most 4. */
export function signingThreads(configured: number | undefined, cores = availableParallelism()): number {
  return configured ?? Math.max(0, Math.min(4, cores - 1));
}

/** Builds the server's services and starts them; resolves once every one has started. */
export async function startServer(config: ServerConfig, options: StartServerOptions = {}): Promise<RunningServer> {
  const clock = options.clock ?? systemClock;
  const s = config.server;
  const log = createLogger({ level: s.log_level, format: s.log_format, ...(options.logDestination ? { destination: options.logDestination } : {}) });
  const metrics = new Metrics();
  const trustDomain = parseTrustDomain(s.trust_domain);
  const serverId = serverSpiffeId(trustDomain);
  const now = (): Date => clock.now();
  const defaultX509TtlMs = s.default_x509_svid_ttl;
  const adminSocketPath = path.resolve(s.socket_path);

  if (defaultX509TtlMs > maxUsefulSvidTtlMs(s.ca_ttl)) {
    log.warn(
      { default_x509_svid_ttl_ms: defaultX509TtlMs, ca_ttl_ms: s.ca_ttl },
      "server: default_x509_svid_ttl is longer than ca_ttl/6; SVIDs will be cut short at CA rotation",
    );
  }

  // SERVING once every other service has started; NOT_SERVING first thing at stop, after a failed CA rotation, or while the agent API's SVID is expired.
  const grpcHealth: HealthService = createHealthService({ "": "NOT_SERVING", "sigil.agent.v1.AgentAPI": "NOT_SERVING" });
  /** True between the `grpc-health` service's start and stop. */
  let serving = false;
  /** True from a failed CA rotation step until one succeeds. */
  let rotationFailing = false;
  /** Overall health: started, rotation not failing, and the agent API's own SVID not expired. */
  const updateHealth = (): void => {
    if (serving) grpcHealth.setStatus("", !rotationFailing && !serverSvid.expired() ? "SERVING" : "NOT_SERVING");
  };
  const threads = signingThreads(s.signing_threads);
  // Its threads start with the first batch it signs; the `signing-pool` service closes them.
  const signingPool = threads > 0 ? new SigningPool(threads) : undefined;

  const datastore = new DatastoreService({ plugin: config.plugins.DataStore, trustDomain, clock });
  const bundleEndpointConfig = bundleEndpointSettings(config, serverId);
  // This instance's name among the servers sharing the database: its CA journal rows carry it.
  const instanceId = serverInstanceId(s.server_id, s.data_dir);
  // Issuance transparency: its hooks append through the datastore from the start (the CA's first events too).
  const tlogConfig = config.transparency_log?.enabled === true ? config.transparency_log : undefined;
  const transparencyLog: TransparencyLogService | undefined = tlogConfig
    ? new TransparencyLogService({
        datastore,
        keyManager: (): KeyManager => ca.keyManager,
        trustDomain: trustDomain.name,
        serverId: instanceId,
        now,
        checkpointIntervalMs: tlogConfig.checkpoint_interval,
        checkpointBatch: tlogConfig.checkpoint_batch,
        log: subsystemLogger(log, "tlog"),
        witnessing: tlogConfig.witnesses !== undefined || tlogConfig.witness !== undefined ? tlogConfig : undefined,
        metrics,
      })
    : undefined;
  const ca = new CaService({
    settings: caSettings(s, trustDomain, bundleEndpointConfig?.refreshHintSeconds, instanceId),
    plugins: config.plugins,
    datastore,
    signingPool,
    clock,
    metrics,
    log: subsystemLogger(log, "ca_manager"),
    onAuthorityEvent: transparencyLog?.onAuthorityEvent,
    // Bound late: the rotation job is built below, on the CA service.
    onActiveExpired: () => rotation.runSoon(),
  });
  // Only with a Notifier configured: a server without one has no `notifiers` service.
  const notifiers =
    Object.keys(config.plugins.Notifier ?? {}).length > 0 ? new NotifierService({ plugins: config.plugins.Notifier, ca, metrics, log: subsystemLogger(log, "notifier") }) : undefined;
  const changeFeed = new ChangeFeed({ datastore, settings: changeFeedSettings(s.change_feed), clock, log: subsystemLogger(log, "change_feed") });
  const entries = new EntryIndexFeed({
    datastore,
    feed: changeFeed,
    serverId: serverId.toString(),
    reconcileIntervalMs: s.change_feed.entry_reconcile_interval,
    metrics,
    log,
  });
  // What every agent API call reads, served from memory and kept current by the feed.
  const cacheMaxAgeMs = s.change_feed.cache_max_age;
  const agentCache = new FeedCache<AttestedAgent>({
    name: "agent-cache",
    kind: "agent",
    feed: changeFeed,
    read: (id) => datastore.datastore.getAgent(id),
    maxAgeMs: cacheMaxAgeMs,
    clock,
    log,
  });
  const bundleCache = new FeedCache<StoredBundle>({
    name: "bundle-cache",
    kind: "bundle",
    feed: changeFeed,
    read: (td) => datastore.datastore.getBundle(td),
    readAll: async () => (await datastore.datastore.listBundles()).map((b) => [b.trustDomain, b] as const),
    maxAgeMs: cacheMaxAgeMs,
    clock,
    log,
  });
  const federation = new FederationPoller({ trustDomain, datastore, ownBundle: () => ca.manager.bundle(), config: config.federation, clock, metrics, log: subsystemLogger(log, "federation") });
  // With the log on, the server's own SVIDs are recorded and logged (`server-svid`) before they are served.
  let ownSvidIssuer: Issuer | undefined;
  const issueOwnSvid = transparencyLog
    ? (req: X509SvidRequest): Promise<IssuedX509> => {
        ownSvidIssuer ??= new Issuer({ ca: ca.manager, datastore: datastore.datastore, metrics, now, defaultX509TtlMs, defaultJwtTtlMs: s.default_jwt_svid_ttl, transparencyLog });
        return ownSvidIssuer.mintX509Svid(req, `server:${instanceId}`, "server-svid");
      }
    : undefined;
  const serverSvid = new ServerSvidService({
    ca,
    serverId,
    ttlMs: defaultX509TtlMs,
    clock,
    issue: issueOwnSvid,
    log: subsystemLogger(log, "server_svid"),
    metrics,
    onExpiryChange: () => updateHealth(),
  });
  const bundleEndpoint = bundleEndpointConfig
    ? new BundleEndpointService({ settings: bundleEndpointConfig, ca, serverSvid, serverId, svidTtlMs: defaultX509TtlMs, clock, metrics, log: subsystemLogger(log, "bundle_endpoint"), issueSvid: issueOwnSvid })
    : undefined;
  const agentApi = new AgentApiListener({
    host: s.bind_address,
    port: s.bind_port,
    trustDomain,
    nodeAttestors: config.plugins.NodeAttestor,
    datastore,
    ca,
    entries,
    agents: agentCache,
    bundles: bundleCache,
    feed: changeFeed,
    serverSvid,
    grpcHealth,
    rateLimits: agentApiRateLimits(s.ratelimit, clock),
    agentTtlMs: s.agent_ttl ?? defaultX509TtlMs,
    downstreamCaTtlMs: s.downstream_ca_ttl ?? s.ca_ttl,
    defaultX509TtlMs,
    defaultJwtTtlMs: s.default_jwt_svid_ttl,
    auditEnabled: s.audit_log_enabled,
    metrics,
    clock,
    log: subsystemLogger(log, "agent_api"),
    transparencyLog,
  });
  const admin = new AdminListener({
    socketPath: adminSocketPath,
    trustDomain,
    serverId: serverId.toString(),
    datastore,
    ca,
    grpcHealth,
    defaultX509TtlMs,
    defaultJwtTtlMs: s.default_jwt_svid_ttl,
    auditEnabled: s.audit_log_enabled,
    metrics,
    now,
    log: subsystemLogger(log, "admin_api"),
    issuesAgentId: (id) => agentApi.issuesAgentId(id),
    federation,
    transparencyLog,
    tlogView: transparencyLog ? () => transparencyLog.view : undefined,
  });
  const k8sController = k8sControllerService(config, { trustDomain, serverId: serverId.toString(), datastore, agentApi, now, log });
  const rotation = new CaRotationJob({
    ca,
    afterRotation: () => {
      // Neither rejects: a renewal that fails is logged and retried by the service itself.
      void serverSvid.refresh();
      void bundleEndpoint?.refresh();
    },
    onFailure: () => {
      rotationFailing = true;
      grpcHealth.setStatus("", "NOT_SERVING");
    },
    // A step failed while the database restarted: serving again once a step succeeds (not before the start is done).
    onRecovery: () => {
      rotationFailing = false;
      updateHealth();
    },
    log,
  });
  const prune = new PruneJob({ datastore, clock, retentionMs: s.issuance_log_retention, eventRetentionMs: s.change_feed.event_retention, log });
  const hc = config.health_checks?.listener_enabled ? config.health_checks : undefined;
  const health = hc
    ? new HttpListenerService("health-listener", () =>
        startHealthServer({ host: hc.bind_address, port: hc.bind_port, livePath: hc.live_path, readyPath: hc.ready_path, readiness: () => services.readiness(), metrics }),
      )
    : undefined;
  const prom = config.telemetry?.prometheus;
  const metricsListener = prom ? new HttpListenerService("metrics-listener", () => startMetricsServer({ host: prom.host, port: prom.port, metrics })) : undefined;
  // The schema requires server.jwt_issuer when enabled: it is the documents' issuer.
  const oidcConfig = config.oidc_discovery?.enabled === true && s.jwt_issuer !== undefined ? config.oidc_discovery : undefined;
  const oidcDiscovery = oidcConfig ? new OidcDiscoveryService({ config: oidcConfig, issuer: s.jwt_issuer as string, ca, log: subsystemLogger(log, "oidc_discovery") }) : undefined;
  // Only with `transparency_log.listen_address`; it serves the started log service's view.
  const tlogListener = transparencyLog ? tlogListenerService(config.transparency_log, () => transparencyLog.view, subsystemLogger(log, "tlog"), () => transparencyLog.witness) : undefined;

  const services: ServiceGroup = new ServiceGroup(
    [
      datastore,
      ...(signingPool ? [service("signing-pool", () => undefined, () => signingPool.close())] : []),
      ca,
      ...(transparencyLog ? [transparencyLog] : []),
      ...(notifiers ? [notifiers] : []),
      changeFeed,
      entries,
      agentCache,
      bundleCache,
      federation,
      serverSvid,
      ...(bundleEndpoint ? [bundleEndpoint] : []),
      agentApi,
      admin,
      rotation,
      ...(k8sController ? [k8sController] : []),
      prune,
      ...(oidcDiscovery ? [oidcDiscovery] : []),
      ...(tlogListener ? [tlogListener] : []),
      ...(health ? [health] : []),
      ...(metricsListener ? [metricsListener] : []),
      service(
        "grpc-health",
        () => {
          serving = true;
          updateHealth();
          grpcHealth.setStatus("sigil.agent.v1.AgentAPI", "SERVING");
        },
        () => {
          serving = false;
          grpcHealth.shutdown();
        },
      ),
    ],
    log,
  );
  // A failing start stops those already started, in reverse, and rejects.
  await services.start();

  log.info(
    { trust_domain: trustDomain.name, server_instance: instanceId, agent_api: agentApi.address, admin_socket: adminSocketPath, health: health?.listener?.url, metrics: metricsListener?.listener?.url, oidc_discovery: oidcDiscovery?.listener?.url, transparency_log: tlogListener?.listener?.url },
    "server started",
  );
  let stopped = false;
  return {
    trustDomain,
    serverId,
    agentApiAddress: agentApi.address,
    adminSocketPath,
    datastore: datastore.datastore,
    ca: ca.manager,
    health: health?.listener,
    metricsListener: metricsListener?.listener,
    bundleEndpointUrl: bundleEndpoint?.endpoint?.url,
    oidcDiscovery: oidcDiscovery?.listener,
    tlogListener: tlogListener?.listener,
    log,
    rotateNow: () => rotation.rotateNow(),
    async stop(): Promise<void> {
      if (stopped) return;
      stopped = true;
      await services.stop();
      log.info({}, "server stopped");
    },
  };
}

/**
 * The `k8s-controller` service when `k8s_controller.enabled`, writing through
 * the datastore with the admin API's validation.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming `k8s_controller.cluster`.
 */
function k8sControllerService(
  config: ServerConfig,
  d: { trustDomain: TrustDomain; serverId: string; datastore: DatastoreService; agentApi: AgentApiListener; now: () => Date; log: Logger },
): K8sController | undefined {
  const settings = config.k8s_controller?.enabled ? k8sControllerSettings(config) : undefined;
  if (settings === undefined) return undefined;
  // Made on first use: the datastore opens when its service starts.
  let parents: ReturnType<typeof createParentResolver> | undefined;
  return new K8sController({
    settings,
    trustDomain: d.trustDomain,
    entries: datastoreEntryStore({
      datastore: () => d.datastore.datastore,
      trustDomain: d.trustDomain,
      serverId: d.serverId,
      parents: () => (parents ??= createParentResolver({ datastore: d.datastore.datastore, now: d.now, issuesAgentId: (id) => d.agentApi.issuesAgentId(id) })),
    }),
    log: subsystemLogger(d.log, "k8s_controller"),
  });
}

/**
 * Runs the server until SIGINT/SIGTERM (the `sigil-server run` command), then
 * stops its services in reverse order. The signal is awaited from before the
 * start: one that arrives while services start (or just as "server started"
 * is logged) stops them once the start is done, instead of killing the
 * process half-way; a second signal still kills it.
 */
export async function runServer(config: ServerConfig): Promise<void> {
  const stopSignal = waitForStopSignal();
  const server = await startServer(config);
  const signal = await stopSignal;
  server.log.info({ signal }, "server: shutting down");
  await server.stop();
}
