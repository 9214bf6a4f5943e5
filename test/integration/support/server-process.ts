/**
 * Starts a real `sigil-server run` process on a temporary data directory and
 * runs `sigil-server` CLI commands against it, as an operator would.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { SERVER_MAIN } from "../../support/programs.js";
import { followJsonLog } from "./json-log.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
/** The CLI entry, compiled (test/support/programs.ts keeps dist/ fresh). */
export const SERVER_CLI = [SERVER_MAIN];
const NODE_ARGS: string[] = [];

/** A running server process. */
export interface ServerProcess {
  readonly dir: string;
  readonly configPath: string;
  readonly socketPath: string;
  /** `127.0.0.1:<port>` of the agent API. */
  readonly agentApiAddress: string;
  readonly child: ChildProcess;
  /** Every log line written so far (parsed JSON). */
  readonly logs: Record<string, unknown>[];
  /** Resolves with the first log record (already read or still to come) that matches. */
  waitForLog(match: (rec: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Runs `sigil-server <args>` against this server's socket. */
  cli(args: readonly string[]): CliResult;
  /**
   * Stops the process (SIGTERM) and, once it has exited, removes `dir` if the
   * helper owns it (made by {@link startServerProcess}, or launched with
   * `ownsDir`); `keepDir` keeps it, e.g. to launch again on the same data.
   */
  stop(opts?: { keepDir?: boolean }): Promise<void>;
}

/** Result of one CLI invocation. */
export interface CliResult {
  /** The CLI process's pid (what the server's audit records name as `caller_pid`). */
  readonly pid: number;
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the server CLI with arbitrary arguments (no socket added). */
export function runServerCli(args: readonly string[], cwd = root): CliResult {
  const r = spawnSync(process.execPath, [...NODE_ARGS, ...SERVER_CLI, ...args], { cwd, encoding: "utf8", timeout: 60_000 });
  return { pid: r.pid, status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * A server config for tests: everything under `dir`, agent API on a free
 * loopback port, join-token attestation, and `extraYaml` appended.
 */
export function testServerConfigYaml(
  dir: string,
  opts: { trustDomain?: string; keyManager?: "memory" | "disk"; serverExtra?: string; extraYaml?: string; dataStore?: { databaseType: "sqlite3" | "postgres" | "mysql"; connectionString: string } } = {},
): string {
  const dataStore = opts.dataStore ?? { databaseType: "sqlite3", connectionString: path.join(dir, "datastore.sqlite3") };
  const keyManager = opts.keyManager === "memory" ? "    memory: {}" : `    disk:\n      keys_path: ${path.join(dir, "keys.json")}`;
  return `server:
  trust_domain: ${opts.trustDomain ?? "example.org"}
  bind_address: 127.0.0.1
  bind_port: 0
  socket_path: ${path.join(dir, "admin", "api.sock")}
  data_dir: ${dir}
${opts.serverExtra ?? ""}plugins:
  DataStore:
    sql:
      database_type: ${dataStore.databaseType}
      connection_string: ${dataStore.connectionString}
  KeyManager:
${keyManager}
  NodeAttestor:
    join_token: {}
${opts.extraYaml ?? ""}`;
}

/** Writes a config and starts `sigil-server run`; resolves when it logs "server started". */
export async function startServerProcess(extraYaml = "", trustDomain = "example.org"): Promise<ServerProcess> {
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-it-"));
  const socketPath = path.join(dir, "admin", "api.sock");
  const configPath = path.join(dir, "server.yaml");
  try {
    writeFileSync(configPath, testServerConfigYaml(dir, { trustDomain, serverExtra: "  log_level: debug\n", extraYaml }));
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return launchServerProcess(dir, configPath, socketPath, { ownsDir: true });
}

/**
 * Starts `sigil-server run` on an existing config (e.g. to restart on the same
 * data). With `ownsDir`, `dir` is removed when the process stops, or when it
 * fails to start; without, the caller removes it.
 */
export async function launchServerProcess(dir: string, configPath: string, socketPath: string, opts: { ownsDir?: boolean } = {}): Promise<ServerProcess> {
  const child = spawn(process.execPath, [...(process.env.SIGIL_SERVER_NODE_ARGS ?? "").split(" ").filter(Boolean), ...NODE_ARGS, ...SERVER_CLI, "run", "--config", configPath], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  const removeDir = (): void => {
    if (opts.ownsDir === true) rmSync(dir, { recursive: true, force: true });
  };
  const log = followJsonLog(child);
  let started: Record<string, unknown>;
  try {
    started = await log.waitForLog((r) => r.msg === "server started", 30_000, "server start");
  } catch (e) {
    await stopChild(child, "SIGKILL");
    removeDir();
    throw e;
  }
  const agentApiAddress = String(started.agent_api);
  return {
    dir,
    configPath,
    socketPath,
    agentApiAddress,
    child,
    logs: log.logs,
    waitForLog: (match, timeoutMs = 10_000) => log.waitForLog(match, timeoutMs, "server log"),
    cli: (args) => runServerCli([...args, "--socket-path", socketPath]),
    stop: async ({ keepDir = false } = {}) => {
      await stopChild(child, "SIGTERM");
      if (!keepDir) removeDir();
    },
  };
}

/** Sends `signal` to `child` unless it has already exited; resolves once it has. */
function stopChild(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  return new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
    child.kill(signal);
  });
}
