/**
 * The agent's core, without its endpoints: persisted state, trust bootstrap,
 * the server connection, node attestation, the SVID cache and the sync loop,
 * composed with explicit dependencies. `agent/main.ts` plugs the returned
 * cache into the Workload API endpoint.
 *
 * Start-up: load `data_dir` (a valid stored SVID and bundle make a restart
 * need neither a join token nor the bootstrap source), trust the stored bundle
 * or else the bootstrap source, attest when no valid SVID is stored, run one
 * sync round (a failure is logged; the loop retries with backoff), then sync
 * every `sync_interval`. A server that rate-limits attestation or JWT-SVID
 * requests is called again only after its retry hint; an evicted agent is
 * handled by the sync loop (see `sync/sync-loop.ts`).
 */
import path from "node:path";
import type { Clock } from "../common/clock.js";
import { systemClock } from "../common/clock.js";
import { subsystemLogger, type Logger } from "../common/log.js";
import type { Metrics } from "../common/metrics.js";
import { createPlugins, PLUGIN_CATALOG } from "../plugins/catalog.js";
import type { AgentNodeAttestor } from "../plugins/nodeattestor/types.js";
import { SigilError } from "../spiffe/errors.js";
import { parseTrustDomain, type TrustDomain } from "../spiffe/id.js";
import { NodeIdentity } from "./attestation/node.js";
import { AgentCache } from "./cache/agent-cache.js";
import { AgentCacheMetrics } from "./cache/cache-metrics.js";
import type { AgentConfig } from "./config/schema.js";
import { AgentStateStore } from "./storage/agent-state-store.js";
import { retryOnPushback, ServerPushback } from "./sync/pushback.js";
import { createServerClient, type GrpcServerClient } from "./sync/server-client.js";
import { SyncLoop } from "./sync/sync-loop.js";
import { loadBootstrapTrust, type TrustBootstrapDeps } from "./sync/trust-bootstrap.js";

/** Options of {@link startAgent}. */
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
  /** Stops the sync loop and closes the server connection. */
  stop(): Promise<void>;
}

/** The configured node attestor (the config allows exactly one), or undefined when it has nothing to attest with (no join token). */
function nodeAttestorFrom(config: AgentConfig): AgentNodeAttestor | undefined {
  return createPlugins("agent", PLUGIN_CATALOG.NodeAttestor, config.plugins.NodeAttestor, { joinToken: config.agent.join_token })[0];
}

/**
 * Builds and starts the agent core; resolves after attestation (or loading the
 * stored SVID) and the first sync attempt.
 *
 * @throws SigilError when there is no usable agent SVID and attestation fails
 *   (no join token, a used one, the server unreachable), or the bootstrap bundle cannot be read
 */
export async function startAgent(config: AgentConfig, options: StartAgentOptions): Promise<RunningAgentCore> {
  const a = config.agent;
  const clock = options.clock ?? systemClock;
  const log = options.log;
  const trustDomain = parseTrustDomain(a.trust_domain);
  const store = new AgentStateStore(path.resolve(a.data_dir));
  const metrics = new AgentCacheMetrics(options.metrics);

  const loaded = store.load({ trustDomain, now: clock.now() });
  for (const reason of loaded.discarded) log.warn({ data_dir: store.dataDir }, `storage: discarded ${reason}`);

  let roots: readonly Uint8Array[] = loaded.bundle?.x509Authorities ?? [];
  let insecure = false;
  if (roots.length === 0) {
    const trust = await loadBootstrapTrust(a, trustDomain, options.bootstrap);
    if (trust.kind === "roots") {
      roots = trust.roots;
      log.info({ source: trust.source, authorities: roots.length }, "bootstrap: trusting the server with the bootstrap bundle");
    } else {
      insecure = true;
      log.warn({}, "bootstrap: insecure_bootstrap is set: the server will not be authenticated on first contact (development only)");
    }
  }

  const client = createServerClient({
    address: `${a.server_address}:${a.server_port}`,
    trustDomain,
    clock,
    roots,
    insecureBootstrap: insecure,
    log: subsystemLogger(log, "server_client"),
  });
  const random = options.random ?? Math.random;
  const jwtPushback = new ServerPushback({ clock, random, what: "NewJWTSVID" });
  // Assigned below; the cache mints no JWT-SVID before the core has started.
  let syncLoop: SyncLoop | undefined;
  const cache = new AgentCache({
    trustDomain,
    clock,
    mintJwtSvid: (entryId, audience) => {
      const problem = syncLoop?.evicted ? syncLoop.problem : undefined;
      if (problem !== undefined) return Promise.reject(new SigilError("ERR_UNAVAILABLE", `cache: cannot mint a JWT-SVID: ${problem}`));
      return jwtPushback.run(() => client.newJwtSvid(entryId, audience));
    },
    metrics,
    log: subsystemLogger(log, "cache"),
  });
  if (loaded.bundle) cache.update({ bundles: [loaded.bundle] });

  const attestor = nodeAttestorFrom(config);
  const identity = new NodeIdentity({
    client,
    clock,
    attestor,
    store,
    log: subsystemLogger(log, "node_attestation"),
    rotationFraction: a.rotation_fraction,
    rotationJitter: a.rotation_jitter,
    random,
    onAttested: (bundle) => {
      client.setTrustBundle(bundle);
      // Persisted at once, so a restart before the first sync still trusts the server.
      if (!loaded.bundle) store.saveBundle({ trustDomain, x509Authorities: bundle, jwtAuthorities: new Map() });
    },
  });
  try {
    await retryOnPushback(() => identity.start(loaded.svid), {
      what: "node attestation",
      random,
      log: subsystemLogger(log, "node_attestation"),
      ...(options.sleep ? { sleep: options.sleep } : {}),
    });
  } catch (e) {
    client.close();
    throw e;
  }

  const loop = new SyncLoop({
    client,
    cache,
    clock,
    identity,
    attestor,
    ...(options.onProblem ? { onProblem: options.onProblem } : {}),
    store,
    log: subsystemLogger(log, "sync"),
    metrics,
    intervalMs: a.sync_interval,
    rotationFraction: a.rotation_fraction,
    rotationJitter: a.rotation_jitter,
    random,
  });
  syncLoop = loop;
  await loop.syncNow();
  if (options.manualSync !== true) loop.start();

  const agentId = identity.current()?.spiffeId ?? "";
  let stopped = false;
  return {
    trustDomain,
    agentId,
    cache,
    identity,
    syncLoop: loop,
    client,
    store,
    syncNow: () => loop.syncNow(),
    problem: () => loop.problem,
    async stop(): Promise<void> {
      if (stopped) return;
      stopped = true;
      await loop.stop();
      client.close();
    },
  };
}
