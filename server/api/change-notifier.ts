/**
 * Pushed change notices (AgentAPI WatchChanges). Each agent may hold one
 * stream; a newer stream of the same agent ends the older one, and the total
 * is bounded. The notifier collects the agents the entry index names as
 * changed (see {@link EntryIndex.onInvalidate}: only the agents a change can
 * concern), and compares the CA's bundle and the tainted authorities (both
 * cheap to compare), on a short tick. It then recomputes the digest of each
 * named watching agent (every watching agent when the bundle or the taint
 * moved): a hash of the index's per-root digests of its entries
 * ({@link EntryIndex.authorizedDigest}), the bundle's epoch and the taint, and
 * pushes a notice only to the agents whose digest changed. The agent then syncs at once; its periodic poll stays
 * as the fallback (and is what carries federated bundle changes).
 *
 * Nothing here reads the datastore: the index follows the database's change
 * feed, so a change made through any server of the cluster reaches the agents
 * that watch this one. The feed's agent events reach {@link ChangeNotifier.agentChanged}:
 * a stream whose agent was evicted or banned, or whose SVID is no longer the
 * agent's current one (renewed, or the agent attested again), is ended at
 * once, as a new call would be refused; the agent opens it again with its
 * current SVID. So is a stream whose SVID chain expired (checked on the
 * tick, by the injected clock): nothing else would end it while the
 * agent's entries stay the same.
 */
import { createHash } from "node:crypto";
import type { Logger } from "../../common/log.js";
import { formatSelector } from "../../common/selector.js";
import { SigilError } from "../../spiffe/errors.js";
import type { ChangeFeed } from "../datastore/change-feed.js";
import type { AttestedAgent } from "../datastore/index.js";
import type { EntryIndex } from "../registration/entry-index.js";
import type { IndexedRecord } from "../registration/entry-index-feed.js";

/** How often the changed agents are recomputed and the bundle compared (ms). */
export const NOTICE_TICK_MS = 50;
/** Default bound on open streams (one per agent). */
export const DEFAULT_MAX_WATCHERS = 100_000;

/** The sending side of one agent's stream. */
export interface NoticeSink {
  /** Sends a notice carrying the digest. */
  send(digest: string): void;
  /** Ends the stream (replaced by a newer one, or the server stops). */
  end(reason: SigilError | undefined): void;
}

interface Watcher {
  readonly agentId: string;
  record: AttestedAgent;
  /** Serial of the SVID the stream was opened with: the record's current one then. */
  readonly serial: string;
  /** The earliest notAfter of the chain the stream was opened with (ms). */
  readonly expiresAt: number;
  readonly sink: NoticeSink;
  digest: string;
}

/** Dependencies of the {@link ChangeNotifier}. */
export interface ChangeNotifierDeps {
  readonly index: EntryIndex<IndexedRecord>;
  /** The CA's current bundle: a new object whenever it changes. */
  readonly bundle: () => unknown;
  /**
   * A key of the tainted authorities (see `canonicalTaint`); when it moves,
   * every agent is sent a notice (each must replace what the taint covers).
   */
  readonly taint?: (() => string) | undefined;
  readonly now: () => Date;
  readonly log: Logger;
  /** Default {@link DEFAULT_MAX_WATCHERS}. */
  readonly maxWatchers?: number;
  /** Default {@link NOTICE_TICK_MS}. */
  readonly tickMs?: number;
}

