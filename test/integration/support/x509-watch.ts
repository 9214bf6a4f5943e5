/**
 * A workload that keeps a FetchX509SVID stream open and prints each update
 * (its SVIDs' IDs and the first SVID's chain) and each error as a JSON line,
 * until a stop file appears; and a bounded wait for a condition on what it
 * printed. The taint tests use it to see which CA signed what a workload holds.
 */
import { runWorkload, type WorkloadResult } from "./agent-process.js";

/** One line a watching workload printed. */
export type WatchEvent =
  | {
      readonly t: "update";
      readonly at: number;
      readonly ids: string[];
      /** The first SVID's leaf, DER in base64. */
      readonly leaf: string;
      /** The first SVID's chain as served: leaf, then intermediates (DER in base64). */
      readonly chain: string[];
    }
  | { readonly t: "error"; readonly at: number; readonly code: string; readonly message: string };

/** An update line. */
export type WatchUpdate = Extract<WatchEvent, { t: "update" }>;

/** A running watcher started by {@link watchX509}. */
export interface X509Watch {
  /** What it printed so far. */
  events(): WatchEvent[];
  /** Resolves when the workload has exited (after the stop file appears, or on failure). */
  readonly result: Promise<WorkloadResult>;
  /** Resolves once `done` holds of the events; rejects after 40 s (a bound for a failing run, not a timing assertion). */
  until(done: (e: WatchEvent[]) => boolean, what: string): Promise<void>;
}

/** A workload body that watches FetchX509SVID, prints each update and error as a JSON line, and stops once `stopFile` exists. */
function watchBody(stopFile: string): string {
  return `const { existsSync } = await import("node:fs");
  const b64 = (d) => Buffer.from(d).toString("base64");
  await new Promise((resolve) => {
    const w = client.watchX509Context(
      (ctx) => console.log(JSON.stringify({ t: "update", at: Date.now(), ids: ctx.svids.map((s) => s.id.toString()), leaf: b64(ctx.svids[0].certificateDers[0]), chain: ctx.svids[0].certificateDers.map(b64) })),
      (e) => console.log(JSON.stringify({ t: "error", at: Date.now(), code: e.code, message: e.message })),
    );
    const poll = setInterval(() => {
      if (!existsSync(${JSON.stringify(stopFile)})) return;
      clearInterval(poll);
      w.close();
      resolve();
    }, 100);
  });`;
}

const parse = (stdout: string): WatchEvent[] =>
  stdout
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as WatchEvent);

/** Starts a workload on the agent socket `socketPath` that watches its X.509 context until `stopFile` exists (at most 120 s). */
export function watchX509(socketPath: string, stopFile: string): X509Watch {
  let out = "";
  const waiters = new Set<() => void>();
  const result = runWorkload(socketPath, watchBody(stopFile), undefined, 120_000, (all) => {
    out = all;
    for (const w of [...waiters]) w();
  });
  return {
    events: () => parse(out),
    result,
    until: (done, what) =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          if (!done(parse(out))) return;
          waiters.delete(check);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`gave up waiting for ${what}; events so far: ${out}`));
        }, 40_000);
        waiters.add(check);
        check();
      }),
  };
}
