/**
 * The agent API's token buckets on a manual clock (no sleeping), the retry
 * hint as it crosses the RPC boundary, and the `server.ratelimit` config.
 */
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { RETRY_PUSHBACK_METADATA_KEY, retryAfterMsOf, toServiceError } from "../../../../common/rpc/status.js";
import { agentApiRateLimits, RateLimiter, rateLimitedError, sourceAddress } from "../../../../server/api/rate-limit.js";
import { parseServerConfig } from "../../../../server/config/load.js";
import { isSigilError, SigilError } from "../../../../spiffe/errors.js";

const CONFIG = (ratelimit = ""): string => `
server:
  trust_domain: example.org
${ratelimit}plugins:
  DataStore:
    sql:
      database_type: sqlite3
      connection_string: ./datastore.sqlite3
  KeyManager:
    memory:
  NodeAttestor:
    join_token: {}
`;

function limiter(perSecond: number, burst: number, maxKeys?: number): { clock: ManualClock; limiter: RateLimiter } {
  const clock = new ManualClock(new Date("2030-01-01T00:00:00Z"));
  return { clock, limiter: new RateLimiter({ perSecond, burst, clock, ...(maxKeys === undefined ? {} : { maxKeys }) }) };
}

describe("RateLimiter", () => {
  it("admits a burst, then refuses with the time until the next token", () => {
    const { limiter: l } = limiter(2, 3);
    for (let i = 0; i < 3; i++) expect(l.take("a")).toEqual({ allowed: true });
    expect(l.take("a")).toEqual({ allowed: false, retryAfterMs: 500 });
  });

  it("refills at the rate, never beyond the burst", () => {
    const { clock, limiter: l } = limiter(2, 3);
    for (let i = 0; i < 3; i++) l.take("a");
    clock.advance(499);
    expect(l.take("a").allowed).toBe(false);
    clock.advance(1);
    expect(l.take("a").allowed).toBe(true);
    expect(l.take("a").allowed).toBe(false);
    clock.advance(3_600_000); // an hour idle refills to the burst, not to 7,200
    for (let i = 0; i < 3; i++) expect(l.take("a").allowed).toBe(true);
    expect(l.take("a").allowed).toBe(false);
  });

  it("a refusal takes nothing: waiting exactly the hint is enough", () => {
    const { clock, limiter: l } = limiter(1, 1);
    l.take("a");
    const refusals = Array.from({ length: 50 }, () => l.take("a"));
    expect(refusals.every((d) => !d.allowed)).toBe(true);
    const hint = (refusals.at(-1) as { retryAfterMs: number }).retryAfterMs;
    expect(hint).toBe(1000);
    clock.advance(hint);
    expect(l.take("a").allowed).toBe(true);
  });

  it("charges a batch by its size: three of five tokens left admit a batch of three, not of four", () => {
    const { limiter: l } = limiter(5, 5);
    expect(l.take("a", 2).allowed).toBe(true);
    expect(l.take("a", 4)).toEqual({ allowed: false, retryAfterMs: 200 });
    expect(l.take("a", 3).allowed).toBe(true);
    expect(l.take("a").allowed).toBe(false);
  });

  it("admits a request larger than the burst once the bucket is full, then makes the key repay it", () => {
    const { clock, limiter: l } = limiter(10, 10);
    l.take("a", 1);
    // Not full: a 30-token batch waits for the one missing token, not forever.
    expect(l.take("a", 30)).toEqual({ allowed: false, retryAfterMs: 100 });
    clock.advance(100);
    expect(l.take("a", 30).allowed).toBe(true);
    // 20 tokens of debt plus one: 2.1 s before even a single request.
    expect(l.take("a")).toEqual({ allowed: false, retryAfterMs: 2100 });
    clock.advance(2100);
    expect(l.take("a").allowed).toBe(true);
  });

  it("never admits more than rate × time plus the larger of burst and one request, however it is asked", () => {
    const { clock, limiter: l } = limiter(50, 50);
    let admitted = 0;
    const costs = [1, 7, 120, 3, 50, 51, 1, 200];
    for (let step = 0; step < 2000; step++) {
      const cost = costs[step % costs.length] as number;
      if (l.take("a", cost).allowed) admitted += cost;
      clock.advance(7);
    }
    const seconds = (2000 * 7) / 1000;
    expect(admitted).toBeLessThanOrEqual(50 * seconds + 200);
    expect(admitted).toBeGreaterThan(50 * seconds * 0.5); // and it does admit work
  });

  it("keeps a bucket per key: one key's flood leaves another untouched", () => {
    const { limiter: l } = limiter(1, 2);
    for (let i = 0; i < 100; i++) l.take("flood");
    expect(l.take("other").allowed).toBe(true);
    expect(l.take("other").allowed).toBe(true);
    expect(l.take("other").allowed).toBe(false);
  });

  it("a clock that goes backwards grants nothing and refills again from the new time", () => {
    const { clock, limiter: l } = limiter(1, 1);
    l.take("a");
    clock.advance(-60_000);
    expect(l.take("a").allowed).toBe(false);
    clock.advance(1000);
    expect(l.take("a").allowed).toBe(true);
  });

  it("keeps at most maxKeys buckets under a flood of keys, dropping refilled ones first", () => {
    const { clock, limiter: l } = limiter(1, 2, 100);
    let largest = 0;
    for (let i = 0; i < 10_000; i++) {
      l.take(`10.0.${i >> 8}.${i & 255}`);
      largest = Math.max(largest, l.size);
    }
    expect(largest).toBe(100);
    // Idle buckets have refilled: the next new key sweeps them all away.
    clock.advance(2000);
    l.take("fresh");
    expect(l.size).toBe(1);
  });

  it("at the cap the least recently used key goes, not the one in use", () => {
    const { limiter: l } = limiter(1, 2, 3);
    l.take("busy", 2);
    l.take("b");
    l.take("c");
    l.take("busy"); // refused, but used: now most recent
    l.take("d"); // evicts "b"
    expect(l.take("busy").allowed).toBe(false); // its empty bucket survived
    expect(l.size).toBe(3);
  });

  it("refuses a nonsensical configuration", () => {
    const clock = new ManualClock();
    expect(() => new RateLimiter({ perSecond: 0, burst: 1, clock })).toThrow(/perSecond must be a positive number/);
    expect(() => new RateLimiter({ perSecond: 1, burst: 0, clock })).toThrow(/burst must be at least 1/);
    expect(() => new RateLimiter({ perSecond: 1, burst: 1, clock, maxKeys: 0 })).toThrow(/maxKeys/);
  });
});

