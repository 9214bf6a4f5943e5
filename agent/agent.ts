/**
 * The agent's core, without its endpoints: the named services that keep the
 * agent's identities current, built with explicit dependencies.
 * `agent/main.ts` adds the Workload Endpoint and health after them and runs
 * them all as one {@link ServiceGroup}; {@link startAgent} runs the core alone
 * (tests drive its sync rounds).
 *
 * | service | what it does at start |
 * |---|---|
 * | `node-attestor` | nothing: at stop, last, it closes the NodeAttestor plugin the core was built with |
 * | `state-store` | reads `data_dir`: a valid stored agent SVID and bundle make a restart need neither a join token nor the bootstrap source |
 * | `server-connection` | trusts the stored bundle or else the bootstrap source; opens the channel to the server |
 * | `node-attestation` | uses the stored SVID while valid, else attests (waiting out rate-limit hints) |
 * | `sync` | one sync round (a failure is logged; the loop retries with backoff), then one every `sync_interval`: agent SVID renewal, entries and bundles, workload SVID rotation |
 *
 * The SVID cache is no service: it has nothing to start, and the endpoints
 * read it. A server that rate-limits JWT-SVID requests is called again only
 * after its retry hint; an evicted agent is handled by the sync loop (see
 * `sync/sync-loop.ts`).
 */
import path from "node:path";
import type { Clock } from "../common/clock.js";
import { systemClock } from "../common/clock.js";
import { subsystemLogger, type Logger } from "../common/log.js";
import type { Metrics } from "../common/metrics.js";
import { service, ServiceGroup, type Service } from "../common/service.js";
import { createPlugins, PLUGIN_CATALOG } from "../plugins/catalog.js";
import { closePlugins } from "../plugins/descriptor.js";
import type { AgentNodeAttestor } from "../plugins/nodeattestor/types.js";
import { SigilError } from "../spiffe/errors.js";
import { parseTrustDomain, type TrustDomain } from "../spiffe/id.js";
import type { NodeIdentity } from "./attestation/node.js";
import { NodeAttestationService } from "./attestation/node-service.js";
import { AgentCache } from "./cache/agent-cache.js";
import { DeliveryTracker } from "./cache/deliveries.js";
import { AgentCacheMetrics } from "./cache/cache-metrics.js";
import type { AgentConfig } from "./config/schema.js";
import type { AgentStateStore } from "./storage/agent-state-store.js";
import { StateStoreService } from "./storage/state-store-service.js";
import { ServerPushback } from "./sync/pushback.js";
import type { GrpcServerClient } from "./sync/server-client.js";
import { parseHostPort } from "./sync/server-addresses.js";
import { ServerConnectionService } from "./sync/server-connection.js";
import type { SyncLoop } from "./sync/sync-loop.js";
import { SyncService } from "./sync/sync-service.js";
import type { TrustBootstrapDeps } from "./sync/trust-bootstrap.js";

/** Options of {@link startAgent} and {@link createAgentCore}. */
export interface StartAgentOptions {
  readonly clock?: Clock;
  /** The agent's logger (subsystem loggers are derived from it). */
  readonly log: Logger;
  /** Where the agent's metrics are registered. */
  readonly metrics: Metrics;
  /** Bootstrap I/O (tests inject `fetch` for `trust_bundle_url`). */
  readonly bootstrap?: TrustBootstrapDeps;
  /** Uniform random numbers in [0, 1] for rotation jitter (default `Math.random`). */
  readonly random?: () => number;
  /** Do not start the periodic loop (tests drive {@link RunningAgentCore.syncNow}). Default false. */
  readonly manualSync?: boolean;
  /** Called whenever the agent's problem (see {@link RunningAgentCore.problem}) appears, changes or clears. */
  readonly onProblem?: (problem: string | undefined) => void;
  /** Waits between attestation attempts the server rate-limited (default: a timer). */
  readonly sleep?: (ms: number) => Promise<void>;
}

/** The core's services, built and not started. */
export interface AgentCore {
  readonly trustDomain: TrustDomain;
  /** The cache the Workload API and SDS endpoints read. */
  readonly cache: AgentCache;
  /** First deliveries of SVIDs to workloads: the endpoints record them, the sync reports them. */
  readonly deliveries: DeliveryTracker;
  /** Closes the NodeAttestor plugin at stop; first, so it is stopped after every service that uses the plugin. */
  readonly nodeAttestor: Service;
  readonly state: StateStoreService;
  readonly server: ServerConnectionService;
  readonly node: NodeAttestationService;
  readonly sync: SyncService;
  /** The services above, in start order. */
  readonly services: readonly Service[];
}

