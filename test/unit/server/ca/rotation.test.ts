import { describe, expect, it } from "vitest";
import { activateAt, maxUsefulSvidTtlMs, prepareAt, rotationAction } from "../../../../server/ca/rotation.js";

const H = 3600_000;
const D = 24 * H;
const t0 = new Date("2026-01-01T00:00:00Z");
const at = (ms: number) => new Date(t0.getTime() + ms);

describe("CA rotation thresholds", () => {
  it("a 24h CA prepares at +12h and activates at +20h", () => {
    expect(prepareAt(t0, at(24 * H))).toEqual(at(12 * H));
    expect(activateAt(t0, at(24 * H))).toEqual(at(20 * H));
  });

  it("long-lived CAs cap the thresholds at 30d and 7d before expiry", () => {
    const end = at(365 * D);
    expect(prepareAt(t0, end)).toEqual(at(335 * D));
    expect(activateAt(t0, end)).toEqual(at(358 * D));
  });

  it.each([
    [0, false, "none"],
    [11 * H + 59 * 60_000, false, "none"],
    [12 * H, false, "prepare"],
    [12 * H, true, "none"],
    [19 * H, true, "none"],
    [20 * H, true, "activate"],
    [20 * H, false, "prepare"],
    [23 * H, true, "activate"],
  ] as const)("at +%dms with successor=%s the action is %s", (offset, prepared, expected) => {
    expect(rotationAction(t0, at(24 * H), at(offset), prepared)).toBe(expected);
  });

  it("the longest useful SVID TTL is min(ca_ttl/6, 7d)", () => {
    expect(maxUsefulSvidTtlMs(24 * H)).toBe(4 * H);
    expect(maxUsefulSvidTtlMs(365 * D)).toBe(7 * D);
  });
});
