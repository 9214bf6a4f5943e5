/**
 * The agent's one sync loop. Each round:
 *
 * 1. drops expired SVIDs from the cache (never served, whatever the server does);
 * 2. keeps the agent's own SVID current (renewal, or re-attestation once expired);
 * 3. asks the server for the authorized entries and bundles (SyncAuthorized,
 *    with the last revision so an unchanged set costs nothing, and a changed
 *    one is answered as a delta the loop merges into the set it holds);
 * 4. for every entry without an SVID, whose revision changed, or whose SVID
 *    passed its renewal point, generates a P-256 key on the agent and sends
 *    the public keys in batches to BatchNewX509SVID;
 * 5. applies everything to the cache in one update (one notification).
 *
 * Taint: every answer that is not "not modified" carries the tainted
 * authorities. Each cached SVID whose chain runs through one (and the agent's
 * own) is replaced at once instead of at its renewal point, in batches of
 * `taintBatchSize` spread at random over `taintSpreadMs` (see
 * `rotation/taint.ts`); the old SVID is served until its replacement is in
 * the cache. The agent's own SVID is renewed no later than the first batch,
 * so a revoke made once the workloads are replaced never finds the agent
 * still authenticating under the revoked key (it could no longer sync).
 * Cached JWT-SVIDs signed by a tainted key are dropped.
 *
 * Each sync also reports the SVIDs first handed to workloads since the last
 * successful one (`cache/deliveries.ts`), up to {@link DEFAULT_DELIVERIES_PER_SYNC}
 * a call; the rest go with the next rounds.
 *
 * Rounds run every `sync_interval`, and at once when the server pushes a
 * change notice (`change-watch.ts` calls {@link SyncLoop.syncNow}); after failures the delay doubles up to
 * min(8m, 48 × interval), and a server that rate-limits the agent is not
 * called again before its retry hint has passed. While the server is away the
 * cache keeps serving the SVIDs that are still valid.
 *
 * Eviction: when the server answers that it no longer knows the agent (an
 * operator ran `sigil-server agent evict`, or its record was lost), the agent
 * deletes its stored SVID and attests again if its node attestor can do so
 * without operator input. If it cannot (a join token works once), the loop
 * stops calling the server, {@link SyncLoop.problem} names the remedy (for
 * `/ready`, `healthcheck` and the log), and the cache keeps serving the SVIDs
 * it holds until they expire.
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { AgentNodeAttestor } from "../../plugins/nodeattestor/types.js";
import { isSigilError, SigilError } from "../../spiffe/errors.js";
import { generateKeyPair } from "../../spiffe/signer.js";
import { parseX509Svid } from "../../spiffe/x509/svid.js";
import { decodeCertificate } from "../../spiffe/x509/decode-certificate.js";
import type { NodeIdentity } from "../attestation/node.js";
import type { AgentCache, CachedSvidState } from "../cache/agent-cache.js";
import type { AgentCacheMetrics } from "../cache/cache-metrics.js";
import { DEFAULT_DELIVERIES_PER_SYNC, type DeliveryTracker } from "../cache/deliveries.js";
import type { CachedEntry } from "../cache/types.js";
import { nextSyncDelayMs } from "../rotation/backoff.js";
import { renewAt } from "../rotation/renew-at.js";
import type { AgentStateStore } from "../storage/agent-state-store.js";
import { ServerPushback } from "./pushback.js";
import type { ServerClient, SyncedEntry, SyncResult, TaintSet, X509SvidParams } from "./server-client.js";
import { DEFAULT_TAINT_BATCH_SIZE, DEFAULT_TAINT_SPREAD_MS, lastPlannedAt, NO_TAINT, planTaintReplacements, sameTaint, TaintMatcher, type TaintedItem } from "../rotation/taint.js";

/** Most X509-SVIDs requested in one BatchNewX509SVID call (SPIRE starts at 500). */
export const DEFAULT_SVID_BATCH_SIZE = 500;

