/**
 * Follows a child process's JSON-line log (stdout) and stderr, as the
 * integration helpers for server and agent processes both need.
 */
import type { ChildProcess } from "node:child_process";

/** One parsed log record. */
export type LogRecord = Record<string, unknown>;

/** The records read so far, and a way to wait for one. */
export interface JsonLogFollower {
  /** Every JSON record written so far, in order (lines that are not JSON are skipped). */
  readonly logs: LogRecord[];
  /** Everything written to stderr so far. */
  stderr(): string;
  /**
   * Resolves with the first record (already read or still to come) that
   * matches; rejects after `timeoutMs`, or when the process exits first.
   */
  waitForLog(match: (r: LogRecord) => boolean, timeoutMs: number, what: string): Promise<LogRecord>;
}

/** Starts following `child`'s stdout (JSON lines) and stderr. */
export function followJsonLog(child: ChildProcess): JsonLogFollower {
  const logs: LogRecord[] = [];
  const waiters = new Set<{ match: (r: LogRecord) => boolean; resolve: (r: LogRecord) => void }>();
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  let buf = "";
  child.stdout?.on("data", (d: Buffer) => {
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let rec: LogRecord;
      try {
        rec = JSON.parse(line) as LogRecord;
      } catch {
        continue; // not JSON
      }
      logs.push(rec);
      for (const w of waiters) {
        if (w.match(rec)) {
          waiters.delete(w);
          w.resolve(rec);
        }
      }
    }
  });
  return {
    logs,
    stderr: () => stderr,
    waitForLog: (match, timeoutMs, what) =>
      new Promise((resolve, reject) => {
        const found = logs.find(match);
        if (found) return resolve(found);
        const w = { match, resolve };
        waiters.add(w);
        child.once("exit", (code) => {
          if (waiters.delete(w)) reject(new Error(`${what}: the process exited with ${code} first; stderr: ${stderr}`));
        });
        setTimeout(() => {
          if (waiters.delete(w)) reject(new Error(`${what}: no such log record in ${timeoutMs} ms; stderr: ${stderr}`));
        }, timeoutMs).unref();
      }),
  };
}
