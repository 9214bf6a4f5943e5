/**
 * The agent's composition root: the named services `sigil-agent` is made of,
 * each built with explicit dependencies (clock, logger, metrics, the services
 * it uses), started in order by a {@link ServiceGroup} and stopped in reverse
 * (on SIGTERM, or when a later one fails to start).
 *
 * | service | what it does |
 * |---|---|
 * | `node-attestor` | nothing at start; at stop, last, closes the NodeAttestor plugin (`agent.ts`) |
 * | `socket-directory` | refuses an unsafe Workload API socket directory, before a join token can be spent |
 * | `state-store`, `server-connection`, `node-attestation`, `sync` | the core (`agent.ts`): stored state, the server, the agent's identity, the sync loop and SVID rotation |
 * | `workload-endpoint` | the Workload API (and gRPC health, reflection) on its Unix socket |
 * | `health-listener`, `metrics-listener` | optional HTTP `/live`, `/ready`, `/metrics` |
 *
 * `/ready` is the group's readiness: every service started, and none reports
 * a reason (`sync: no synced bundle and entries yet`, `sync: agent … was
 * evicted; …`). gRPC health on the socket is SERVING unless the agent cannot
 * keep its identities current (evicted): NOT_SERVING with that reason.
 */
import path from "node:path";
import type { Clock } from "../common/clock.js";
import { systemClock } from "../common/clock.js";
import { createHealthService } from "../common/health/grpc-health.js";
import type { HttpListener } from "../common/health/http-server.js";
import { httpListenerServices } from "../common/health/listener-service.js";
import { createLogger, subsystemLogger, type Logger } from "../common/log.js";
import { Metrics } from "../common/metrics.js";
import { ensureSecureDirectory } from "../common/secure-dir.js";
import { service, ServiceGroup } from "../common/service.js";
import { waitForStopSignal } from "../common/signals.js";
import { parseTrustDomain } from "../spiffe/id.js";
import { createAgentCore, runningAgentCore, type RunningAgentCore } from "./agent.js";
import { loadAgentConfig } from "./config/load.js";
import type { AgentConfig } from "./config/schema.js";
import { WorkloadEndpointService } from "./endpoints/endpoint-service.js";
import type { WorkloadEndpoint } from "./endpoints/server.js";

/** Options for tests, the quickstart and embedding. */
export interface StartAgentProcessOptions {
  readonly clock?: Clock;
  readonly logDestination?: { write(line: string): void };
  /** Overrides `agent.join_token`. */
  readonly joinToken?: string;
}

/** A running agent with its Workload API. */
export interface RunningAgent {
  /** The core; its `stop()` stops the whole agent. */
  readonly core: RunningAgentCore;
  readonly endpoint: WorkloadEndpoint;
  readonly socketPath: string;
  readonly log: Logger;
  readonly health?: HttpListener | undefined;
  /** Stops every service, in reverse start order. */
  stop(): Promise<void>;
}

/** Builds the agent's services and starts them; resolves once the Workload API socket is listening (and health, when configured). */
export async function startAgentProcess(config: AgentConfig, options: StartAgentProcessOptions = {}): Promise<RunningAgent> {
  const a = config.agent;
  const clock = options.clock ?? systemClock;
  const log = createLogger({ level: a.log_level, format: a.log_format, ...(options.logDestination ? { destination: options.logDestination } : {}) });
  const metrics = new Metrics();
  const trustDomain = parseTrustDomain(a.trust_domain);
  const socketPath = path.resolve(a.socket_path);
  const effective: AgentConfig = options.joinToken ? { ...config, agent: { ...a, join_token: options.joinToken } } : config;

  // Before the core starts: an eviction found by the first sync already turns the agent NOT_SERVING, with the remedy.
  const grpcHealth = createHealthService({ "": "SERVING" });
  const onProblem = (problem: string | undefined): void =>
    problem === undefined ? grpcHealth.setStatus("", "SERVING") : grpcHealth.setStatus("", "NOT_SERVING", problem);

  const socketDirectory = service("socket-directory", () => ensureSecureDirectory(path.dirname(socketPath), 0o755, "workload endpoint"));
  const core = createAgentCore(effective, { clock, log: subsystemLogger(log, "agent"), metrics, onProblem });
  const endpoint = new WorkloadEndpointService({
    socketPath,
    cache: core.cache,
    deliveries: core.deliveries,
    trustDomain,
    workloadAttestors: config.plugins.WorkloadAttestor,
    attestationTimeoutMs: a.workload_attestation_timeout,
    maxConnectionsPerUid: a.max_workload_connections_per_uid,
    maxCallsPerUid: a.max_workload_calls_per_uid,
    allowUnauthenticatedVerifiers: a.allow_unauthenticated_verifiers,
    sds: {
      disabled: a.sds.disable_sds_api,
      defaultSvidName: a.sds.default_svid_name,
      defaultBundleName: a.sds.default_bundle_name,
      defaultAllBundlesName: a.sds.default_all_bundles_name,
      disableSpiffeCertValidation: a.sds.disable_spiffe_cert_validation,
    },
    health: grpcHealth,
    metrics,
    clock,
    log,
  });
  const http = httpListenerServices(config, { metrics, readiness: () => services.readiness() });

  const services: ServiceGroup = new ServiceGroup([core.nodeAttestor, socketDirectory, core.state, core.server, core.node, core.sync, endpoint, ...http.services], log);
  // A failing start stops those already started, in reverse, and rejects.
  await services.start();

  log.info({ trust_domain: trustDomain.name, socket_path: socketPath, health: http.health?.listener?.url }, "agent started");
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      await services.stop();
      log.info({}, "agent stopped");
    })());
  return {
    core: runningAgentCore(core, stop),
    endpoint: endpoint.endpoint,
    socketPath,
    log,
    health: http.health?.listener,
    stop,
  };
}

/** `sigil-agent run`: runs until SIGINT/SIGTERM, then stops the services in reverse order. */
export async function runAgent(configPath: string, options: { expandEnv?: boolean; joinToken?: string } = {}): Promise<void> {
  const config = loadAgentConfig(configPath, { expandEnv: Boolean(options.expandEnv) });
  const agent = await startAgentProcess(config, options.joinToken ? { joinToken: options.joinToken } : {});
  const signal = await waitForStopSignal();
  agent.log.info({ signal }, "agent: shutting down");
  await agent.stop();
}
