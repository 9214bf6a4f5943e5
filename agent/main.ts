/**
 * The agent's composition root: the core (storage, node attestation, sync
 * loop, SVID cache) plus the Workload API endpoint on its Unix socket, the
 * workload attestors, and optional HTTP health. Explicit dependencies only.
 */
import path from "node:path";
import type { Clock } from "../common/clock.js";
import { systemClock } from "../common/clock.js";
import { waitForStopSignal } from "../common/signals.js";
import { createHealthService } from "../common/health/grpc-health.js";
import { startHealthServer, startMetricsServer, type HttpListener } from "../common/health/http-server.js";
import { createLogger, subsystemLogger, type Logger } from "../common/log.js";
import { Metrics } from "../common/metrics.js";
import { ensureSecureDirectory } from "../common/secure-dir.js";
import { createPlugins, PLUGIN_CATALOG } from "../plugins/catalog.js";
import { parseTrustDomain } from "../spiffe/id.js";
import { startAgent, type RunningAgentCore } from "./agent.js";
import { createCallerAttester } from "./attestation/workload.js";
import { loadAgentConfig } from "./config/load.js";
import type { AgentConfig } from "./config/schema.js";
import { createPeerTracker, startWorkloadEndpoint, type WorkloadEndpoint } from "./endpoints/server.js";
import { createWorkloadApiHandler } from "./endpoints/workload-api/handler.js";

/** Options for tests, the quickstart and embedding. */
export interface StartAgentProcessOptions {
  readonly clock?: Clock;
  readonly logDestination?: { write(line: string): void };
  /** Overrides `agent.join_token`. */
  readonly joinToken?: string;
}

/** A running agent with its Workload API. */
export interface RunningAgent {
  readonly core: RunningAgentCore;
  readonly endpoint: WorkloadEndpoint;
  readonly socketPath: string;
  readonly log: Logger;
  readonly health?: HttpListener | undefined;
  stop(): Promise<void>;
}

/** Builds and starts the agent; resolves once the Workload API socket is listening. */
export async function startAgentProcess(config: AgentConfig, options: StartAgentProcessOptions = {}): Promise<RunningAgent> {
  const a = config.agent;
  const clock = options.clock ?? systemClock;
  const log = createLogger({ level: a.log_level, format: a.log_format, ...(options.logDestination ? { destination: options.logDestination } : {}) });
  const metrics = new Metrics();
  const trustDomain = parseTrustDomain(a.trust_domain);
  const effective: AgentConfig = options.joinToken ? { ...config, agent: { ...a, join_token: options.joinToken } } : config;
  // An unsafe socket directory is refused before attesting, which may spend a single-use join token.
  ensureSecureDirectory(path.dirname(path.resolve(a.socket_path)), 0o755, "workload endpoint");

  // Before the core: an eviction found by the first sync already turns the agent NOT_SERVING, with the remedy.
  const grpcHealth = createHealthService({ "": "SERVING" });
  const onProblem = (problem: string | undefined): void =>
    problem === undefined ? grpcHealth.setStatus("", "SERVING") : grpcHealth.setStatus("", "NOT_SERVING", problem);
  const core = await startAgent(effective, { clock, log: subsystemLogger(log, "agent"), metrics, onProblem });
  const cleanups: (() => Promise<void> | void)[] = [() => core.stop()];
  try {
    // Every configured workload attestor runs on each caller; their selectors are combined.
    const attestors = createPlugins("agent", PLUGIN_CATALOG.WorkloadAttestor, config.plugins.WorkloadAttestor, { log: subsystemLogger(log, "workload_attestor") });

    const peers = createPeerTracker({ maxConnectionsPerUid: a.max_workload_connections_per_uid, log: subsystemLogger(log, "endpoints") });
    const attest = createCallerAttester({
      resolvePeer: (p) => peers.lookup(p),
      attestors,
      timeoutMs: a.workload_attestation_timeout,
      log: subsystemLogger(log, "workload_attestation"),
    });
    const handler = createWorkloadApiHandler({
      cache: core.cache,
      attest,
      trustDomain,
      log: subsystemLogger(log, "workload_api"),
      metrics,
      allowUnauthenticatedVerifiers: a.allow_unauthenticated_verifiers,
      clock,
    });
    const socketPath = path.resolve(a.socket_path);
    const endpoint = await startWorkloadEndpoint({
      socketPath,
      services: [handler],
      peers,
      health: grpcHealth,
      maxCallsPerUid: a.max_workload_calls_per_uid,
      metrics,
      log: subsystemLogger(log, "endpoints"),
    });
    cleanups.push(() => endpoint.close());
    cleanups.push(() => grpcHealth.shutdown());

    let health: HttpListener | undefined;
    const hc = config.health_checks;
    if (hc?.listener_enabled) {
      health = await startHealthServer({
        host: hc.bind_address,
        port: hc.bind_port,
        livePath: hc.live_path,
        readyPath: hc.ready_path,
        metrics,
        readiness: async () => {
          const reasons = [core.problem(), core.cache.ready() ? undefined : "agent: no synced bundle and entries yet"].filter((r) => r !== undefined);
          return { ready: reasons.length === 0, reasons };
        },
      });
      cleanups.push(() => health?.close());
    }
    const prom = config.telemetry?.prometheus;
    if (prom) {
      const m = await startMetricsServer({ host: prom.host, port: prom.port, metrics });
      cleanups.push(() => m.close());
    }
    log.info({ trust_domain: trustDomain.name, socket_path: socketPath, health: health?.url }, "agent started");
    let stopped = false;
    return {
      core,
      endpoint,
      socketPath,
      log,
      health,
      async stop(): Promise<void> {
        if (stopped) return;
        stopped = true;
        for (const c of cleanups.reverse()) await c();
        log.info({}, "agent stopped");
      },
    };
  } catch (e) {
    for (const c of cleanups.reverse()) await c();
    throw e;
  }
}

/** `sigil-agent run`: runs until SIGINT/SIGTERM. */
export async function runAgent(configPath: string, options: { expandEnv?: boolean; joinToken?: string } = {}): Promise<void> {
  const config = loadAgentConfig(configPath, { expandEnv: Boolean(options.expandEnv) });
  const agent = await startAgentProcess(config, options.joinToken ? { joinToken: options.joinToken } : {});
  const signal = await waitForStopSignal();
  agent.log.info({ signal }, "agent: shutting down");
  await agent.stop();
}