describe("sourceAddress", () => {
  it.each([
    ["127.0.0.1:51234", "127.0.0.1"],
    ["::1:51234", "0:0:0:0::/64"],
    ["[2001:db8::7]:443", "2001:db8:0:0::/64"],
    ["2001:DB8::7:443", "2001:db8:0:0::/64"],
    ["[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:443", "2001:db8:1:2::/64"],
    ["[fe80::1%eth0]:5", "fe80:0:0:0::/64"],
    ["::ffff:10.1.2.3:8081", "10.1.2.3"],
    ["[::ffff:a01:203]:8081", "10.1.2.3"],
    ["10.1.2.3", "10.1.2.3"],
    ["unknown", "unknown"],
  ])("%s → %s", (peer, key) => {
    expect(sourceAddress(peer)).toBe(key);
  });

  it("counts every address of one IPv6 /64 as one source: a host holding a /64 cannot mint itself fresh buckets", () => {
    const { limiter: l } = limiter(1, 2);
    const key = (i: number): string => sourceAddress(`[2001:db8:1:2::${i.toString(16)}]:${40000 + i}`);
    expect(l.take(key(1)).allowed).toBe(true);
    expect(l.take(key(2)).allowed).toBe(true);
    expect(l.take(key(3)).allowed).toBe(false);
    expect(l.take(sourceAddress("[2001:db8:1:3::1]:40000")).allowed).toBe(true); // the next /64 is another source
  });
});

