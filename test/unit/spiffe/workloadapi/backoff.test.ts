import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { backoffDelay, watchActionForStatus } from "../../../../spiffe/workloadapi/backoff.js";

describe("backoffDelay", () => {
  const policy = { initialDelayMs: 100, maxDelayMs: 1000, multiplier: 2 };
  it.each([
    [0, 0],
    [1, 100],
    [2, 200],
    [3, 400],
    [4, 800],
    [5, 1000],
    [50, 1000],
  ])("after %i consecutive failures waits %i ms", (failures, delay) => {
    expect(backoffDelay(policy, failures)).toBe(delay);
  });
  it("treats a multiplier below 1 as 1 (never shrinks)", () => {
    expect(backoffDelay({ ...policy, multiplier: 0.5 }, 3)).toBe(100);
  });
});

describe("watchActionForStatus", () => {
  it.each([
    [status.INVALID_ARGUMENT, "stop"],
    [status.UNIMPLEMENTED, "stop"],
    [status.UNAVAILABLE, "retry"],
    [status.PERMISSION_DENIED, "retry"],
    [status.OK, "retry"],
    [status.INTERNAL, "retry"],
    [status.UNAUTHENTICATED, "retry"],
  ])("status %i → %s", (code, action) => {
    expect(watchActionForStatus(code)).toBe(action);
  });
});
