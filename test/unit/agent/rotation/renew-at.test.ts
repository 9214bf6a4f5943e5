/**
 * Pure rotation thresholds: the renewal point (fraction of lifetime with
 * jitter), the "reuse while more than half remains" rule, and the sync backoff.
 */
import { describe, expect, it } from "vitest";
import { exponentialBackoffMs, MAX_SYNC_BACKOFF_MS, nextSyncDelayMs, syncBackoffCapMs } from "../../../../agent/rotation/backoff.js";
import { renewAt, shouldRenew } from "../../../../agent/rotation/renew-at.js";

const MIN = 60_000;
const HOUR = 60 * MIN;
const T0 = new Date("2030-01-01T00:00:00Z");
const at = (ms: number) => new Date(T0.getTime() + ms);

describe("renewAt", () => {
  it.each([
    // [lifetime, fraction, jitter, random, expected offset from notBefore]
    ["1h at half life, no jitter", HOUR, 0.5, 0, 0.3, 30 * MIN],
    ["1h, random 0.5 is the exact point", HOUR, 0.5, 0.1, 0.5, 30 * MIN],
    ["1h, random 0 is 10% earlier", HOUR, 0.5, 0.1, 0, 27 * MIN],
    ["1h, random 1 is 10% later", HOUR, 0.5, 0.1, 1, 33 * MIN],
    ["1h, random 0.75 is 5% later", HOUR, 0.5, 0.1, 0.75, 31.5 * MIN],
    ["24h at two thirds", 24 * HOUR, 2 / 3, 0, 0.9, 16 * HOUR],
    ["fraction 0.9 with jitter 0.5 is clamped to notAfter", HOUR, 0.9, 0.5, 1, HOUR],
    ["2s lifetime rounds to whole ms", 2000, 0.5, 0.1, 0.123, 1000 + Math.round(1000 * 0.1 * (2 * 0.123 - 1))],
  ])("%s", (_name, lifetime, fraction, jitter, random, offset) => {
    expect(renewAt(T0, at(lifetime), fraction, jitter, random)).toEqual(at(offset));
  });

  it("renews at once when the validity is empty or inverted", () => {
    expect(renewAt(T0, T0, 0.5, 0.1, 0.5)).toEqual(T0);
    expect(renewAt(T0, at(-1), 0.5, 0.1, 0.5)).toEqual(T0);
  });

  it.each([
    ["fraction 0", 0, 0.1, 0.5, /fraction 0 is outside \(0, 1\)/],
    ["fraction 1", 1, 0.1, 0.5, /fraction 1 is outside/],
    ["fraction NaN", Number.NaN, 0.1, 0.5, /fraction NaN/],
    ["negative jitter", 0.5, -0.1, 0.5, /jitter fraction -0.1 is outside \[0, 1\)/],
    ["jitter 1", 0.5, 1, 0.5, /jitter fraction 1/],
    ["random above 1", 0.5, 0.1, 1.5, /random 1.5 is outside \[0, 1\]/],
  ])("rejects %s", (_name, fraction, jitter, random, message) => {
    expect(() => renewAt(T0, at(HOUR), fraction, jitter, random)).toThrow(message);
  });
});

describe("shouldRenew", () => {
  it.each([
    ["fresh", 0, 0.5, false],
    ["just before half life", 30 * MIN - 1, 0.5, false],
    ["at half life", 30 * MIN, 0.5, true],
    ["after half life", 45 * MIN, 0.5, true],
    ["expired", HOUR, 0.5, true],
    ["before 80% with fraction 0.8", 47 * MIN, 0.8, false],
    ["at 80% with fraction 0.8", 48 * MIN, 0.8, true],
  ])("%s", (_name, offset, fraction, want) => {
    expect(shouldRenew(at(offset), T0, at(HOUR), fraction)).toBe(want);
  });

  it("renews an SVID with an empty lifetime", () => {
    expect(shouldRenew(at(-HOUR), T0, T0, 0.5)).toBe(true);
  });

  it("rejects a fraction outside (0, 1)", () => {
    expect(() => shouldRenew(T0, T0, at(HOUR), 1)).toThrow(/^rotation: fraction 1/);
  });
});

describe("sync backoff", () => {
  it.each([
    // [interval, failures, delay]
    [5_000, 0, 5_000],
    [5_000, 1, 10_000],
    [5_000, 3, 40_000],
    [5_000, 5, 160_000],
    [5_000, 6, 240_000], // cap: 48 × 5s = 4m
    [5_000, 100, 240_000],
    [5_000, 5000, 240_000], // 2^5000 is Infinity; still the cap
    [30_000, 4, 480_000], // 48 × 30s = 24m, capped at 8m
    [30_000, 10, MAX_SYNC_BACKOFF_MS],
    [1_000, 10, 48_000],
  ])("interval %ims after %i failures waits %ims", (interval, failures, delay) => {
    expect(nextSyncDelayMs(interval, failures)).toBe(delay);
  });

  it.each([
    [5_000, 240_000],
    [10_000, 480_000],
    [60_000, 480_000],
    [20 * MIN, 20 * MIN], // never below the interval itself
  ])("cap for interval %ims is %ims", (interval, cap) => {
    expect(syncBackoffCapMs(interval)).toBe(cap);
  });

  it.each([
    [-1, 1000, 2000],
    [1.5, 1000, 2000],
    [1, 0, 2000],
    [1, 1000, 999],
  ])("rejects failures %d, base %d, cap %d", (failures, base, cap) => {
    expect(() => exponentialBackoffMs(failures, base, cap)).toThrow(/^backoff: /);
  });
});