/** Options of {@link SyncLoop}. */
export interface SyncLoopOptions {
  readonly client: ServerClient;
  readonly cache: AgentCache;
  readonly clock: Clock;
  /** Keeps the agent SVID current each round; omitted when the test drives it. */
  readonly identity?: NodeIdentity | undefined;
  /** The node attestor `identity` attests with: whether an evicted agent may attest again, and else the remedy. */
  readonly attestor?: AgentNodeAttestor | undefined;
  /** Called whenever {@link SyncLoop.problem} changes. */
  readonly onProblem?: ((problem: string | undefined) => void) | undefined;
  /** Persists the own bundle whenever a sync changes it. */
  readonly store?: AgentStateStore | undefined;
  readonly log?: Logger | undefined;
  readonly metrics?: AgentCacheMetrics | undefined;
  /** Delay between successful rounds (`sync_interval`). */
  readonly intervalMs: number;
  /** Fraction of an SVID's lifetime after which it is renewed (default 0.5). */
  readonly rotationFraction?: number;
  /** Jitter of the renewal point (default 0.1). */
  readonly rotationJitter?: number;
  /** Uniform random numbers in [0, 1] (default `Math.random`). */
  readonly random?: () => number;
  /** Default {@link DEFAULT_SVID_BATCH_SIZE}. */
  readonly batchSize?: number;
  /** Ask for delta answers (default true). */
  readonly acceptDelta?: boolean;
  /** Called after every round (the change watch follows the client's current server). */
  readonly onRound?: ((outcome: SyncOutcome) => void) | undefined;
  /** Most SVIDs per request when replacing under a taint (default {@link DEFAULT_TAINT_BATCH_SIZE}). */
  readonly taintBatchSize?: number;
  /** Window over which taint replacement batches are spread at random (ms, default {@link DEFAULT_TAINT_SPREAD_MS}). */
  readonly taintSpreadMs?: number;
  /** First deliveries to workloads: reported with each sync, forgotten once it succeeds. */
  readonly deliveries?: Pick<DeliveryTracker, "pending" | "acknowledge"> | undefined;
}

/**
 * Whether a server answer means this agent is no longer known (evicted, or its
 * record lost): the server names it `ERR_AGENT_NOT_ATTESTED` (PermissionDenied
 * with that code in its `sigil-error-code` trailer). An unreachable or
 * restarting server, a ban, or a refused SVID is not eviction.
 */
export function isEvictionError(e: unknown): boolean {
  return isSigilError(e, "ERR_AGENT_NOT_ATTESTED");
}

/** The agent's standing with the server. */
type Standing =
  | { readonly kind: "attested" }
  /** Evicted; the node attestor can attest again on its own. */
  | { readonly kind: "reattest"; readonly agentId: string }
  /** Evicted; only an operator can bring the agent back. */
  | { readonly kind: "evicted"; readonly agentId: string; readonly error: SigilError };

/** What one round did. */
export interface SyncOutcome {
  /** True when the server answered the sync and every batch call. */
  readonly ok: boolean;
  /** The round's failure, when `ok` is false. */
  readonly error?: unknown;
  /** The sync said nothing changed since the last revision. */
  readonly notModified: boolean;
  /** SVIDs obtained this round. */
  readonly rotated: number;
  /** SVIDs requested but not obtained this round. */
  readonly failed: number;
  /** What happened to the agent's own SVID. */
  readonly agentSvid: "none" | "renewed" | "reattested" | "error";
}

/** Why an entry needs a new SVID now, or undefined when it does not. */
export type RenewalReason = "new" | "entry-changed" | "due" | "expired" | "tainted";

/**
 * Whether an entry's SVID must be (re)issued at `now`: none yet, issued for an
 * older entry revision, expired, or past its renewal point. Pure.
 */
export function renewalReason(entry: CachedEntry, state: CachedSvidState | undefined, now: Date, taintedAt?: Date): RenewalReason | undefined {
  if (!state) return "new";
  if (state.entryRevision !== entry.revision) return "entry-changed";
  if (state.svid.notAfter.getTime() <= now.getTime()) return "expired";
  if (now.getTime() >= state.renewAt.getTime()) return "due";
  if (taintedAt !== undefined && now.getTime() >= taintedAt.getTime()) return "tainted";
  return undefined;
}

