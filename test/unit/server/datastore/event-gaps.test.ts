import { describe, expect, it } from "vitest";
import { EventGapTracker, MAX_TRACKED_GAPS } from "../../../../server/datastore/event-gaps.js";

describe("EventGapTracker", () => {
  it("accepts IDs above the start in order, with no gaps", () => {
    const t = new EventGapTracker(5, 1000);
    expect([6, 7, 8].map((id) => t.accept(id, 0))).toEqual([true, true, true]);
    expect(t.high).toBe(8);
    expect(t.gaps()).toEqual([]);
    expect(t.readAfter()).toBe(8);
  });

  it("refuses IDs at or below the start, repeats, and non-positive IDs", () => {
    const t = new EventGapTracker(5, 1000);
    expect(t.accept(5, 0)).toBe(false);
    expect(t.accept(3, 0)).toBe(false);
    expect(t.accept(6, 0)).toBe(true);
    expect(t.accept(6, 0)).toBe(false);
    expect(t.accept(0, 0)).toBe(false);
    expect(t.accept(-1, 0)).toBe(false);
  });

  it("an ID seen before a lower one opens gaps; reading starts below the lowest gap; a late ID fills its gap once", () => {
    const t = new EventGapTracker(10, 1000);
    expect(t.accept(13, 0)).toBe(true);
    expect(t.gaps()).toEqual([11, 12]);
    expect(t.readAfter()).toBe(10);
    expect(t.accept(12, 100)).toBe(true);
    expect(t.accept(12, 100)).toBe(false);
    expect(t.gaps()).toEqual([11]);
    expect(t.readAfter()).toBe(10);
    expect(t.accept(11, 200)).toBe(true);
    expect(t.readAfter()).toBe(13);
  });

  it("gives up a gap after the timeout (a rolled-back or retried transaction), not before", () => {
    const t = new EventGapTracker(0, 1000);
    t.accept(3, 0);
    expect(t.expire(999).ids).toEqual([]);
    t.accept(5, 500);
    expect(t.expire(1000).ids).toEqual([1, 2]);
    expect(t.gaps()).toEqual([4]);
    // A given-up ID that shows up after all is not delivered.
    expect(t.accept(1, 1001)).toBe(false);
    expect(t.expire(1500).ids).toEqual([4]);
    expect(t.readAfter()).toBe(5);
  });

  it("tracks at most MAX_TRACKED_GAPS gaps on a huge jump, without walking every skipped ID", () => {
    const t = new EventGapTracker(0, 1000);
    expect(t.accept(1_000_000_000, 0)).toBe(true);
    expect(t.gaps().length).toBe(MAX_TRACKED_GAPS);
    expect(t.gaps()[0]).toBe(1_000_000_000 - MAX_TRACKED_GAPS);
    expect(t.readAfter()).toBe(1_000_000_000 - MAX_TRACKED_GAPS - 1);
  });

  it("refuses a bad start or timeout", () => {
    expect(() => new EventGapTracker(-1, 1)).toThrow(/start/);
    expect(() => new EventGapTracker(0, -1)).toThrow(/timeoutMs/);
  });
});
