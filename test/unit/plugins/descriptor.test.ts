/**
 * Closing plugin instances (plugins/descriptor.ts): reverse order of creation,
 * a failing close logged while the others still close, each close given a
 * time limit so a stop cannot hang on one plugin, each instance closed once.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { createLogger } from "../../../common/log.js";
import { closePlugins, OwnedPlugins, PLUGIN_CLOSE_TIMEOUT_MS } from "../../../plugins/descriptor.js";

afterEach(() => {
  vi.useRealTimers();
});

/** A logger whose records are kept. */
function recordingLog(): { log: ReturnType<typeof createLogger>; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = [];
  return { log: createLogger({ level: "info", destination: { write: (line: string) => void records.push(JSON.parse(line) as Record<string, unknown>) } }), records };
}

describe("closePlugins", () => {
  it("closes in reverse order; a failing close is logged (no secret in the record) and the rest still close", async () => {
    const { log, records } = recordingLog();
    const events: string[] = [];
    await closePlugins(
      [
        { name: "a", close: () => void events.push("a") },
        { name: "no-close" },
        { name: "b", close: () => Promise.reject(new Error("b: cannot close -----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----")) },
        undefined,
        { name: "c", close: async () => void events.push("c") },
      ],
      log,
    );
    expect(events).toEqual(["c", "a"]);
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ msg: "Plugin failed to close", plugin: "b" });
    expect(JSON.stringify(records)).not.toContain("MIGHAgEAMBMGByqGSM49");
  });

  it("a close that never settles does not hold the stop up: it is logged after the time limit and the others still close", async () => {
    vi.useFakeTimers();
    const { log, records } = recordingLog();
    const events: string[] = [];
    let settled = false;
    const closing = closePlugins(
      [{ name: "first", close: () => void events.push("first") }, { name: "stuck", close: () => new Promise<void>(() => undefined) }],
      log,
    ).then(() => {
      settled = true;
    });
    await vi.advanceTimersByTimeAsync(PLUGIN_CLOSE_TIMEOUT_MS - 1);
    expect(settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await closing;
    expect(events).toEqual(["first"]);
    expect(records).toEqual([expect.objectContaining({ msg: "Plugin did not close in time; going on without it", plugin: "stuck", timeout_ms: PLUGIN_CLOSE_TIMEOUT_MS })]);
  });

  it("a close that fails after its time limit is still logged, never an unhandled rejection", async () => {
    vi.useFakeTimers();
    const { log, records } = recordingLog();
    let reject: (e: Error) => void = () => undefined;
    const closing = closePlugins([{ name: "late", close: () => new Promise<void>((_, r) => (reject = r)) }], log);
    await vi.advanceTimersByTimeAsync(PLUGIN_CLOSE_TIMEOUT_MS);
    await closing;
    vi.useRealTimers();
    const unhandled = vi.fn();
    process.on("unhandledRejection", unhandled);
    try {
      reject(new Error("late: failed"));
      await new Promise((r) => setTimeout(r, 20));
      expect(unhandled).not.toHaveBeenCalled();
      expect(records.map((r) => r["msg"])).toEqual(["Plugin did not close in time; going on without it", "Plugin failed to close"]);
    } finally {
      process.off("unhandledRejection", unhandled);
    }
  });
});

describe("OwnedPlugins", () => {
  it("closes what it recorded once: a second close (a double stop) closes nothing again", async () => {
    const { log } = recordingLog();
    const closed: string[] = [];
    const owned = new OwnedPlugins(log);
    owned.add([{ name: "a", close: () => void closed.push("a") }, { name: "b", close: () => void closed.push("b") }]);
    await owned.close();
    await owned.close();
    expect(closed).toEqual(["b", "a"]);
  });

  it("a start that fails closes what was recorded, then rethrows", async () => {
    const { log } = recordingLog();
    const closed: string[] = [];
    const owned = new OwnedPlugins(log);
    await expect(
      owned.starting(async () => {
        owned.add([{ name: "a", close: () => void closed.push("a") }]);
        throw new Error("cannot listen");
      }),
    ).rejects.toThrow("cannot listen");
    expect(closed).toEqual(["a"]);
    await owned.close();
    expect(closed).toEqual(["a"]);
  });
});
