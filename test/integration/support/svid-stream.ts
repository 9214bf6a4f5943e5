/**
 * A workload that holds the Workload API's X.509 stream open through a fault
 * (a server killed, the database restarted) and records every update, and
 * the checks a user would make of what it saw: the SVIDs it was handed were
 * valid when handed out, and each was replaced before it expired.
 */
import { expect } from "vitest";
import { runWorkload, type WorkloadResult } from "./agent-process.js";

/** One update of the stream: when it arrived and the SVIDs it held. */
export interface SvidUpdate {
  readonly at: number;
  readonly svids: readonly { id: string; serial: string; notAfter: number }[];
}

/** A running workload started by {@link watchSvids}. */
export interface SvidWatch {
  /** Resolves at the first update. */
  readonly first: Promise<void>;
  /** Resolves when the workload has exited (done, failed, timed out or aborted). */
  readonly result: Promise<WorkloadResult>;
}

/**
 * Runs a workload on `socketPath` that watches its X.509 context until it
 * has seen `renewals` distinct serials of the SVID whose ID ends with
 * `renewed` and an SVID whose ID ends with `until`; it then prints DONE.
 * Aborting `signal` kills it.
 */
export function watchSvids(socketPath: string, opts: { renewed: string; renewals: number; until: string; timeoutMs: number; signal?: AbortSignal }): SvidWatch {
  let onFirst: () => void = () => undefined;
  const first = new Promise<void>((r) => (onFirst = r));
  const result = runWorkload(
    socketPath,
    `const serials = new Set();
     await new Promise((resolve, reject) => {
       const w = client.watchX509Context((ctx) => {
         const svids = ctx.svids.map((s) => ({ id: s.id.toString(), serial: s.leaf.serialNumber, notAfter: Date.parse(s.leaf.validTo) }));
         console.log(JSON.stringify({ at: Date.now(), svids }));
         for (const s of svids) if (s.id.endsWith(${JSON.stringify(opts.renewed)})) serials.add(s.serial);
         if (svids.some((s) => s.id.endsWith(${JSON.stringify(opts.until)})) && serials.size >= ${opts.renewals}) { w.close(); resolve(); }
       }, (e, info) => { if (info.terminal) reject(e); });
     });
     console.log("DONE");`,
    undefined,
    opts.timeoutMs,
    (out) => {
      if (out.includes("svids")) onFirst();
    },
    opts.signal,
  );
  return { first, result };
}

/** The updates a {@link watchSvids} workload printed. */
export function svidUpdates(stdout: string): SvidUpdate[] {
  return stdout
    .split("\n")
    .filter((l) => l.startsWith('{"at"'))
    .map((l) => JSON.parse(l) as SvidUpdate);
}

/**
 * Asserts the workload finished (`context` explains a failure), that every
 * SVID it was handed was unexpired when handed out, and that the SVID whose
 * ID ends with `renewed` was always replaced before it expired.
 */
export function expectNeverExpired(result: WorkloadResult, renewed: string, context = ""): SvidUpdate[] {
  expect(result.stdout.includes("DONE"), `${result.stdout}\n${result.stderr}\n${context}`).toBe(true);
  const updates = svidUpdates(result.stdout);
  for (const u of updates) for (const s of u.svids) expect(s.notAfter, `${s.id} handed out expired`).toBeGreaterThan(u.at);
  const renewedAt = updates.map((u) => ({ at: u.at, notAfter: u.svids.find((s) => s.id.endsWith(renewed))?.notAfter ?? 0 }));
  for (let i = 1; i < renewedAt.length; i++) expect(renewedAt[i - 1]!.notAfter, `${renewed} expired before it was replaced`).toBeGreaterThan(renewedAt[i]!.at);
  return updates;
}
