/**
 * Token-bucket rate limits of the agent API, after SPIRE's `ratelimit`: node
 * attestation per source address (an IPv6 address counts as its /64), X509-SVID
 * and JWT-SVID signing per agent; and, where SPIRE has none, SyncAuthorized
 * calls and WatchChanges stream opens per agent.
 *
 * Each key (an address, an agent ID) has its own bucket, so one noisy caller
 * never slows another. A bucket holds up to `burst` tokens and refills at
 * `perSecond`; a request costs one token per credential it asks for. Where
 * SPIRE makes an over-limit caller wait, Sigil refuses at once with a retry
 * hint, so a flood holds no server resources while it waits.
 *
 * A request that costs more than a whole bucket (a batch larger than the
 * burst) is admitted when the bucket is full and leaves it in debt: it is
 * never refused forever, and later requests wait until the debt is repaid, so
 * over any T seconds one key is admitted at most `perSecond × T` plus the
 * larger of the burst and the largest single request. That is what bounds
 * how fast the issuance log can grow.
 */
import { isIP } from "node:net";
import type { Clock } from "../../common/clock.js";
import type { Metrics } from "../../common/metrics.js";
import { retryHintText } from "../../common/rpc/status.js";
import { SigilError } from "../../spiffe/errors.js";
import type { ServerConfig } from "../config/schema.js";

/** Most buckets one limiter keeps; beyond it the least recently used is dropped. */
export const DEFAULT_MAX_KEYS = 10_000;

/** Options of {@link RateLimiter}. */
export interface RateLimiterOptions {
  /** Tokens added per second: the sustained rate allowed per key. */
  readonly perSecond: number;
  /** Bucket capacity: how many requests one key may make at once after a quiet period. */
  readonly burst: number;
  readonly clock: Clock;
  /** Most keys tracked at once (default {@link DEFAULT_MAX_KEYS}). */
  readonly maxKeys?: number;
}

/** The outcome of {@link RateLimiter.take}. */
export type RateLimitDecision = { readonly allowed: true } | { readonly allowed: false; readonly retryAfterMs: number };

interface Bucket {
  tokens: number;
  /** When `tokens` was last brought up to date (ms). */
  at: number;
}

const ALLOWED: RateLimitDecision = { allowed: true };

/**
 * Per-key token buckets on an injected clock.
 *
 * Memory is bounded: a bucket that has refilled to capacity is the same as a
 * new one and is dropped when room is needed, and at `maxKeys` the least
 * recently used bucket goes, so a flood of distinct keys (source addresses)
 * cannot grow the table. An evicted key starts again with a full bucket: a
 * caller with more addresses than `maxKeys` gains one burst per eviction,
 * no more than those addresses would get it anyway.
 *
 * @example
 * ```ts
 * const limiter = new RateLimiter({ perSecond: 500, burst: 500, clock: systemClock });
 * const d = limiter.take(agentId, params.length);
 * if (!d.allowed) throw rateLimitedError("batch new x509 svid: …", d.retryAfterMs);
 * ```
 */
export class RateLimiter {
  /** The sustained rate per key. */
  readonly perSecond: number;
  /** The bucket capacity. */
  readonly burst: number;
  readonly #clock: Clock;
  readonly #maxKeys: number;
  // Insertion order is recency: a bucket is moved to the end on every use.
  readonly #buckets = new Map<string, Bucket>();

  constructor(options: RateLimiterOptions) {
    const maxKeys = options.maxKeys ?? DEFAULT_MAX_KEYS;
    if (!(options.perSecond > 0) || !Number.isFinite(options.perSecond)) throw new SigilError("ERR_INVALID_ARGUMENT", `rate limit: perSecond must be a positive number, got ${options.perSecond}`);
    if (!(options.burst >= 1) || !Number.isFinite(options.burst)) throw new SigilError("ERR_INVALID_ARGUMENT", `rate limit: burst must be at least 1, got ${options.burst}`);
    if (!Number.isInteger(maxKeys) || maxKeys < 1) throw new SigilError("ERR_INVALID_ARGUMENT", `rate limit: maxKeys must be a positive integer, got ${maxKeys}`);
    this.perSecond = options.perSecond;
    this.burst = options.burst;
    this.#clock = options.clock;
    this.#maxKeys = maxKeys;
  }

