/**
 * The sync loop as a service (`sync`): at start the cache gets the stored
 * bundle, one round runs (a failure is logged; the loop retries with
 * backoff), then a round every `sync_interval`; each round keeps the agent
 * SVID current, fetches entries and bundles, and rotates workload SVIDs (see
 * `sync-loop.ts`). Beside the rounds it holds the server's change stream
 * (`change-watch.ts`): a pushed notice runs a round at once. Stopping closes
 * the stream, cancels the server calls in flight and waits for the round in
 * progress to end.
 *
 * Readiness: not ready before the cache holds the bundle and has synced once,
 * nor while the agent cannot keep its identities current on its own
 * (evicted; the reason names the remedy).
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { Service } from "../../common/service.js";
import type { AgentNodeAttestor } from "../../plugins/nodeattestor/types.js";
import { SigilError } from "../../spiffe/errors.js";
import type { NodeIdentity } from "../attestation/node.js";
import type { AgentCache } from "../cache/agent-cache.js";
import type { AgentCacheMetrics } from "../cache/cache-metrics.js";
import type { DeliveryTracker } from "../cache/deliveries.js";
import type { AgentStateStore, LoadedAgentState } from "../storage/agent-state-store.js";
import type { GrpcServerClient } from "./server-client.js";
import { ChangeWatcher } from "./change-watch.js";
import { SyncLoop } from "./sync-loop.js";

/** Dependencies of the {@link SyncService}. */
export interface SyncServiceDeps {
  readonly cache: AgentCache;
  /** The state store service: the stored bundle seeds the cache; a changed bundle is persisted. */
  readonly state: { readonly store: AgentStateStore; readonly loaded: LoadedAgentState };
  readonly server: { readonly client: GrpcServerClient };
  readonly node: { readonly identity: NodeIdentity };
  /** The node attestor: whether an evicted agent may attest again, and else the remedy. */
  readonly attestor: AgentNodeAttestor | undefined;
  readonly clock: Clock;
  readonly metrics: AgentCacheMetrics;
  /** `agent.sync_interval`. */
  readonly intervalMs: number;
  readonly rotationFraction: number;
  readonly rotationJitter: number;
  /** `agent.taint_replacement_batch_size`. */
  readonly taintBatchSize?: number | undefined;
  /** `agent.taint_replacement_spread` (ms). */
  readonly taintSpreadMs?: number | undefined;
  readonly random: () => number;
  /** Do not start the periodic rounds nor the change stream (tests call `syncNow`). */
  readonly manual?: boolean | undefined;
  /** Called whenever the agent's problem appears, changes or clears. */
  readonly onProblem?: ((problem: string | undefined) => void) | undefined;
  /** First deliveries to workloads, reported with each sync. */
  readonly deliveries?: DeliveryTracker | undefined;
  readonly log: Logger;
}

/** The `sync` service; see the module comment. */
export class SyncService implements Service {
  readonly name = "sync";
  readonly #d: SyncServiceDeps;
  #loop: SyncLoop | undefined;
  #watcher: ChangeWatcher | undefined;

  constructor(deps: SyncServiceDeps) {
    this.#d = deps;
  }

  /** The sync loop, once started. */
  get loop(): SyncLoop {
    if (this.#loop === undefined) throw new SigilError("ERR_UNAVAILABLE", "sync: not started");
    return this.#loop;
  }

  /** Why the agent cannot keep its identities current on its own (evicted), or undefined (also before start). */
  get problem(): string | undefined {
    return this.#loop?.problem;
  }

  /** The problem, only while the agent is evicted: nothing new can be had from the server then. */
  get evictedProblem(): string | undefined {
    return this.#loop?.evicted ? this.#loop.problem : undefined;
  }

  async start(): Promise<void> {
    const d = this.#d;
    const bundle = d.state.loaded.bundle;
    if (bundle) d.cache.update({ bundles: [bundle] });
    const loop = new SyncLoop({
      client: d.server.client,
      cache: d.cache,
      clock: d.clock,
      identity: d.node.identity,
      attestor: d.attestor,
      onProblem: d.onProblem,
      store: d.state.store,
      log: d.log,
      metrics: d.metrics,
      intervalMs: d.intervalMs,
      rotationFraction: d.rotationFraction,
      rotationJitter: d.rotationJitter,
      ...(d.taintBatchSize !== undefined ? { taintBatchSize: d.taintBatchSize } : {}),
      ...(d.taintSpreadMs !== undefined ? { taintSpreadMs: d.taintSpreadMs } : {}),
      random: d.random,
      onRound: () => this.#watcher?.follow(),
      deliveries: d.deliveries,
    });
    this.#loop = loop;
    await loop.syncNow();
    if (d.manual !== true) {
      loop.start();
      this.#watcher = new ChangeWatcher({ client: d.server.client, onChange: () => void loop.syncNow(), log: d.log, random: d.random });
      this.#watcher.start();
    }
  }

  /** The change stream, once started (not with `manual`). */
  get watcher(): ChangeWatcher | undefined {
    return this.#watcher;
  }

  async stop(): Promise<void> {
    this.#watcher?.stop();
    // A round waiting on a server that does not answer would hold the stop for the call's whole deadline.
    if (this.#loop !== undefined) this.#d.server.client.close();
    await this.#loop?.stop();
  }

  readiness(): string[] {
    const reasons: string[] = [];
    const problem = this.problem;
    if (problem !== undefined) reasons.push(problem);
    if (!this.#d.cache.ready()) reasons.push("no synced bundle and entries yet");
    return reasons;
  }
}
