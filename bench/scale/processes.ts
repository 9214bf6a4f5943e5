/**
 * The load harness's processes: `sigil-server run` processes on the bench
 * database (started by the harness itself, since a server loading 500,000
 * entries takes longer than the test helper's 30 s start limit), the
 * simulated-agent child processes, and what /proc says about them.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { followJsonLog, type JsonLogFollower } from "../../test/integration/support/json-log.js";
import { SERVER_CLI, testServerConfigYaml } from "../../test/integration/support/server-process.js";
import { closedLoopbackPort } from "../../test/support/ports.js";
import type { ScaleEngine } from "./database.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");

/** Waits for `child` to exit, sending `signal` first unless it already has. */
export function stopChild(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  return new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
    child.kill(signal);
  });
}

/** A `sigil-server run` process of the harness. */
export interface BenchServer {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly socketPath: string;
  readonly agentApiAddress: string;
  /** `http://127.0.0.1:<port>` of the health listener. */
  readonly healthUrl: string;
  /** Milliseconds from spawn to the "server started" log line. */
  readonly startedMs: number;
  readonly log: JsonLogFollower;
  /** SIGTERM, then SIGKILL after 15 s; removes the server's directory. */
  stop(): Promise<void>;
}

/** Starts a server on the bench database (with `nodeArgs` before the program, e.g. `--cpu-prof`); resolves at "server started" (up to `timeoutMs`). */
export async function startBenchServer(engine: ScaleEngine, url: string, timeoutMs: number, nodeArgs: readonly string[] = []): Promise<BenchServer> {
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-scale-"));
  const configPath = path.join(dir, "server.yaml");
  const socketPath = path.join(dir, "admin", "api.sock");
  const healthPort = await closedLoopbackPort();
  writeFileSync(
    configPath,
    testServerConfigYaml(dir, {
      keyManager: "memory",
      dataStore: { databaseType: engine, connectionString: url },
      // Thousands of simulated agents come from one address, so the per-source attestation limit is off; signing is measured, so its per-agent limit too.
      serverExtra: "  ratelimit:\n    attestation: false\n    signing: false\n",
      extraYaml: `health_checks:\n  listener_enabled: true\n  bind_address: 127.0.0.1\n  bind_port: ${healthPort}\n`,
    }),
  );
  const t0 = performance.now();
  // SIGIL_SERVER_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir /tmp/p") applies to every server of the run, as in the tests' server processes.
  const envArgs = (process.env.SIGIL_SERVER_NODE_ARGS ?? "").split(" ").filter(Boolean);
  const child = spawn(process.execPath, [...envArgs, ...nodeArgs, ...SERVER_CLI, "run", "--config", configPath], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  const log = followJsonLog(child);
  const stop = async (): Promise<void> => {
    const kill = setTimeout(() => child.kill("SIGKILL"), 15_000);
    await stopChild(child, "SIGTERM");
    clearTimeout(kill);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const started = await log.waitForLog((r) => r.msg === "server started", timeoutMs, "server start");
    return { child, pid: child.pid as number, socketPath, agentApiAddress: String(started.agent_api), healthUrl: `http://127.0.0.1:${healthPort}`, startedMs: performance.now() - t0, log, stop };
  } catch (e) {
    await stopChild(child, "SIGKILL");
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`${e instanceof Error ? e.message : String(e)}\n${log.stderr().slice(-2000)}`, { cause: e });
  }
}

/** Polls `url` until it answers 200; resolves with the milliseconds waited. */
export async function waitReady(url: string, timeoutMs: number): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(5000) });
      await r.arrayBuffer();
      if (r.status === 200) return performance.now() - t0;
    } catch {
      // Not listening yet.
    }
    if (performance.now() - t0 > timeoutMs) throw new Error(`bench: ${url} not ready after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** CPU time (ms, user + system, every thread) of a process, from /proc/<pid>/stat. */
export function processCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 of the line, the 12th and 13th after the command name; 100 ticks a second.
  return (Number(f[11]) + Number(f[12])) * 10;
}

/** Resident set size (MB) of a process, from /proc/<pid>/status. */
export function processRssMb(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** One window's figures from a simulated-agents process (see bench/support/sim-agents-child.ts). */
export interface SimReport {
  readonly syncs: number;
  readonly deltas: number;
  readonly full: number;
  readonly notices: number;
  readonly svids: number;
  readonly renewals: number;
  readonly agentRenewals: number;
  readonly streamEnds: number;
  readonly errors: number;
  readonly latencies: number[];
  /** Entry ID → when (ms since the epoch) its first SVID was signed, for entries first seen in the window. */
  readonly firstSvid: Readonly<Record<string, number>>;
  readonly seconds: number;
}

/** A simulated-agents child process, driven by its stdin commands. */
export interface SimAgents {
  readonly child: ChildProcess;
  readonly agents: number;
  /** Resolves with the number of agents attested and watching. */
  readonly ready: Promise<number>;
  /** Sends a command and resolves with the first answer carrying `key`. */
  ask<T>(command: string, key: string): Promise<T>;
  stop(): Promise<void>;
}

/**
 * Starts a simulated-agents process for `tokens` over `addresses`; its `ready` resolves once every identity is attested and watching.
 * `concurrency`: attestations it runs at once; `cpuProfDir`: where it writes a CPU profile (`node --cpu-prof`) when it quits.
 */
export function startSimAgents(addresses: readonly string[], rootsPath: string, tokens: readonly string[], dir: string, index: number, concurrency = 20, cpuProfDir?: string): SimAgents {
  const tokensPath = path.join(dir, `tokens-${index}.txt`);
  writeFileSync(tokensPath, tokens.join("\n"));
  const prof = cpuProfDir === undefined ? [] : ["--cpu-prof", "--cpu-prof-dir", cpuProfDir];
  const child = spawn(process.execPath, [...prof, "--import", "tsx", path.join(root, "bench/support/sim-agents-child.ts"), addresses.join(","), rootsPath, tokensPath], {
    cwd: root,
    stdio: ["pipe", "pipe", "inherit"],
    env: { ...process.env, SIGIL_SIM_CONCURRENCY: String(concurrency) },
  });
  const waiters: Array<{ key: string; resolve: (v: unknown) => void; reject: (e: Error) => void }> = [];
  let exited: Error | undefined;
  const exit = new Promise<void>((resolve) =>
    child.once("exit", (code, signal) => {
      exited = new Error(`bench: simulated agents process ${index} exited (${code ?? signal})`);
      for (const w of waiters.splice(0)) w.reject(exited);
      resolve();
    }),
  );
  createInterface({ input: child.stdout! }).on("line", (l) => {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(l) as Record<string, unknown>;
    } catch {
      return;
    }
    const i = waiters.findIndex((w) => w.key in m);
    const w = i >= 0 ? waiters.splice(i, 1)[0] : undefined;
    w?.resolve(m[w.key]);
  });
  const wait = <T>(key: string): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      if (exited) return reject(exited);
      waiters.push({ key, resolve: resolve as (v: unknown) => void, reject });
    });
  const ready = wait<number>("ready");
  ready.catch(() => undefined);
  return {
    child,
    ready,
    agents: tokens.length,
    ask: <T>(command: string, key: string): Promise<T> => {
      const p = wait<T>(key);
      child.stdin?.write(`${command}\n`);
      return p;
    },
    stop: async () => {
      if (exited) return;
      // "quit" closes every channel first; a child that does not exit soon is killed.
      const kill = setTimeout(() => child.kill("SIGKILL"), 10_000);
      child.stdin?.write("quit\n");
      await exit;
      clearTimeout(kill);
    },
  };
}