/** The agent's sync loop. */
export class SyncLoop {
  readonly #o: SyncLoopOptions;
  #revision = "";
  /** The entries of `#revision`, by ID: a delta answer is merged into them. */
  #entries = new Map<string, SyncedEntry>();
  #failures = 0;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<SyncOutcome> | undefined;
  #queued: Promise<SyncOutcome> | undefined;
  #started = false;
  #lastSuccess: Date | undefined;
  #standing: Standing = { kind: "attested" };
  readonly #pushback: ServerPushback;
  /** The tainted authorities of the last answer that carried them. */
  #taint: TaintSet = NO_TAINT;
  /** SVIDs (cached objects, the agent's own included) already judged under `#taint`: each is planned at most once. */
  #taintJudged = new WeakSet<object>();
  /** Covered entries and when their replacement is asked for. */
  readonly #taintPlan = new Map<string, Date>();
  /** Entries replaced under `#taint`: a server still signing with a tainted key must not start a loop. */
  readonly #taintReplaced = new Set<string>();
  #taintMatcher: { readonly authorities: readonly Uint8Array[]; readonly matcher: TaintMatcher } | undefined;
  #replaceTimer: NodeJS.Timeout | undefined;

  constructor(options: SyncLoopOptions) {
    this.#o = options;
    this.#pushback = new ServerPushback({ clock: options.clock, what: "sync", ...(options.random ? { random: options.random } : {}) });
  }

  /**
   * Why the agent cannot keep its identities current on its own, or undefined:
   * evicted and waiting to attest again, or evicted with the remedy an operator
   * must apply. For `/ready` and the health service.
   */
  get problem(): string | undefined {
    const s = this.#standing;
    if (s.kind === "attested") return undefined;
    if (s.kind === "reattest") return `agent: ${s.agentId} was evicted by the server; attesting again`;
    return s.error.message.replace(/^sync: /, "");
  }

  /** True once the agent was evicted and its node attestor cannot attest again: the server is no longer called. */
  get evicted(): boolean {
    return this.#standing.kind === "evicted";
  }

  /** Until when the server asked the agent to wait before syncing or requesting SVIDs again. */
  get retryAfter(): Date | undefined {
    return this.#pushback.until;
  }

