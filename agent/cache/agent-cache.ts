/**
 * The agent's cache: the entries this agent may speak for, one current
 * X509-SVID per entry (keys generated on the agent, held only in memory), the
 * trust bundles, and JWT-SVIDs per (entry, audience). The Workload API and SDS
 * read it through {@link WorkloadCache}; the sync loop writes it with
 * {@link AgentCache.update}. It never hands out an expired SVID, whatever the
 * state of the server, and never pairs an entry with an SVID or JWT-SVID issued
 * under another revision of it: an edit (SPIFFE ID, selectors, TTL, DNS names,
 * hint, federates_with) drops both at once, and callers wait for the new ones.
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import { formatSelector, type Selector } from "../../common/selector.js";
import type { SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { SigilError } from "../../spiffe/errors.js";
import type { TrustDomain } from "../../spiffe/id.js";
import { shouldRenew } from "../rotation/renew-at.js";
import { jwtKeyId } from "../rotation/taint.js";
import type { AgentCacheMetrics } from "./cache-metrics.js";
import type { BundleSnapshot, CachedEntry, CachedIdentity, CachedJwtSvid, CachedX509Svid, WorkloadCache } from "./types.js";

/** Default hard limit of cached JWT-SVIDs (SPIRE's `jwt_svid_cache_max_size`). */
export const DEFAULT_JWT_CACHE_MAX_SIZE = 1000;

/** A JWT-SVID as the server minted it. */
export interface JwtSvidMint {
  readonly spiffeId: string;
  readonly token: string;
  readonly issuedAt: Date;
  readonly expiresAt: Date;
}

/** The X509-SVID of one entry with what rotation needs to know about it. */
export interface CachedSvidState {
  readonly svid: CachedX509Svid;
  /** The entry revision the SVID was issued for; a newer revision forces renewal. */
  readonly entryRevision: number;
  /** When the sync loop renews it (fraction of lifetime, jittered). */
  readonly renewAt: Date;
}

/** A change applied atomically by {@link AgentCache.update}; subscribers are notified once. */
export interface CacheUpdate {
  /** The complete entry set (replaces the current one; SVIDs and JWTs of missing entries are dropped). */
  readonly entries?: readonly CachedEntry[];
  /** The bundles, own trust domain's first (replaces the snapshot). */
  readonly bundles?: readonly SpiffeBundle[];
  /** New SVIDs keyed by entry ID (ignored for entries no longer in the cache). */
  readonly svids?: ReadonlyMap<string, CachedSvidState>;
  /** Marks a completed sync with the server. */
  readonly synced?: boolean;
}

/** Options of {@link AgentCache}. */
export interface AgentCacheOptions {
  readonly trustDomain: TrustDomain;
  readonly clock: Clock;
  /** Mints a JWT-SVID on the server (the agent API's NewJWTSVID). */
  readonly mintJwtSvid: (entryId: string, audience: readonly string[]) => Promise<JwtSvidMint>;
  readonly metrics?: AgentCacheMetrics;
  readonly log?: Logger;
  /** Hard limit of cached JWT-SVIDs; the oldest is evicted first. Default 1000. */
  readonly jwtCacheMaxSize?: number;
}

interface JwtCacheItem extends JwtSvidMint {
  readonly entryId: string;
  /** The entry revision it was minted under; another revision never serves it. */
  readonly entryRevision: number;
}

/** An entry with its selectors formatted once, as the selector index holds it. */
interface IndexedEntry {
  readonly entry: CachedEntry;
  readonly keys: readonly string[];
}

function bundleKey(b: SpiffeBundle): string {
  const x509 = b.x509Authorities.map((d) => Buffer.from(d).toString("base64")).join(",");
  const jwt = [...b.jwtAuthorities].map(([kid, k]) => `${kid}=${k.export({ format: "der", type: "spki" }).toString("base64")}`).join(",");
  return `${b.trustDomain.name}|${b.sequenceNumber ?? ""}|${x509}|${jwt}`;
}

