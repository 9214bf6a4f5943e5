/**
 * The CA rotation job across a failed step: a step that fails while the
 * database restarts marks the server unhealthy (`onFailure`), and the next
 * step that succeeds marks it healthy again (`onRecovery`) — once, not after
 * every later step. Steps are run with rotateNow(), never on the timer.
 */
import { describe, expect, it } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { SigilError } from "../../../../spiffe/errors.js";
import type { CaManager } from "../../../../server/ca/manager.js";
import { CaRotationJob } from "../../../../server/ca/rotation-job.js";

describe("CaRotationJob", () => {
  it("reports the first successful step after a failed one, so a transient database failure does not leave the server unhealthy", async () => {
    const outcomes = ["ok", "fail", "fail", "ok", "ok"];
    const manager = {
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
});
