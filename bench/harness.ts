/**
 * Benchmark harness. Each benchmark measures its figure next to a raw baseline
 * in the same run, as the median of several interleaved passes, and has one of
 * two kinds of target, named on its PASS/FAIL line:
 *
 * - `ratio`: figure / baseline against a bound. Both are measured on the same
 *   machine in the same run, so its speed (which varies 15–35% between
 *   passes) cancels out.
 * - `absolute`: the figure itself against a fixed bound (ms, MB). A slower or
 *   busier machine can miss it; the baseline and ratio are printed for
 *   information only.
 */
import { readdirSync, readFileSync } from "node:fs";

/** Runs `fn` repeatedly for about `ms` milliseconds; returns operations per second. */
export function rateSync(fn: () => void, ms = 1000): number {
  // Warm up so JIT and caches settle before timing.
  const warmEnd = performance.now() + Math.min(200, ms / 4);
  while (performance.now() < warmEnd) fn();
  let n = 0;
  const start = performance.now();
  const end = start + ms;
  let now = start;
  while (now < end) {
    for (let i = 0; i < 16; i++) fn();
    n += 16;
    now = performance.now();
  }
  return (n * 1000) / (now - start);
}

/** Async variant: `fn` completes `batch` operations per call. */
export async function rateAsync(fn: () => Promise<number>, ms = 1000): Promise<number> {
  const warmEnd = performance.now() + Math.min(200, ms / 4);
  while (performance.now() < warmEnd) await fn();
  let n = 0;
  const start = performance.now();
  let now = start;
  while (now < start + ms) {
    n += await fn();
    now = performance.now();
  }
  return (n * 1000) / (now - start);
}

/** Median of numbers. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/** Percentile (0..100) of numbers, nearest-rank. */
export function percentile(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const idx = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[idx] as number;
}

/** A comparison a target makes: `figure <op> bound`. */
export type BenchComparison = "<" | "<=" | ">=";

/** What a benchmark's figure must meet (see the module comment). */
export interface BenchTarget {
  readonly kind: "ratio" | "absolute";
  readonly op: BenchComparison;
  readonly bound: number;
}

/** A baseline measured in the same run, and what it is. */
export interface BenchBaseline {
  readonly value: number;
  readonly unit: string;
  readonly what: string;
}

interface BenchFigure {
  readonly name: string;
  /** The measured figure (ops/s, ms, MB…). */
  readonly value: number;
  readonly unit: string;
}

/** One benchmark's result. A ratio target needs a baseline; an absolute one prints it when given. */
export type BenchResult = BenchFigure &
  (
    | { readonly target: BenchTarget & { readonly kind: "ratio" }; readonly baseline: BenchBaseline }
    | { readonly target: BenchTarget & { readonly kind: "absolute" }; readonly baseline?: BenchBaseline }
  );

/** Formats a figure with 3 significant digits (small latencies stay readable). */
function fmt(x: number): string {
  return Math.abs(x) >= 1000 ? x.toFixed(0) : x.toPrecision(3);
}

function meets(x: number, op: BenchComparison, bound: number): boolean {
  if (!Number.isFinite(x)) return false;
  return op === "<" ? x < bound : op === "<=" ? x <= bound : x >= bound;
}

/**
 * Prints a result as one stable, greppable line plus JSON, e.g.
 * `PASS x509-svid-issue-template: 5130 SVIDs/s baseline=12400 ops/s (…) ratio=0.414 | ratio target: figure/baseline >= 0.35 (both measured in this run)`
 * or `PASS server-rss-100k-entries: 312 MB baseline=… ratio=3.66 | absolute target: < 500 MB (baseline and ratio for information only)`.
 * A missed target (or a figure that is not a number) prints FAIL and sets a non-zero exit code.
 * Returns whether the target was met.
 */
export function report(r: BenchResult): boolean {
  const ratio = r.baseline === undefined ? undefined : r.value / r.baseline.value;
  const t = r.target;
  const pass = t.kind === "ratio" ? ratio !== undefined && meets(ratio, t.op, t.bound) : meets(r.value, t.op, t.bound);
  const base = r.baseline === undefined ? "" : ` baseline=${fmt(r.baseline.value)} ${r.baseline.unit} (${r.baseline.what}) ratio=${fmt(ratio as number)}`;
  const target =
    t.kind === "ratio"
      ? `ratio target: figure/baseline ${t.op} ${t.bound} (both measured in this run)`
      : `absolute target: ${t.op} ${t.bound} ${r.unit}${r.baseline === undefined ? "" : " (baseline and ratio for information only)"}`;
  console.log(`${pass ? "PASS" : "FAIL"} ${r.name}: ${fmt(r.value)} ${r.unit}${base} | ${target}`);
  console.log(`BENCH_JSON ${JSON.stringify({ ...r, ratio, pass })}`);
  if (!pass) process.exitCode = 1;
  return pass;
}

/** CPU time (ms) of each thread of a process, from /proc (Linux only; empty elsewhere). */
export function threadCpuMs(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      out.set(tid, ((Number(f[11]) + Number(f[12])) * 1000) / CLOCK_TICKS);
    } catch {
      // The thread ended between listing and reading.
    }
  }
  return out;
}
const CLOCK_TICKS = 100;

/** Share of one core each of the busiest threads used between two {@link threadCpuMs} readings. */
export function threadShares(before: Map<string, number>, after: Map<string, number>, wallMs: number, top = 3): number[] {
  return [...after]
    .map(([tid, ms]) => (ms - (before.get(tid) ?? 0)) / wallMs)
    .sort((a, b) => b - a)
    .slice(0, top);
}