/** The change notifier; see the module comment. */
export class ChangeNotifier {
  readonly #d: ChangeNotifierDeps;
  readonly #watchers = new Map<string, Watcher>();
  /** Watching agents the index named as changed since the last check. */
  #changed = new Set<string>();
  readonly #unsubscribe: () => void;
  #bundle: unknown;
  #bundleEpoch = 0;
  #taint = "";
  /** The bundle or taint moved since the last check (a watch may have seen it first): every digest is due. */
  #allDue = false;
  /** The earliest `expiresAt` of the streams (ms); a sweep is due once the clock reaches it. */
  #nextExpiry = Infinity;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(deps: ChangeNotifierDeps) {
    this.#d = deps;
    this.#unsubscribe = deps.index.onInvalidate((agents) => {
      // Only watchers: each computed its digest (so the index cached the agent) when it began watching and after each naming, so it is named on every change that concerns it.
      for (const a of agents) if (this.#watchers.has(a)) this.#changed.add(a);
    });
  }

  /** Open streams. */
  get watchers(): number {
    return this.#watchers.size;
  }

  /**
   * Registers an agent's stream and sends it the current digest at once (so
   * a change made while it was away is seen). The stream is ended at
   * `expiresAt`, the earliest notAfter of the client certificate's chain.
   * Returns the unregister function.
   *
   * @throws SigilError `ERR_RESOURCE_EXHAUSTED` past the stream bound, `ERR_UNAVAILABLE` once closed
   */
  watch(agentId: string, record: AttestedAgent, expiresAt: Date, sink: NoticeSink): () => void {
    if (this.#closed) throw new SigilError("ERR_UNAVAILABLE", "watch changes: the server is stopping");
    const previous = this.#watchers.get(agentId);
    if (!previous && this.#watchers.size >= (this.#d.maxWatchers ?? DEFAULT_MAX_WATCHERS)) {
      throw new SigilError("ERR_RESOURCE_EXHAUSTED", `watch changes: the server holds its maximum of ${this.#d.maxWatchers ?? DEFAULT_MAX_WATCHERS} change streams; the agent polls instead`);
    }
    if (previous) {
      this.#watchers.delete(agentId);
      previous.sink.end(new SigilError("ERR_FAILED_PRECONDITION", `watch changes: agent ${agentId} opened a newer change stream`));
    }
    this.#observe();
    const w: Watcher = { agentId, record, serial: record.certSerial, expiresAt: expiresAt.getTime(), sink, digest: this.#digest(agentId, record) };
    this.#watchers.set(agentId, w);
    this.#nextExpiry = Math.min(this.#nextExpiry, w.expiresAt);
    sink.send(w.digest);
    this.#arm();
    return () => {
      if (this.#watchers.get(agentId) === w) this.#watchers.delete(agentId);
    };
  }

  /** True while `agentId` holds a stream. */
  watching(agentId: string): boolean {
    return this.#watchers.has(agentId);
  }

  /**
   * The agent's record changed (`undefined`: deleted). Ends its stream when
   * the agent is gone or banned, or the stream's SVID is no longer its current
   * or renewed one; otherwise keeps the new record (its selectors decide the
   * entries) and pushes a notice if its view changed.
   */
  agentChanged(agentId: string, record: AttestedAgent | undefined): void {
    const w = this.#watchers.get(agentId);
    if (!w) return;
    let reason: SigilError | undefined;
    if (!record) reason = new SigilError("ERR_AGENT_NOT_ATTESTED", `watch changes: ${agentId} is not an attested agent`);
    else if (record.banned) reason = new SigilError("ERR_PERMISSION_DENIED", `watch changes: agent ${agentId} is banned`);
    else if (record.certSerial !== w.serial && record.newCertSerial !== w.serial) {
      reason = new SigilError("ERR_PERMISSION_DENIED", `watch changes: the SVID (serial ${w.serial}) the stream of ${agentId} was opened with is not its current one`);
    }
    if (reason || !record) {
      this.#watchers.delete(agentId);
      w.sink.end(reason);
      return;
    }
    w.record = record;
    const digest = this.#digest(agentId, record);
    if (digest === w.digest) return;
    w.digest = digest;
    w.sink.send(digest);
  }

  /**
   * Ends the streams whose SVID expired, then recomputes the digests of the
   * agents the index named as changed (of every agent when the bundle or the
   * taint moved) and pushes notices to those whose view changed. Returns how
   * many notices were sent.
   */
  check(): number {
    this.#expire();
    this.#observe();
    const all = this.#allDue;
    this.#allDue = false;
    const changed = this.#changed;
    if (!all && changed.size === 0) return 0;
    this.#changed = new Set();
    let sent = 0;
    for (const w of all ? this.#watchers.values() : this.#named(changed)) {
      const digest = this.#digest(w.agentId, w.record);
      if (digest === w.digest) continue;
      w.digest = digest;
      try {
        w.sink.send(digest);
        sent++;
      } catch (e) {
        this.#d.log.warn({ err: e, agent_id: w.agentId }, "watch changes: cannot send a notice");
      }
    }
    return sent;
  }

  /** Ends every stream and stops the tick. */
  close(): void {
    this.#closed = true;
    this.#unsubscribe();
    this.#changed.clear();
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    const all = [...this.#watchers.values()];
    this.#watchers.clear();
    for (const w of all) w.sink.end(new SigilError("ERR_UNAVAILABLE", "watch changes: the server is stopping"));
  }

  /** Ends the streams whose `expiresAt` the clock reached. */
  #expire(): void {
    const now = this.#d.now().getTime();
    if (now < this.#nextExpiry) return;
    let next = Infinity;
    for (const w of [...this.#watchers.values()]) {
      if (now < w.expiresAt) {
        next = Math.min(next, w.expiresAt);
        continue;
      }
      this.#watchers.delete(w.agentId);
      w.sink.end(new SigilError("ERR_PERMISSION_DENIED", `watch changes: the SVID the stream of ${w.agentId} was opened with expired at ${new Date(w.expiresAt).toISOString()}; open it again with the current one`));
    }
    this.#nextExpiry = next;
  }

  /** The watchers among `agentIds`. */
  *#named(agentIds: ReadonlySet<string>): Iterable<Watcher> {
    for (const a of agentIds) {
      const w = this.#watchers.get(a);
      if (w) yield w;
    }
  }

  /** Notes a new bundle or taint: every digest changes, so all are due at the next check. */
  #observe(): void {
    const bundle = this.#d.bundle();
    const taint = this.#d.taint?.() ?? "";
    if (bundle === this.#bundle && taint === this.#taint) return;
    this.#allDue = true;
    if (bundle !== this.#bundle) this.#bundleEpoch++;
    this.#bundle = bundle;
    this.#taint = taint;
  }

  #arm(): void {
    if (this.#timer || this.#closed) return;
    this.#timer = setInterval(() => {
      if (this.#watchers.size === 0) {
        clearInterval(this.#timer);
        this.#timer = undefined;
        return;
      }
      this.check();
    }, this.#d.tickMs ?? NOTICE_TICK_MS);
    this.#timer.unref();
  }

  /**
   * A change detector only (the agent syncs on any notice): the index's key of
   * the agent's entries (its roots' digests, cheap when agents share a node
   * alias), the bundle's epoch and the taint. It does not follow an entry's
   * expiry; the answer the agent then syncs filters expired entries.
   */
  #digest(agentId: string, record: AttestedAgent): string {
    const h = createHash("sha256");
    h.update(this.#d.index.authorizedDigest(agentId, record.selectors.map(formatSelector)));
    h.update(`b${this.#bundleEpoch}`);
    h.update(this.#taint);
    return h.digest("base64url").slice(0, 22);
  }
}

/**
 * Follows the change feed's agent events: a watching agent's stream gets
 * {@link ChangeNotifier.agentChanged} with the record read again, and the
 * entry index forgets an agent it caches once its record is deleted
 * (evicted) or banned, so agents that go away do not stay cached. Returns
 * the unsubscribe function.
 */
export function followAgentEvents(deps: {
  readonly feed: Pick<ChangeFeed, "subscribe">;
  readonly getAgent: (id: string) => Promise<AttestedAgent | undefined>;
  readonly notifier: Pick<ChangeNotifier, "watching" | "agentChanged">;
  readonly index: Pick<EntryIndex<IndexedRecord>, "caches" | "forget">;
  readonly log: Logger;
}): () => void {
  const { notifier, index } = deps;
  return deps.feed.subscribe({
    onEvent: (e) => {
      if (e.kind !== "agent" || (!notifier.watching(e.objectId) && !index.caches(e.objectId))) return;
      deps.getAgent(e.objectId).then(
        (record) => {
          if (!record || record.banned) index.forget(e.objectId);
          notifier.agentChanged(e.objectId, record);
        },
        (err: unknown) => deps.log.warn({ err, agent_id: e.objectId }, "agent api: cannot read a changed agent for its change stream and the entry index"),
      );
    },
  });
}
