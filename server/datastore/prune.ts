/**
 * Pruning (`prune` service): every minute, expired join tokens, issuance
 * records whose credential expired more than `server.issuance_log_retention`
 * ago, and change events older than `server.change_feed.event_retention`, are
 * removed.
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { Service } from "../../common/service.js";
import type { Datastore } from "./datastore.js";

/** How often expired join tokens and long-expired issuance records are pruned. */
export const PRUNE_INTERVAL_MS = 60_000;

/**
 * Removes expired join tokens, and issuance records whose credential expired
 * more than `retentionMs` ago. Failures are logged; the next round tries again.
 */
export async function pruneExpired(datastore: Datastore, now: Date, retentionMs: number, log: Logger, eventRetentionMs?: number): Promise<void> {
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
  if (eventRetentionMs === undefined) return;
  try {
    const removed = await datastore.pruneEvents(new Date(Math.max(0, now.getTime() - eventRetentionMs)));
    if (removed > 0) log.debug({ removed }, "change feed: pruned old change events");
  } catch (err) {
    log.warn({ err }, "datastore: pruning change events failed");
  }
}

/** Dependencies of the {@link PruneJob}. */
export interface PruneJobDeps {
  /** The datastore service, started before this one. */
  readonly datastore: { readonly datastore: Datastore };
  readonly clock: Clock;
  /** `server.issuance_log_retention`. */
  readonly retentionMs: number;
  /** `server.change_feed.event_retention`; change events are kept forever without it. */
  readonly eventRetentionMs?: number;
  readonly log: Logger;
}

/** The `prune` service; see the module comment. */
export class PruneJob implements Service {
  readonly name = "prune";
  readonly #d: PruneJobDeps;
  #timer: NodeJS.Timeout | undefined;

  constructor(deps: PruneJobDeps) {
    this.#d = deps;
  }

  start(): void {
    const { datastore, clock, retentionMs, eventRetentionMs, log } = this.#d;
    const store = datastore.datastore;
    this.#timer = setInterval(() => void pruneExpired(store, clock.now(), retentionMs, log, eventRetentionMs), PRUNE_INTERVAL_MS);
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