describe("retry hint across the RPC boundary", () => {
  it("is ResourceExhausted with `retry after <n>ms` in the message and the grpc-retry-pushback-ms trailer", () => {
    const err = toServiceError(rateLimitedError("new jwt svid: rate limit: too many", 1234.2));
    expect(err.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(err.details).toBe("new jwt svid: rate limit: too many; retry after 1235ms");
    expect(err.metadata.get(RETRY_PUSHBACK_METADATA_KEY)).toEqual(["1235"]);
    expect(err.metadata.get("sigil-error-code")).toEqual(["ERR_RESOURCE_EXHAUSTED"]);
    expect(retryAfterMsOf(err)).toBe(1235);
  });

  it("is read from the trailer, else from the message, also through a wrapping SigilError; absent otherwise", () => {
    const received = (details: string, pushback?: string): ServiceError => {
      const md = new Metadata();
      if (pushback !== undefined) md.set(RETRY_PUSHBACK_METADATA_KEY, pushback);
      return Object.assign(new Error(details), { code: status.RESOURCE_EXHAUSTED, details, metadata: md });
    };
    expect(retryAfterMsOf(received("x; retry after 10ms", "250"))).toBe(250);
    expect(retryAfterMsOf(received("x; retry after 10ms"))).toBe(10);
    expect(retryAfterMsOf(new SigilError("ERR_INTERNAL", "sync: NewJWTSVID: x", { cause: received("x", "70") }))).toBe(70);
    expect(retryAfterMsOf(received("no hint", "soon"))).toBeUndefined();
    expect(retryAfterMsOf(new Error("plain"))).toBeUndefined();
    expect(toServiceError(new SigilError("ERR_UNAVAILABLE", "x")).metadata.get(RETRY_PUSHBACK_METADATA_KEY)).toEqual([]);
  });
});

describe("server.ratelimit", () => {
  it("defaults to SPIRE's limits: 1 attestation per second per address, 500 X.509 and 500 JWT signings per second per agent; 5 syncs (burst 10) and 1 change stream (burst 3) per second per agent; 1 downstream CA call (burst 5) per second per caller", () => {
    const cfg = parseServerConfig(CONFIG());
    expect(cfg.server.ratelimit).toEqual({
      attestation: true, attestation_per_second: 1, attestation_burst: 10, signing: true, x509_signing_per_second: 500, jwt_signing_per_second: 500,
      sync: true, sync_per_second: 5, sync_burst: 10, watch_changes_per_second: 1, watch_changes_burst: 3, downstream_ca: true, downstream_ca_per_second: 1, downstream_ca_burst: 5,
    });
    const limits = agentApiRateLimits(cfg.server.ratelimit, new ManualClock());
    expect([limits.attestation?.perSecond, limits.attestation?.burst]).toEqual([1, 10]);
    expect([limits.x509Signing?.perSecond, limits.x509Signing?.burst]).toEqual([500, 500]);
    expect([limits.jwtSigning?.perSecond, limits.jwtSigning?.burst]).toEqual([500, 500]);
    expect([limits.sync?.perSecond, limits.sync?.burst]).toEqual([5, 10]);
    expect([limits.watchChanges?.perSecond, limits.watchChanges?.burst]).toEqual([1, 3]);
    expect([limits.downstreamCa?.perSecond, limits.downstreamCa?.burst]).toEqual([1, 5]);
  });

  it("turns each kind off, and takes other rates", () => {
    const cfg = parseServerConfig(CONFIG("  ratelimit:\n    attestation: false\n    signing: false\n    sync: false\n    downstream_ca: false\n"));
    expect(agentApiRateLimits(cfg.server.ratelimit, new ManualClock())).toEqual({ attestation: undefined, x509Signing: undefined, jwtSigning: undefined, sync: undefined, watchChanges: undefined });
    const tuned = parseServerConfig(CONFIG("  ratelimit:\n    attestation_per_second: 5\n    jwt_signing_per_second: 20\n")).server.ratelimit;
    expect(tuned).toMatchObject({ attestation_per_second: 5, attestation_burst: 10, jwt_signing_per_second: 20, x509_signing_per_second: 500 });
  });

  it.each([
    ["x509_signing_per_second: 0", "server.ratelimit.x509_signing_per_second:"],
    ["attestation_burst: 1.5", "server.ratelimit.attestation_burst:"],
    ["signing: yes-please", "server.ratelimit.signing:"],
    ["per_ip: 3", "server.ratelimit.per_ip: unknown key"],
  ])("names the key of a bad value (%s)", (line, expected) => {
    let message = "";
    try {
      parseServerConfig(CONFIG(`  ratelimit:\n    ${line}\n`));
    } catch (e) {
      expect(isSigilError(e, "ERR_INVALID_ARGUMENT")).toBe(true);
      message = (e as Error).message;
    }
    expect(message).toContain(expected);
  });
});