function compareEntries(a: CachedEntry, b: CachedEntry): number {
  const t = a.createdAt.getTime() - b.createdAt.getTime();
  if (t !== 0) return t;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/** The JWT cache key: entry and the sorted, de-duplicated audience. */
export function jwtCacheKey(entryId: string, audience: readonly string[]): string {
  return JSON.stringify([entryId, ...[...new Set(audience)].sort()]);
}

/** The agent's SVID and bundle cache. */
export class AgentCache implements WorkloadCache {
  readonly #opts: AgentCacheOptions;
  readonly #entries = new Map<string, CachedEntry>();
  readonly #bySelector = new Map<string, IndexedEntry[]>();
  /** Only SVIDs of entries in `#entries`, issued under their current revision ({@link AgentCache.update} keeps it so). */
  readonly #svids = new Map<string, CachedSvidState>();
  readonly #jwts = new Map<string, JwtCacheItem>();
  readonly #jwtInFlight = new Map<string, Promise<CachedJwtSvid>>();
  readonly #listeners = new Set<() => void>();
  #bundles: BundleSnapshot | undefined;
  #bundlesKey = "";
  #synced = false;
  /** Key IDs of tainted JWT keys: tokens they signed are dropped and never cached. */
  #taintedJwtKeys: ReadonlySet<string> = new Set();
  /** Earliest notAfter (ms) in `#svids`, Infinity when empty; kept by {@link AgentCache.#changed}. */
  #earliestNotAfter = Infinity;

  constructor(options: AgentCacheOptions) {
    this.#opts = options;
  }

  // ---- WorkloadCache -------------------------------------------------------

  identitiesFor(selectors: readonly Selector[]): CachedIdentity[] {
    const now = this.#opts.clock.now().getTime();
    const out: CachedIdentity[] = [];
    this.#forMatching(selectors, (entry) => {
      const svid = this.#currentSvid(entry, now);
      if (svid) out.push({ entry, svid });
    });
    return out.sort((a, b) => compareEntries(a.entry, b.entry));
  }

  /** See {@link WorkloadCache.pendingFor}. */
  pendingFor(selectors: readonly Selector[]): CachedEntry[] {
    const now = this.#opts.clock.now().getTime();
    // Steady state, checked in O(1): every entry holds an unexpired SVID of its current revision.
    if (this.#svids.size === this.#entries.size && this.#earliestNotAfter > now) return [];
    const out: CachedEntry[] = [];
    this.#forMatching(selectors, (entry) => {
      if (!this.#currentSvid(entry, now)) out.push(entry);
    });
    return out.sort(compareEntries);
  }

  /**
   * Calls `visit` once for every entry whose selectors are all among
   * `selectors`. An entry without selectors matches no one (as in SPIRE): it
   * would otherwise be every local process's identity.
   */
  #forMatching(selectors: readonly Selector[], visit: (entry: CachedEntry) => void): void {
    const have = new Set(selectors.map(formatSelector));
    const consider = (indexed: IndexedEntry): void => {
      if (indexed.keys.every((k) => have.has(k))) visit(indexed.entry);
    };
    // Only entries that share a selector with the caller can match: look them up by selector.
    const seen = new Set<string>();
    for (const key of have) {
      for (const indexed of this.#bySelector.get(key) ?? []) {
        if (seen.has(indexed.entry.id)) continue;
        seen.add(indexed.entry.id);
        consider(indexed);
      }
    }
  }

  /** The entry's SVID when it is unexpired at `now` and was issued under the entry's current revision. */
  #currentSvid(entry: CachedEntry, now: number): CachedX509Svid | undefined {
    const state = this.#svids.get(entry.id);
    if (!state || state.entryRevision !== entry.revision || state.svid.notAfter.getTime() <= now) return undefined;
    return state.svid;
  }

  bundles(): BundleSnapshot {
    if (!this.#bundles) throw new SigilError("ERR_UNAVAILABLE", "cache: the agent has no trust bundle yet (not synced with the server)");
    return this.#bundles;
  }

  ready(): boolean {
    return this.#bundles !== undefined && this.#synced;
  }

  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  async fetchJwtSvid(entryId: string, audience: readonly string[]): Promise<CachedJwtSvid> {
    if (audience.length === 0 || audience.some((a) => a.length === 0)) throw new SigilError("ERR_INVALID_ARGUMENT", "cache: a JWT-SVID needs at least one non-empty audience");
    const entry = this.#entries.get(entryId);
    if (!entry) throw new SigilError("ERR_NOT_FOUND", `cache: entry ${JSON.stringify(entryId)} is not in the agent's cache`);
    const key = jwtCacheKey(entryId, audience);
    const found = this.#jwts.get(key);
    const cached = found?.entryRevision === entry.revision ? found : undefined;
    const now = this.#opts.clock.now();
    if (cached && !shouldRenew(now, cached.issuedAt, cached.expiresAt, 0.5)) return toCachedJwt(cached);
    // A mint started under another revision of the entry is not shared with this caller.
    const flightKey = `${entry.revision}:${key}`;
    let pending = this.#jwtInFlight.get(flightKey);
    if (!pending) {
      pending = this.#mintJwt(key, entry, [...new Set(audience)].sort(), cached).finally(() => this.#jwtInFlight.delete(flightKey));
      this.#jwtInFlight.set(flightKey, pending);
    }
    return pending;
  }

  async #mintJwt(key: string, entry: CachedEntry, audience: readonly string[], cached: JwtCacheItem | undefined): Promise<CachedJwtSvid> {
    let minted: JwtSvidMint;
    try {
      minted = await this.#opts.mintJwtSvid(entry.id, audience);
    } catch (e) {
      this.#assertStillCurrent(entry);
      // Server away: a cached token for this exact audience still serves while valid (SPIRE's behaviour).
      if (cached && cached.expiresAt.getTime() > this.#opts.clock.now().getTime()) {
        this.#opts.log?.warn({ err: e, entry_id: entry.id }, "cache: cannot mint a JWT-SVID; serving the cached one past its half life");
        return toCachedJwt(cached);
      }
      throw e;
    }
    this.#assertStillCurrent(entry);
    if (minted.spiffeId !== entry.spiffeId) {
      // The server already has another revision of the entry than this agent: the token is not for the identity the caller matched.
      this.#opts.log?.warn({ entry_id: entry.id, entry_revision: entry.revision, spiffe_id: entry.spiffeId, minted_spiffe_id: minted.spiffeId }, "cache: the server minted a JWT-SVID for another SPIFFE ID than the agent's entry names; not served");
      throw new SigilError("ERR_UNAVAILABLE", `cache: entry ${JSON.stringify(entry.id)} changed on the server (JWT-SVID minted for ${minted.spiffeId}, the agent's entry names ${entry.spiffeId}); retry once the agent has synced`);
    }
    this.#jwts.delete(key);
    const kid = jwtKeyId(minted.token);
    // The server had no untainted key to sign with: hand the token out once, but never from the cache.
    if (kid !== undefined && this.#taintedJwtKeys.has(kid)) return toCachedJwt(minted);
    this.#jwts.set(key, { ...minted, entryId: entry.id, entryRevision: entry.revision });
    const max = this.#opts.jwtCacheMaxSize ?? DEFAULT_JWT_CACHE_MAX_SIZE;
    for (const k of this.#jwts.keys()) {
      if (this.#jwts.size <= max) break;
      this.#jwts.delete(k);
    }
    return toCachedJwt(minted);
  }

  /** Throws ERR_UNAVAILABLE when `entry` was removed or edited while its JWT-SVID was being minted. */
  #assertStillCurrent(entry: CachedEntry): void {
    const current = this.#entries.get(entry.id);
    if (current?.revision === entry.revision) return;
    const what = current ? `changed (revision ${entry.revision} → ${current.revision})` : "was removed";
    throw new SigilError("ERR_UNAVAILABLE", `cache: entry ${JSON.stringify(entry.id)} ${what} while its JWT-SVID was being minted; retry`);
  }

  // ---- What the sync loop reads and writes ---------------------------------

  /** The current entries, in no particular order. */
  entries(): CachedEntry[] {
    return [...this.#entries.values()];
  }

  /** See {@link WorkloadCache.closestEntries}. */
  closestEntries(selectors: readonly Selector[], limit: number): { entry: CachedEntry; missing: string[] }[] {
    const have = new Set(selectors.map(formatSelector));
    const scored: { entry: CachedEntry; missing: string[]; matched: number }[] = [];
    for (const entry of this.#entries.values()) {
      const wanted = entry.selectors.map(formatSelector);
      const missing = wanted.filter((s) => !have.has(s));
      const matched = wanted.length - missing.length;
      if (matched > 0) scored.push({ entry, missing, matched });
    }
    scored.sort((a, b) => b.matched - a.matched || a.missing.length - b.missing.length || (a.entry.id < b.entry.id ? -1 : 1));
    return scored.slice(0, limit).map(({ entry, missing }) => ({ entry, missing }));
  }

  /** The SVID state of an entry, if it has one (expired ones included until {@link AgentCache.dropExpired}). */
  svidState(entryId: string): CachedSvidState | undefined {
    return this.#svids.get(entryId);
  }

  /** How many X509-SVIDs the cache holds. */
  get svidCount(): number {
    return this.#svids.size;
  }

  /** How many JWT-SVIDs the cache holds. */
  get jwtCount(): number {
    return this.#jwts.size;
  }

  /**
   * Applies a change atomically and notifies subscribers once if anything a
   * workload could see changed.
   *
   * @throws SigilError `ERR_BUNDLE_INVALID` when `bundles` does not start with the own trust domain's
   */
  update(change: CacheUpdate): void {
    let changed = false;
    if (change.bundles !== undefined) changed = this.#setBundles(change.bundles) || changed;
    if (change.entries !== undefined) changed = this.#setEntries(change.entries) || changed;
    if (change.svids !== undefined) {
      for (const [entryId, state] of change.svids) {
        const entry = this.#entries.get(entryId);
        if (!entry) continue;
        if (state.entryRevision !== entry.revision) {
          // Requested before the entry changed: never pair it with the new revision.
          this.#opts.log?.debug({ entry_id: entryId, svid_revision: state.entryRevision, entry_revision: entry.revision }, "cache: discarding an X509-SVID issued for an older revision of its entry");
          continue;
        }
        this.#svids.set(entryId, state);
        changed = true;
      }
    }
    if (change.synced === true && !this.#synced) {
      this.#synced = true;
      changed = true;
    }
    if (changed) this.#changed();
  }

  /**
   * Sets the tainted JWT key IDs and drops every cached JWT-SVID one of them
   * signed (its header's `kid`): the next fetch mints a new one. Returns how
   * many were dropped.
   */
  setTaintedJwtKeys(keyIds: ReadonlySet<string>): number {
    this.#taintedJwtKeys = new Set(keyIds);
    if (keyIds.size === 0) return 0;
    let dropped = 0;
    for (const [k, jwt] of this.#jwts) {
      const kid = jwtKeyId(jwt.token);
      if (kid !== undefined && keyIds.has(kid)) {
        this.#jwts.delete(k);
        dropped++;
      }
    }
    return dropped;
  }

  /** Drops SVIDs that have expired at the clock's now; notifies when any was dropped. Returns how many. */
  dropExpired(): number {
    const now = this.#opts.clock.now().getTime();
    let dropped = 0;
    for (const [id, state] of this.#svids) {
      if (state.svid.notAfter.getTime() <= now) {
        this.#svids.delete(id);
        dropped++;
      }
    }
    for (const [k, jwt] of this.#jwts) if (jwt.expiresAt.getTime() <= now) this.#jwts.delete(k);
    if (dropped > 0) {
      this.#opts.log?.warn({ dropped }, "cache: X509-SVIDs expired before they could be renewed (is the server reachable?)");
      this.#changed();
    }
    return dropped;
  }

  #setBundles(bundles: readonly SpiffeBundle[]): boolean {
    const [own, ...rest] = bundles;
    if (!own || own.trustDomain.name !== this.#opts.trustDomain.name) {
      throw new SigilError("ERR_BUNDLE_INVALID", `cache: the first bundle must be the one of ${this.#opts.trustDomain.name}`);
    }
    const federated = new Map<string, SpiffeBundle>();
    for (const b of rest) if (b.trustDomain.name !== own.trustDomain.name) federated.set(b.trustDomain.name, b);
    const key = [own, ...federated.values()].map(bundleKey).join("\n");
    if (key === this.#bundlesKey) return false;
    this.#bundles = { own, federated };
    this.#bundlesKey = key;
    return true;
  }

  #setEntries(entries: readonly CachedEntry[]): boolean {
    let changed = entries.length !== this.#entries.size;
    const next = new Map<string, CachedEntry>();
    for (const e of entries) {
      next.set(e.id, e);
      const old = this.#entries.get(e.id);
      if (!old || old.revision !== e.revision) {
        changed = true;
        // An edited entry may name another SPIFFE ID or other selectors: nothing issued under the old revision is served again.
        if (old) {
          const hadSvid = this.#svids.delete(e.id);
          this.#dropJwtsOf(e.id);
          this.#opts.log?.info(
            { entry_id: e.id, old_revision: old.revision, revision: e.revision, old_spiffe_id: old.spiffeId, spiffe_id: e.spiffeId, dropped_svid: hadSvid },
            "cache: entry changed; its SVIDs issued under the old revision are no longer served",
          );
        }
      }
    }
    for (const id of this.#entries.keys()) {
      if (next.has(id)) continue;
      this.#svids.delete(id);
      this.#dropJwtsOf(id);
      changed = true;
    }
    this.#entries.clear();
    for (const [id, e] of next) this.#entries.set(id, e);
    if (changed) this.#reindex();
    return changed;
  }

  /** Rebuilds the selector → entries index used by {@link identitiesFor}. */
  #reindex(): void {
    this.#bySelector.clear();
    for (const entry of this.#entries.values()) {
      const indexed: IndexedEntry = { entry, keys: entry.selectors.map(formatSelector) };
      for (const k of new Set(indexed.keys)) {
        let list = this.#bySelector.get(k);
        if (!list) this.#bySelector.set(k, (list = []));
        list.push(indexed);
      }
    }
  }

  #dropJwtsOf(entryId: string): void {
    for (const [k, jwt] of this.#jwts) if (jwt.entryId === entryId) this.#jwts.delete(k);
  }

  #changed(): void {
    let earliest: Date | undefined;
    for (const s of this.#svids.values()) if (!earliest || s.svid.notAfter < earliest) earliest = s.svid.notAfter;
    this.#earliestNotAfter = earliest?.getTime() ?? Infinity;
    this.#opts.metrics?.recordCache(this.#svids.size, earliest);
    for (const l of [...this.#listeners]) {
      try {
        l();
      } catch (e) {
        this.#opts.log?.error({ err: e }, "cache: a subscriber failed");
      }
    }
  }
}

function toCachedJwt(j: JwtSvidMint): CachedJwtSvid {
  return { spiffeId: j.spiffeId, token: j.token, expiresAt: j.expiresAt };
}