/** The running agent core. */
export interface RunningAgentCore {
  readonly trustDomain: TrustDomain;
  /** The agent's SPIFFE ID. */
  readonly agentId: string;
  /** The cache the Workload API and SDS endpoints read. */
  readonly cache: AgentCache;
  readonly identity: NodeIdentity;
  readonly syncLoop: SyncLoop;
  readonly client: GrpcServerClient;
  readonly store: AgentStateStore;
  /** Runs one sync round now. */
  syncNow: SyncLoop["syncNow"];
  /** Why the agent cannot keep its identities current on its own (evicted), or undefined. */
  problem(): string | undefined;
  /** Stops the services started with it, in reverse order. */
  stop(): Promise<void>;
}

/** The configured node attestor (the config allows exactly one), or undefined when it has nothing to attest with (no join token). */
function nodeAttestorFrom(config: AgentConfig): AgentNodeAttestor | undefined {
  return createPlugins("agent", PLUGIN_CATALOG.NodeAttestor, config.plugins.NodeAttestor, { joinToken: config.agent.join_token })[0];
}

/** Builds the core's services (nothing is started or read yet). */
export function createAgentCore(config: AgentConfig, options: StartAgentOptions): AgentCore {
  const a = config.agent;
  const clock = options.clock ?? systemClock;
  const log = options.log;
  const random = options.random ?? Math.random;
  const trustDomain = parseTrustDomain(a.trust_domain);
  const metrics = new AgentCacheMetrics(options.metrics);
  const attestor = nodeAttestorFrom(config);
  const nodeAttestor = service("node-attestor", () => undefined, () => closePlugins([attestor], log));

  const state = new StateStoreService({ dataDir: path.resolve(a.data_dir), trustDomain, clock, log });
  const server = new ServerConnectionService({
    servers: a.server_addresses?.map((v) => parseHostPort(v, "agent.server_addresses")) ?? [{ host: a.server_address, port: a.server_port }],
    bootstrap: a,
    bootstrapIo: options.bootstrap,
    state,
    trustDomain,
    clock,
    log,
  });
  const node = new NodeAttestationService({
    attestor,
    state,
    server,
    trustDomain,
    clock,
    rotationFraction: a.rotation_fraction,
    rotationJitter: a.rotation_jitter,
    random,
    sleep: options.sleep,
    log: subsystemLogger(log, "node_attestation"),
  });
  const jwtPushback = new ServerPushback({ clock, random, what: "NewJWTSVID" });
  const cache = new AgentCache({
    trustDomain,
    clock,
    // The cache mints no JWT-SVID before the endpoints start, after every service here.
    mintJwtSvid: (entryId, audience) => {
      const problem = sync.evictedProblem;
      if (problem !== undefined) return Promise.reject(new SigilError("ERR_UNAVAILABLE", `cache: cannot mint a JWT-SVID: ${problem}`));
      return jwtPushback.run(() => server.client.newJwtSvid(entryId, audience));
    },
    metrics,
    log: subsystemLogger(log, "cache"),
  });
  const deliveries = new DeliveryTracker({ clock, log: subsystemLogger(log, "cache"), metrics: options.metrics });
  const sync: SyncService = new SyncService({
    cache,
    state,
    server,
    node,
    attestor,
    clock,
    metrics,
    intervalMs: a.sync_interval,
    rotationFraction: a.rotation_fraction,
    rotationJitter: a.rotation_jitter,
    taintBatchSize: a.taint_replacement_batch_size,
    taintSpreadMs: a.taint_replacement_spread,
    random,
    manual: options.manualSync,
    onProblem: options.onProblem,
    deliveries,
    log: subsystemLogger(log, "sync"),
  });
  return { trustDomain, cache, deliveries, nodeAttestor, state, server, node, sync, services: [nodeAttestor, state, server, node, sync] };
}

/** The running view of a started core; `stop` is what stops it. */
export function runningAgentCore(core: AgentCore, stop: () => Promise<void>): RunningAgentCore {
  const identity = core.node.identity;
  const syncLoop = core.sync.loop;
  return {
    trustDomain: core.trustDomain,
    agentId: identity.current()?.spiffeId ?? "",
    cache: core.cache,
    identity,
    syncLoop,
    client: core.server.client,
    store: core.state.store,
    syncNow: () => syncLoop.syncNow(),
    problem: () => core.sync.problem,
    stop,
  };
}

/**
 * Builds and starts the agent core; resolves after attestation (or loading the
 * stored SVID) and the first sync attempt. A failing start stops the services
 * already started.
 *
 * @throws SigilError when there is no usable agent SVID and attestation fails
 *   (no join token, a used one, the server unreachable), or the bootstrap bundle cannot be read
 */
export async function startAgent(config: AgentConfig, options: StartAgentOptions): Promise<RunningAgentCore> {
  const core = createAgentCore(config, options);
  const services = new ServiceGroup(core.services, options.log);
  await services.start();
  return runningAgentCore(core, () => services.stop());
}