  /** Buckets currently kept. */
  get size(): number {
    return this.#buckets.size;
  }

  /**
   * Takes `cost` tokens from `key`'s bucket, or refuses and says how long to
   * wait. A refusal takes nothing. A cost above the burst is admitted once
   * the bucket is full (see the module comment).
   */
  take(key: string, cost = 1): RateLimitDecision {
    const now = this.#clock.now().getTime();
    let bucket = this.#buckets.get(key);
    if (bucket) {
      this.#buckets.delete(key);
      this.#refill(bucket, now);
    } else {
      this.#makeRoom(now);
      bucket = { tokens: this.burst, at: now };
    }
    this.#buckets.set(key, bucket);
    const need = Math.min(cost, this.burst);
    if (bucket.tokens >= need) {
      bucket.tokens -= cost;
      return ALLOWED;
    }
    return { allowed: false, retryAfterMs: Math.max(1, Math.ceil(((need - bucket.tokens) * 1000) / this.perSecond)) };
  }

  #refill(bucket: Bucket, now: number): void {
    // A clock that went backwards refills nothing and restarts from the new time.
    if (now > bucket.at) bucket.tokens = Math.min(this.burst, bucket.tokens + ((now - bucket.at) * this.perSecond) / 1000);
    bucket.at = now;
  }

  /** Drops idle (refilled) buckets from the least recently used end, and one more if still at the cap. */
  #makeRoom(now: number): void {
    for (const [key, bucket] of this.#buckets) {
      const idle = bucket.tokens + ((now - bucket.at) * this.perSecond) / 1000 >= this.burst;
      if (!idle && this.#buckets.size < this.#maxKeys) return;
      this.#buckets.delete(key);
    }
  }
}

/**
 * The ResourceExhausted error of a refused call. The message ends with
 * `retry after <n>ms` and the error carries `retryAfterMs`, which the RPC
 * boundary sends as the `grpc-retry-pushback-ms` trailer.
 */
export function rateLimitedError(message: string, retryAfterMs: number): SigilError {
  const ms = Math.max(1, Math.ceil(retryAfterMs));
  return new SigilError("ERR_RESOURCE_EXHAUSTED", `${message}; ${retryHintText(ms)}`, { retryAfterMs: ms });
}

/** The `limit` label of `sigil_rate_limited_requests_total`. */
export type LimitName = "attestation" | "x509_signing" | "jwt_signing" | "sync" | "watch_changes" | "downstream_ca";

/**
 * Charges `cost` to `key` on `limiter` (no limiter: no limit), or throws
 * ResourceExhausted `<what>; retry after <n>ms` with the same hint as a
 * trailer, counting the refusal in `sigil_rate_limited_requests_total`.
 */
export type RateLimitCharge = (limit: LimitName, limiter: RateLimiter | undefined, key: string, cost: number, what: (perSecond: number) => string) => void;

/** The {@link RateLimitCharge} of the services on the agent API listener. */
export function rateLimitCharger(metrics: Metrics): RateLimitCharge {
  const throttled = metrics.counter<"limit">({
    name: "sigil_rate_limited_requests_total",
    help: "Agent API calls refused with RESOURCE_EXHAUSTED by a rate limit, by limit (attestation, x509_signing, jwt_signing, sync, watch_changes, downstream_ca).",
    labelNames: ["limit"],
  });
  return (limit, limiter, key, cost, what) => {
    if (!limiter) return;
    const decision = limiter.take(key, cost);
    if (decision.allowed) return;
    throttled.inc({ limit });
    throw rateLimitedError(what(limiter.perSecond), decision.retryAfterMs);
  };
}

