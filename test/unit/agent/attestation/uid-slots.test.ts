/**
 * Attestation slots per uid: one user's calls wait for that user's own
 * earlier attestations, never for another user's.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { createUidSlots } from "../../../../agent/attestation/uid-slots.js";

afterEach(() => {
  vi.useRealTimers();
});

describe("createUidSlots", () => {
  it("gives a uid up to its slots at once; the next waits for a release, in order", async () => {
    const slots = createUidSlots(2);
    const a = await slots.acquire(1000, 5_000);
    const b = await slots.acquire(1000, 5_000);
    const order: string[] = [];
    const c = slots.acquire(1000, 5_000).then((r) => (order.push("c"), r));
    const d = slots.acquire(1000, 5_000).then((r) => (order.push("d"), r));
    await Promise.resolve();
    expect(order).toEqual([]);
    a?.();
    expect(await c).toBeTypeOf("function");
    expect(order).toEqual(["c"]);
    b?.();
    expect(await d).toBeTypeOf("function");
    expect(order).toEqual(["c", "d"]);
  });

  it("another uid is never held up by a uid that uses all its slots", async () => {
    vi.useFakeTimers();
    const slots = createUidSlots(1);
    await slots.acquire(65534, 5_000);
    const waiting = slots.acquire(65534, 5_000);
    expect(await slots.acquire(1000, 5_000)).toBeTypeOf("function");
    void waiting;
  });

  it("a caller that gets no slot within the timeout is told so and leaves the line", async () => {
    vi.useFakeTimers();
    const slots = createUidSlots(1);
    const held = await slots.acquire(65534, 5_000);
    const late = slots.acquire(65534, 1_000);
    vi.advanceTimersByTime(1_000);
    expect(await late).toBeUndefined();
    // The one that gave up does not take the slot once it is released.
    const next = slots.acquire(65534, 5_000);
    held?.();
    expect(await next).toBeTypeOf("function");
  });

  it("releasing twice frees one slot only", async () => {
    vi.useFakeTimers();
    const slots = createUidSlots(1);
    const first = await slots.acquire(7, 5_000);
    const second = slots.acquire(7, 5_000);
    const third = slots.acquire(7, 5_000);
    let thirdDone = false;
    void third.then(() => (thirdDone = true));
    first?.();
    first?.();
    await second;
    await Promise.resolve();
    expect(thirdDone).toBe(false);
  });
});