  /** The delay before the next periodic round: the backoff, and at least what the server asked for. */
  get nextDelayMs(): number {
    if (this.#standing.kind === "evicted") return this.#o.intervalMs;
    return Math.max(nextSyncDelayMs(this.#o.intervalMs, this.#failures), this.#pushback.remainingMs());
  }

  /** Consecutive failed rounds (0 after a success). */
  get consecutiveFailures(): number {
    return this.#failures;
  }

  /** When the last round succeeded. */
  get lastSuccess(): Date | undefined {
    return this.#lastSuccess;
  }

  /** Starts periodic rounds; the first one runs at once. */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#schedule(0);
  }

  /** Stops the periodic rounds and waits for a running one to finish. */
  async stop(): Promise<void> {
    this.#started = false;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#replaceTimer) clearTimeout(this.#replaceTimer);
    this.#replaceTimer = undefined;
    await this.#queued?.catch(() => undefined);
    await this.#running?.catch(() => undefined);
  }

  /**
   * Runs a round now. Rounds never overlap: a call during a round runs one more
   * round right after it (callers in the meantime share that one).
   */
  syncNow(): Promise<SyncOutcome> {
    if (!this.#running) {
      this.#running = this.#round().then((outcome) => {
        this.#o.onRound?.(outcome);
        return outcome;
      }).finally(() => {
        this.#running = undefined;
        this.#armReplacement();
      });
      return this.#running;
    }
    this.#queued ??= this.#running.then(
      () => this.#afterQueue(),
      () => this.#afterQueue(),
    );
    return this.#queued;
  }

  #afterQueue(): Promise<SyncOutcome> {
    this.#queued = undefined;
    return this.syncNow();
  }

  /** SVIDs planned for replacement under a taint and not replaced yet (for tests and `/ready` detail). */
  get pendingTaintReplacements(): number {
    return this.#taintPlan.size;
  }

  /**
   * Runs a replacement round at the earliest planned taint replacement (or
   * the agent SVID's moved renewal point). It skips the sync call: a batch
   * spread costs the server signatures, not syncs.
   */
  #armReplacement(): void {
    if (this.#replaceTimer) clearTimeout(this.#replaceTimer);
    this.#replaceTimer = undefined;
    if (!this.#started || this.#standing.kind === "evicted") return;
    let earliest = Infinity;
    for (const at of this.#taintPlan.values()) earliest = Math.min(earliest, at.getTime());
    const identity = this.#o.identity;
    // A renewal point already passed failed in the last round: the sync schedule (with its backoff) retries it, not a busy loop here.
    const ownAt = identity && this.#ownTaintRenewal !== undefined && identity.current() === this.#ownTaintRenewal ? identity.renewAt.getTime() : Infinity;
    if (ownAt > this.#o.clock.now().getTime()) earliest = Math.min(earliest, ownAt);
    if (earliest === Infinity) return;
    // Not before the server's retry hint: the round would only wait for it.
    const delay = Math.max(0, earliest - this.#o.clock.now().getTime(), this.#pushback.remainingMs());
    this.#replaceTimer = setTimeout(() => {
      this.#replaceTimer = undefined;
      if (this.#running) return; // that round re-arms when it ends
      this.#running = this.#round("replace").then((outcome) => {
        this.#o.onRound?.(outcome);
        return outcome;
      }).finally(() => {
        this.#running = undefined;
        this.#armReplacement();
      });
    }, delay);
  }

  #schedule(delayMs: number): void {
    if (!this.#started) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.syncNow().then(
        () => this.#schedule(this.nextDelayMs),
        () => this.#schedule(this.nextDelayMs),
      );
    }, delayMs);
  }

  async #round(kind: "sync" | "replace" = "sync"): Promise<SyncOutcome> {
    const { cache, client, clock, log } = this.#o;
    cache.dropExpired();
    const standing = this.#standing;
    // Evicted for good: the cache serves what it holds; calling the server cannot help.
    if (standing.kind === "evicted") return idle(standing.error);
    const waiting = this.#pushback.waiting();
    if (waiting) return idle(waiting);

    let agentSvid: SyncOutcome["agentSvid"] = "none";
    if (standing.kind === "reattest") {
      const failed = await this.#reattest(standing.agentId);
      if (failed) return failed;
      agentSvid = "reattested";
    } else {
      this.#ownBeforeWorkloads();
      const maintained = await this.#maintainIdentity();
      if (typeof maintained === "object") return maintained;
      agentSvid = maintained;
    }

    if (kind === "replace") {
      const { rotated, failed, error } = await this.#rotate();
      if (error !== undefined && isEvictionError(error)) return this.#evicted(error, agentSvid);
      if (error !== undefined) return this.#failed(error, agentSvid, { rotated, failed, notModified: true });
      return { ok: true, notModified: true, rotated, failed, agentSvid };
    }

    let res;
    const deliveries = this.#o.deliveries?.pending(DEFAULT_DELIVERIES_PER_SYNC) ?? [];
    try {
      res = await client.sync(this.#revision, this.#o.acceptDelta ?? true, deliveries);
    } catch (e) {
      if (isEvictionError(e)) return this.#evicted(e, agentSvid);
      return this.#failed(e, agentSvid);
    }
    // The server took them: a report is never sent twice by choice (a lost answer may repeat it; the server ignores repeats).
    if (deliveries.length > 0) this.#o.deliveries?.acknowledge(deliveries);
    if (!res.notModified) {
      const entries = this.#merge(res);
      const own = res.bundles[0];
      if (own) {
        try {
          client.setTrustBundle(own.x509Authorities);
        } catch (e) {
          return this.#failed(e, agentSvid);
        }
      }
      const bundlesChanged = own !== undefined && this.#ownBundleChanged(own);
      cache.update({ entries, ...(res.bundles.length > 0 ? { bundles: res.bundles } : {}), synced: true });
      if (own && bundlesChanged && this.#o.store) {
        try {
          this.#o.store.saveBundle(own);
        } catch (e) {
          log?.error({ err: e }, "sync: cannot persist the trust bundle");
        }
      }
      // Only now: an answer not applied must not become the base of the next delta.
      this.#entries = new Map(entries.map((e) => [e.id, e]));
      this.#revision = res.revision;
    } else {
      cache.update({ synced: true });
    }
    if (res.taint) this.#applyTaint(res.taint);
    this.#planTaint();
    // Tried at most once a round: a renewal that failed above waits for the next round.
    if (agentSvid === "none" && this.#ownBeforeWorkloads()) {
      const maintained = await this.#maintainIdentity();
      if (typeof maintained === "object") return maintained;
      agentSvid = maintained;
    }

    const { rotated, failed, error } = await this.#rotate();
    if (error !== undefined && isEvictionError(error)) return this.#evicted(error, agentSvid);
    if (error !== undefined) return this.#failed(error, agentSvid, { rotated, failed, notModified: res.notModified });
    this.#failures = 0;
    this.#lastSuccess = clock.now();
    this.#o.metrics?.syncs.inc({ result: "success" });
    return { ok: true, notModified: res.notModified, rotated, failed, agentSvid };
  }

  /** Takes a new taint set: SVIDs judged under the old one are judged again; tainted JWT-SVIDs are dropped. */
  #applyTaint(taint: TaintSet): void {
    if (sameTaint(taint, this.#taint)) return;
    this.#taint = taint;
    this.#taintJudged = new WeakSet();
    this.#taintPlan.clear();
    this.#taintReplaced.clear();
    this.#taintMatcher = undefined;
    const dropped = this.#o.cache.setTaintedJwtKeys(taint.jwtKeyIds);
    if (dropped > 0) this.#o.metrics?.taintJwtDropped.inc(dropped);
    this.#o.log?.warn(
      { tainted_x509_authorities: [...taint.x509SpkiSha256], tainted_jwt_keys: [...taint.jwtKeyIds], jwt_svids_dropped: dropped },
      "sync: the server reports tainted authorities; replacing the SVIDs they signed",
    );
  }

  /**
   * Plans the replacement of every SVID not judged yet under the current
   * taint whose chain runs through a tainted authority, and moves the agent
   * SVID's renewal point when it is covered.
   */
  #planTaint(): void {
    const { cache, clock, identity, log } = this.#o;
    if (this.#taint.x509SpkiSha256.size === 0) return;
    let authorities: readonly Uint8Array[] = [];
    try {
      authorities = cache.bundles().own.x509Authorities;
    } catch {
      // No bundle yet: intermediates in the chains still identify a tainted CA.
    }
    if (this.#taintMatcher?.authorities !== authorities) this.#taintMatcher = { authorities, matcher: new TaintMatcher(this.#taint.x509SpkiSha256, authorities) };
    const matcher = this.#taintMatcher.matcher;
    const now = clock.now();
    const random = this.#o.random ?? Math.random;
    const spreadMs = this.#o.taintSpreadMs ?? DEFAULT_TAINT_SPREAD_MS;
    const covered: TaintedItem[] = [];
    for (const entry of cache.entries()) {
      const state = cache.svidState(entry.id);
      if (!state || this.#taintJudged.has(state.svid) || this.#taintReplaced.has(entry.id)) continue;
      this.#taintJudged.add(state.svid);
      if (matcher.covers(state.svid.chain)) covered.push({ id: entry.id, notAfter: state.svid.notAfter });
    }
    if (covered.length > 0) {
      const plan = planTaintReplacements(covered, now, { batchSize: this.#o.taintBatchSize ?? DEFAULT_TAINT_BATCH_SIZE, spreadMs }, random);
      for (const [id, at] of plan) this.#taintPlan.set(id, at);
      log?.info({ svids: covered.length, last_request_at: lastPlannedAt(plan)?.toISOString() }, "sync: X509-SVIDs under a tainted authority; replacing them now (the old ones are served until then)");
    }
    const own = identity?.current();
    if (own && !this.#taintJudged.has(own)) {
      this.#taintJudged.add(own);
      if (matcher.covers(own.chain)) {
        const at = new Date(now.getTime() + Math.floor(Math.min(Math.max(random(), 0), 1) * spreadMs));
        identity?.renewBy(at);
        this.#ownTaintRenewal = own;
        log?.info({ agent_id: own.spiffeId, renew_at: at.toISOString() }, "sync: the agent SVID is under a tainted authority; renewing it now");
      }
    }
  }

  /**
   * Renews the agent SVID (when due) through {@link NodeIdentity.maintain}.
   * Returns what happened to it, or the round's outcome when the round must
   * end here (evicted, or no valid agent SVID left to sync with).
   */
  async #maintainIdentity(): Promise<SyncOutcome["agentSvid"] | SyncOutcome> {
    const identity = this.#o.identity;
    if (!identity) return "none";
    try {
      const before = identity.current();
      const done = await identity.maintain();
      if (done !== "none" && before !== undefined && before === this.#ownTaintRenewal) {
        this.#ownTaintRenewal = undefined;
        this.#o.metrics?.taintReplacements.inc({ svid: "agent" });
      }
      return done;
    } catch (e) {
      if (isEvictionError(e)) return this.#evicted(e, "error");
      this.#o.log?.error({ err: e }, "sync: cannot renew the agent SVID");
      // An expired agent SVID cannot sync at all; a valid one still can.
      const current = identity.current();
      if (!current || current.notAfter.getTime() <= this.#o.clock.now().getTime()) return this.#failed(e, "error");
      return "error";
    }
  }

  /**
   * Brings the agent SVID's taint renewal forward to now when one of its
   * workloads' taint replacements is due: the agent's own SVID is replaced no
   * later than the first workload SVID under the same tainted authority. An
   * operator who revokes the authority once the workloads have their
   * replacements would otherwise cut off an agent still authenticating with
   * an SVID under it: it could no longer sync, and would keep serving the
   * revoked key in its bundles. True when the taint renewal is due now.
   */
  #ownBeforeWorkloads(): boolean {
    const identity = this.#o.identity;
    if (!identity || this.#ownTaintRenewal === undefined || identity.current() !== this.#ownTaintRenewal) return false;
    const now = this.#o.clock.now().getTime();
    if (identity.renewAt.getTime() <= now) return true;
    for (const at of this.#taintPlan.values()) {
      if (at.getTime() > now) continue;
      identity.renewBy(new Date(now));
      return true;
    }
    return false;
  }

  /** The agent SVID a taint moved the renewal of, until it is renewed. */
  #ownTaintRenewal: object | undefined;

  /** The full entry set after `res`: its entries, or the held ones with its delta applied. */
  #merge(res: SyncResult): SyncedEntry[] {
    const next = res.delta ? new Map(this.#entries) : new Map<string, SyncedEntry>();
    if (res.delta) for (const id of res.delta.removedEntryIds) next.delete(id);
    for (const e of res.entries) next.set(e.id, e);
    return [...next.values()];
  }

  #ownBundleKey = "";
  #ownBundleChanged(own: { x509Authorities: readonly Uint8Array[]; sequenceNumber?: bigint }): boolean {
    const key = `${own.sequenceNumber ?? ""}|${own.x509Authorities.map((d) => Buffer.from(d).toString("base64")).join(",")}`;
    if (key === this.#ownBundleKey) return false;
    this.#ownBundleKey = key;
    return true;
  }

  #failed(error: unknown, agentSvid: SyncOutcome["agentSvid"], partial: { rotated?: number; failed?: number; notModified?: boolean } = {}): SyncOutcome {
    this.#failures++;
    this.#o.metrics?.syncs.inc({ result: "error" });
    const pushedBack = this.#pushback.note(error) !== undefined;
    const away = isSigilError(error, "ERR_UNAVAILABLE");
    const valid = this.#o.cache.svidCount;
    const fields = { err: error, consecutive_failures: this.#failures, cached_svids: valid, next_attempt_ms: this.nextDelayMs };
    if (pushedBack) this.#o.log?.warn(fields, "sync: the server is rate limiting this agent; waiting as it asked before calling it again");
    else if (away) this.#o.log?.warn(fields, "sync: the server is unreachable; serving cached SVIDs while they are valid");
    else this.#o.log?.error(fields, "sync: round failed");
    return { ok: false, error, notModified: partial.notModified ?? false, rotated: partial.rotated ?? 0, failed: partial.failed ?? 0, agentSvid };
  }

  #setStanding(next: Standing): void {
    const before = this.problem;
    this.#standing = next;
    const after = this.problem;
    if (after !== before) this.#o.onProblem?.(after);
  }

  /**
   * The server no longer knows the agent: its stored SVID is deleted at once
   * (it can never work again), then the agent attests again when its node
   * attestor can, else it stops calling the server and names the remedy.
   */
  async #evicted(error: unknown, agentSvid: SyncOutcome["agentSvid"]): Promise<SyncOutcome> {
    const { identity, attestor, store, log } = this.#o;
    const agentId = identity?.current()?.spiffeId ?? "the agent";
    try {
      store?.clearSvid();
    } catch (e) {
      log?.error({ err: e }, "sync: cannot delete the stored agent SVID");
    }
    this.#revision = "";
    this.#entries = new Map();
    // Refused right after attesting again: do not loop; the next round tries again.
    if (agentSvid !== "reattested" && identity && attestor?.canReattest?.() === true) {
      log?.warn({ err: error, agent_id: agentId, attestation_type: attestor.name }, "sync: agent was evicted; deleted its stored SVID and attesting again");
      this.#setStanding({ kind: "reattest", agentId });
      return this.#round();
    }
    if (agentSvid === "reattested") return this.#failed(error, "error");
    return this.#giveUp(agentId, error);
  }

  /** Attests again after an eviction; returns the failed outcome, or undefined once attested. */
  async #reattest(agentId: string): Promise<SyncOutcome | undefined> {
    const { identity, attestor, log } = this.#o;
    if (!identity || attestor?.canReattest?.() !== true) return this.#giveUp(agentId, undefined);
    try {
      await identity.attest();
    } catch (e) {
      return this.#failed(e, "error");
    }
    log?.info({ agent_id: identity.current()?.spiffeId, previous_agent_id: agentId, attestation_type: attestor.name }, "sync: agent attested again after its eviction");
    this.#setStanding({ kind: "attested" });
    return undefined;
  }

  #giveUp(agentId: string, cause: unknown): SyncOutcome {
    const remedy = this.#o.attestor?.reattestRemedy ?? "the node attestor cannot attest again on its own; restart the agent once it can";
    const error = new SigilError("ERR_PERMISSION_DENIED", `sync: agent ${agentId} was evicted; ${remedy}`, { cause });
    this.#failures++;
    this.#o.metrics?.syncs.inc({ result: "error" });
    this.#o.log?.error(
      { err: cause, agent_id: agentId, cached_svids: this.#o.cache.svidCount },
      `sync: agent was evicted; ${remedy}; its stored SVID is deleted, and the SVIDs it holds are served until they expire`,
    );
    this.#setStanding({ kind: "evicted", agentId, error });
    return idle(error, "error");
  }

  async #rotate(): Promise<{ rotated: number; failed: number; error?: unknown }> {
    const { cache, client, clock, log, metrics } = this.#o;
    const now = clock.now();
    const due: { entry: CachedEntry; reason: RenewalReason }[] = [];
    const tainted: { entry: CachedEntry; reason: RenewalReason }[] = [];
    for (const entry of cache.entries()) {
      const reason = renewalReason(entry, cache.svidState(entry.id), now, this.#taintPlan.get(entry.id));
      if (reason === "tainted") tainted.push({ entry, reason });
      else if (reason) due.push({ entry, reason });
    }
    // Entries gone from the cache, or renewed on their own meanwhile, leave the plan.
    for (const id of this.#taintPlan.keys()) {
      const state = cache.svidState(id);
      if (!state || !this.#taintJudged.has(state.svid)) this.#taintPlan.delete(id);
    }
    if (due.length === 0 && tainted.length === 0) return { rotated: 0, failed: 0 };
    const chunks = [...chunked(due, this.#o.batchSize ?? DEFAULT_SVID_BATCH_SIZE), ...chunked(tainted, this.#o.taintBatchSize ?? DEFAULT_TAINT_BATCH_SIZE)];
    let rotated = 0;
    let failed = 0;
    let error: unknown;
    for (const part of chunks) {
      // The server asked to wait: the rest is requested once the hint has passed.
      if (this.#pushback.until) break;
      const chunk = part.map((d) => ({ ...d, ...generateKeyPair("ec-p256") }));
      const params: X509SvidParams[] = chunk.map((c) => ({
        entryId: c.entry.id,
        publicKey: new Uint8Array(c.publicKey.export({ format: "der", type: "spki" })),
      }));
      let results;
      try {
        results = await client.batchNewX509Svid(params);
      } catch (e) {
        failed += chunk.length;
        metrics?.rotations.inc({ result: "error" }, chunk.length);
        error = e;
        break;
      }
      const svids = new Map<string, CachedSvidState>();
      chunk.forEach((d, k) => {
        const r = results[k];
        const privateKey = d.privateKey;
        if (!r) return;
        if (!r.ok) {
          failed++;
          metrics?.rotations.inc({ result: "error" });
          log?.warn({ entry_id: d.entry.id, spiffe_id: d.entry.spiffeId, code: r.code, reason: d.reason }, `sync: the server did not sign an X509-SVID: ${r.message}`);
          return;
        }
        try {
          const pkcs8 = new Uint8Array(privateKey.export({ format: "der", type: "pkcs8" }));
          const parsed = parseX509Svid(r.chain, pkcs8);
          if (parsed.id.toString() !== d.entry.spiffeId) throw new Error(`the SVID is for ${parsed.id.toString()}, the entry names ${d.entry.spiffeId}`);
          const leaf = decodeCertificate(parsed.certificateDers[0] as Uint8Array);
          svids.set(d.entry.id, {
            svid: { chain: parsed.certificateDers, privateKey, privateKeyPkcs8: pkcs8, notBefore: leaf.notBefore, notAfter: leaf.notAfter },
            entryRevision: d.entry.revision,
            renewAt: renewAt(leaf.notBefore, leaf.notAfter, this.#o.rotationFraction ?? 0.5, this.#o.rotationJitter ?? 0.1, (this.#o.random ?? Math.random)()),
          });
          rotated++;
          metrics?.rotations.inc({ result: "success" });
          if (this.#taintPlan.delete(d.entry.id)) {
            this.#taintReplaced.add(d.entry.id);
            metrics?.taintReplacements.inc({ svid: "workload" });
          }
          log?.debug({ entry_id: d.entry.id, spiffe_id: d.entry.spiffeId, reason: d.reason, expires_at: leaf.notAfter.toISOString() }, "sync: X509-SVID obtained");
        } catch (e) {
          failed++;
          metrics?.rotations.inc({ result: "error" });
          log?.error({ err: e, entry_id: d.entry.id }, "sync: the server returned an unusable X509-SVID");
        }
      });
      cache.update({ svids });
    }
    return error === undefined ? { rotated, failed } : { rotated, failed, error };
  }
}

function chunked<T>(items: readonly T[], size: number): T[][] {
  const n = Math.max(1, Math.floor(size));
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += n) out.push(items.slice(i, i + n));
  return out;
}

/** A round that did not call the server. */
function idle(error: unknown, agentSvid: SyncOutcome["agentSvid"] = "none"): SyncOutcome {
  return { ok: false, error, notModified: false, rotated: 0, failed: 0, agentSvid };
}