/** The eight 16-bit groups of a valid IPv6 address (zone ID dropped, embedded IPv4 tail included). */
function ipv6Groups(address: string): number[] {
  const bare = address.replace(/%.*$/, "");
  const parse = (part: string): number[] =>
    part === ""
      ? []
      : part.split(":").flatMap((g) => {
          if (!g.includes(".")) return [parseInt(g, 16)];
          const [a = 0, b = 0, c = 0, d = 0] = g.split(".").map(Number);
          return [(a << 8) | b, (c << 8) | d];
        });
  const gap = bare.indexOf("::");
  if (gap < 0) return parse(bare);
  const head = parse(bare.slice(0, gap));
  const tail = parse(bare.slice(gap + 2));
  return [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
}

/**
 * The rate-limit key of a caller from grpc-js `getPeer()` (`host:port`): the
 * address without the port; IPv4-mapped IPv6 as plain IPv4 (a dual-stack
 * listener sees IPv4 clients that way); any other IPv6 address as its /64
 * (`2001:db8:1:2::/64`), since one host is commonly given a whole /64 and
 * could otherwise make each attempt from a fresh address and a fresh bucket.
 * Anything else is returned as is.
 */
export function sourceAddress(peer: string): string {
  const colon = peer.lastIndexOf(":");
  let host = peer;
  if (colon > 0 && /^\d+$/.test(peer.slice(colon + 1))) {
    const bare = peer.slice(0, colon).replace(/^\[(.*)\]$/, "$1");
    if (isIP(bare) !== 0) host = bare;
  }
  if (isIP(host) !== 6) return host.toLowerCase();
  const g = ipv6Groups(host);
  if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff) return [(g[6] ?? 0) >> 8, (g[6] ?? 0) & 0xff, (g[7] ?? 0) >> 8, (g[7] ?? 0) & 0xff].join(".");
  return `${g.slice(0, 4).map((x) => x.toString(16)).join(":")}::/64`;
}

/** The `server.ratelimit` config section, as parsed. */
export type RateLimitSettings = ServerConfig["server"]["ratelimit"];

/** The limiters of the agent API; a missing one means that limit is off. */
export interface AgentApiRateLimits {
  /** Node attestation attempts, keyed by {@link sourceAddress}. */
  readonly attestation?: RateLimiter | undefined;
  /** X509-SVIDs signed for an agent (batch items and agent SVID renewals), keyed by the agent's SPIFFE ID. */
  readonly x509Signing?: RateLimiter | undefined;
  /** JWT-SVIDs signed for an agent, keyed by the agent's SPIFFE ID. */
  readonly jwtSigning?: RateLimiter | undefined;
  /** SyncAuthorized calls of an agent, keyed by the agent's SPIFFE ID. */
  readonly sync?: RateLimiter | undefined;
  /** WatchChanges stream opens of an agent, keyed by the agent's SPIFFE ID. */
  readonly watchChanges?: RateLimiter | undefined;
  /** DownstreamAPI calls, refused ones included, keyed by the caller's SPIFFE ID (or source address without a valid SVID). */
  readonly downstreamCa?: RateLimiter | undefined;
}

/** Builds the agent API's limiters from `server.ratelimit`. Signing buckets hold one second's worth, as SPIRE's. */
export function agentApiRateLimits(settings: RateLimitSettings, clock: Clock): AgentApiRateLimits {
  const signing = (perSecond: number): RateLimiter | undefined => (settings.signing ? new RateLimiter({ perSecond, burst: perSecond, clock }) : undefined);
  return {
    attestation: settings.attestation ? new RateLimiter({ perSecond: settings.attestation_per_second, burst: settings.attestation_burst, clock }) : undefined,
    x509Signing: signing(settings.x509_signing_per_second),
    jwtSigning: signing(settings.jwt_signing_per_second),
    sync: settings.sync ? new RateLimiter({ perSecond: settings.sync_per_second, burst: settings.sync_burst, clock }) : undefined,
    watchChanges: settings.sync ? new RateLimiter({ perSecond: settings.watch_changes_per_second, burst: settings.watch_changes_burst, clock }) : undefined,
    downstreamCa: settings.downstream_ca ? new RateLimiter({ perSecond: settings.downstream_ca_per_second, burst: settings.downstream_ca_burst, clock }) : undefined,
  };
}
