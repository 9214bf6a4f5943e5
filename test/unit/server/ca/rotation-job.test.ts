/**
 * The CA rotation job across a failed step: a step that fails while the
 * database restarts marks the server unhealthy (`onFailure`), and the next
 * step that succeeds marks it healthy again (`onRecovery`) — once, not after
 * every later step. Steps are run with rotateNow(), never on the timer.
 *
 * On the timer (fake timers): a step runs when the manager's next due instant
 * comes, not on the next 10 s tick, and at the latest every 10 s.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { SigilError } from "../../../../spiffe/errors.js";
import type { CaManager } from "../../../../server/ca/manager.js";
import { CaRotationJob } from "../../../../server/ca/rotation-job.js";

describe("CaRotationJob", () => {
  it("reports the first successful step after a failed one, so a transient database failure does not leave the server unhealthy", async () => {
    const outcomes = ["ok", "fail", "fail", "ok", "ok"];
    const manager = {
      msUntilNextRotation: () => undefined,
      rotate: async () => {
        if (outcomes.shift() === "fail") throw new SigilError("ERR_UNAVAILABLE", "datastore: the database connection was lost");
      },
    } as unknown as CaManager;
    const calls: string[] = [];
    const lines: Record<string, unknown>[] = [];
    const log = createLogger({ level: "info", destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) } });
    const job = new CaRotationJob({
      ca: { manager },
      afterRotation: () => calls.push("after"),
      onFailure: () => calls.push("failure"),
      onRecovery: () => calls.push("recovery"),
      log,
    });
    for (let i = 0; i < 5; i++) await job.rotateNow();
    expect(calls).toEqual(["after", "failure", "failure", "after", "recovery", "after"]);
    expect(lines.map((l) => l.msg)).toEqual(["ca: rotation failed", "ca: rotation failed", "ca: rotation succeeded again"]);
    await job.stop();
  });

  describe("on the timer", () => {
    afterEach(() => vi.useRealTimers());
    const quietLog = createLogger({ level: "error", destination: { write: () => undefined } });

    /** A job over a manager whose steps count themselves (and fail with `fail`), next due per `dueIn(steps)`. */
    function countingJob(opts: { dueIn?: (steps: number) => number | undefined; fail?: boolean } = {}) {
      const counted = { steps: 0 };
      const manager = {
        msUntilNextRotation: () => opts.dueIn?.(counted.steps),
        rotate: async () => {
          counted.steps += 1;
          if (opts.fail === true) throw new SigilError("ERR_UNAVAILABLE", "keymanager: the KMS is unreachable");
        },
      } as unknown as CaManager;
      const job = new CaRotationJob({ ca: { manager }, afterRotation: () => undefined, onFailure: () => undefined, log: quietLog });
      return { job, counted };
    }

    it("runs a step when the next instant is due (activation 300 ms away), not on the next 10 s tick, and every 10 s when nothing is due", async () => {
      vi.useFakeTimers();
      const { job, counted } = countingJob({ dueIn: (steps) => (steps === 0 ? 300 : undefined) });
      job.start();
      await vi.advanceTimersByTimeAsync(299);
      expect(counted.steps).toBe(0);
      // Due at 300 ms, run 250 ms after (the slack between wall-clock instants and the timer's clock).
      await vi.advanceTimersByTimeAsync(300);
      expect(counted.steps).toBe(1);
      await vi.advanceTimersByTimeAsync(9_800);
      expect(counted.steps).toBe(1);
      await vi.advanceTimersByTimeAsync(300);
      expect(counted.steps).toBe(2);
      await job.stop();
      await vi.advanceTimersByTimeAsync(30_000);
      expect(counted.steps).toBe(2);
    });

    it("runSoon while steps fail (a key manager down) leaves the retry to the timer: one step per 10 s, not one per signing request", async () => {
      vi.useFakeTimers();
      const { job, counted } = countingJob({ fail: true });
      job.start();
      job.runSoon();
      await vi.advanceTimersByTimeAsync(1);
      expect(counted.steps).toBe(1);
      for (let i = 0; i < 20; i++) {
        job.runSoon();
        await vi.advanceTimersByTimeAsync(1);
      }
      expect(counted.steps).toBe(1);
      await vi.advanceTimersByTimeAsync(10_000);
      expect(counted.steps).toBe(2);
      await job.stop();
    });

    it("runSoon (a signing request found the active authority expired) runs one step at once for any number of callers", async () => {
      vi.useFakeTimers();
      const { job, counted } = countingJob();
      job.start();
      job.runSoon();
      job.runSoon();
      job.runSoon();
      await vi.advanceTimersByTimeAsync(1);
      expect(counted.steps).toBe(1);
      await job.stop();
    });
  });
});
