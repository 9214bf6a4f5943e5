import { describe, expect, it } from "vitest";
import { z } from "zod";
import { duration, formatDuration, parseDuration, tryParseDuration } from "../../../../common/config/duration.js";
import { isSigilError } from "../../../../spiffe/errors.js";

describe("parseDuration (Go time.ParseDuration grammar)", () => {
  it.each([
    ["1h", 3_600_000],
    ["90m", 5_400_000],
    ["1h30m", 5_400_000],
    ["500ms", 500],
    ["1.5h", 5_400_000],
    [".5s", 500],
    ["2h45m30s", 9_930_000],
    ["1us", 0.001],
    ["1µs", 0.001],
    ["1000000ns", 1],
    ["0", 0],
    ["-2m", -120_000],
  ])("%s → %d ms", (text, ms) => {
    expect(parseDuration(text)).toBeCloseTo(ms, 9);
  });

  it.each(["1 hour", "10", "", "h", "1hm", "1d", "2d", "1h 30m", "1H", "--1h", "1.2.3s"])("rejects %j", (text) => {
    let caught: unknown;
    try {
      parseDuration(text);
    } catch (e) {
      caught = e;
    }
    expect(isSigilError(caught, "ERR_INVALID_ARGUMENT")).toBe(true);
    expect((caught as Error).message).toMatch(/^duration: /);
    expect(tryParseDuration(text)).toBeUndefined();
  });

  it("suggests hours for days, since Go has no d unit", () => {
    expect(() => parseDuration("2d")).toThrow('write "48h"');
  });

  it("formats milliseconds back to the short Go form", () => {
    expect([0, 500, 1_000, 90_000, 5_400_000, 86_400_000, 0.5].map(formatDuration)).toEqual(["0s", "500ms", "1s", "1m30s", "1h30m", "24h", "500us"]);
  });
});

describe("duration() schema", () => {
  const schema = z.strictObject({ ttl: duration().prefault("24h"), short: duration({ minMs: 1_000 }).optional() });

  it("parses to milliseconds and applies a string default", () => {
    expect(schema.parse({})).toEqual({ ttl: 86_400_000 });
    expect(schema.parse({ ttl: "1h30m", short: "2s" })).toEqual({ ttl: 5_400_000, short: 2_000 });
  });

  it("rejects bare numbers, negative values and values below the minimum", () => {
    const r = schema.safeParse({ ttl: 3600 });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.message).toContain("a duration must be a string with a unit, got the number 3600");
    expect(schema.safeParse({ ttl: "-1h" }).error?.issues[0]?.message).toContain("must not be negative");
    expect(schema.safeParse({ short: "500ms" }).error?.issues[0]?.message).toContain("below the minimum 1s");
  });
});
