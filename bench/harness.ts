/**
 * Benchmark harness. Every figure is printed as a ratio against a raw baseline
 * measured in the same run (machines vary 15–35% between passes), as the median
 * of several interleaved passes.
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

/** One benchmark's result line. */
export interface BenchResult {
  readonly name: string;
  /** The measured figure (ops/s, ms, MB…). */
  readonly value: number;
  readonly unit: string;
  /** Baseline measured in the same run, and its description. */
  readonly baseline?: { readonly value: number; readonly unit: string; readonly what: string };
  /** value / baseline (or the figure compared against the target). */
  readonly ratio?: number;
  /** Human-readable target, e.g. ">= 0.35". */
  readonly target: string;
  readonly pass: boolean;
}

/** Formats a figure with 3 significant digits (small latencies stay readable). */
function fmt(x: number): string {
  return Math.abs(x) >= 1000 ? x.toFixed(0) : x.toPrecision(3);
}

/** Prints a result in one stable, greppable line plus JSON. */
export function report(r: BenchResult): void {
  const base = r.baseline ? ` baseline=${fmt(r.baseline.value)} ${r.baseline.unit} (${r.baseline.what})` : "";
  const ratio = r.ratio === undefined ? "" : ` ratio=${fmt(r.ratio)}`;
  console.log(`${r.pass ? "PASS" : "FAIL"} ${r.name}: ${fmt(r.value)} ${r.unit}${base}${ratio} target ${r.target}`);
  console.log(`BENCH_JSON ${JSON.stringify(r)}`);
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
