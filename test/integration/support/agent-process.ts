/**
 * Starts a real `sigil-agent run` process against a server process, and runs
 * workload scripts (as other uids when root) that use the real Workload API
 * client, as a workload would.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { followJsonLog } from "./json-log.js";
import { AGENT_MAIN, WORKLOAD_CLIENT } from "../../support/programs.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

/** A running agent process. */
export interface AgentProcess {
  readonly dir: string;
  /** The agent's process id. */
  readonly pid: number;
  readonly socketPath: string;
  readonly logs: Record<string, unknown>[];
  waitForLog(match: (rec: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /**
   * Stops the agent (SIGTERM) and, once it has exited, removes `dir`;
   * `keepDir` keeps it, e.g. to run the agent again on the same config and data.
   */
  stop(opts?: { keepDir?: boolean }): Promise<void>;
}

/**
 * Starts `sigil-agent run` with a join token (or the node attestor in
 * `nodeAttestorYaml`) in a fresh temporary directory, or in `dir` to run again
 * on an earlier agent's data; resolves once the agent logs "agent started".
 * The directory is removed by `stop()`, or at once if the agent fails to start.
 */
export async function startAgentProcess(opts: {
  serverAddress: string;
  bundlePem: string;
  /** Passed as `--join-token`; omit with another node attestor. */
  joinToken?: string;
  /** The `plugins.NodeAttestor` entry, e.g. `k8s_psat: { cluster: prod }`; default `join_token: {}`. */
  nodeAttestorYaml?: string;
  /** Run in this directory (made by an earlier start kept with `stop({ keepDir: true })`). */
  dir?: string;
  trustDomain?: string;
  extraAgentYaml?: string;
  /** The `unix` workload attestor's config, as a YAML flow mapping; default `{}`. */
  unixAttestorYaml?: string;
  /** More workload attestors, as YAML lines indented for `plugins.WorkloadAttestor` (4 spaces), e.g. `    k8s: { … }\n`. */
  extraWorkloadAttestorsYaml?: string;
}): Promise<AgentProcess> {
  const dir = opts.dir ?? mkdtempSync(path.join(tmpdir(), "sigil-agent-it-"));
  const removeDir = (): void => rmSync(dir, { recursive: true, force: true });
  let child: ChildProcess | undefined;
  try {
    const spawned = spawnAgent(dir, opts);
    child = spawned.child;
    const socketPath = spawned.socketPath;
    const log = followJsonLog(child);
    const waitForLog = (match: (r: Record<string, unknown>) => boolean, timeoutMs = 20_000) => log.waitForLog(match, timeoutMs, "agent log");
    await waitForLog((r) => r.msg === "agent started", 30_000);
    const running = child;
    return {
      dir,
      pid: running.pid as number,
      socketPath,
      logs: log.logs,
      waitForLog,
      stop: async ({ keepDir = false } = {}) => {
        await stopChild(running, "SIGTERM");
        if (!keepDir) removeDir();
      },
    };
  } catch (e) {
    if (child !== undefined) await stopChild(child, "SIGKILL");
    removeDir();
    throw e;
  }
}

/** Writes the agent's config and files into `dir` and spawns `sigil-agent run`. */
function spawnAgent(dir: string, opts: Parameters<typeof startAgentProcess>[0]): { child: ChildProcess; socketPath: string } {
  chmodSync(dir, 0o755); // workloads running as other uids must reach the socket
  const socketPath = path.join(dir, "public", "api.sock");
  mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  const bundlePath = path.join(dir, "bundle.pem");
  writeFileSync(bundlePath, opts.bundlePem);
  const [host, port] = opts.serverAddress.split(":");
  const configPath = path.join(dir, "agent.yaml");
  writeFileSync(
    configPath,
    `agent:
  trust_domain: ${opts.trustDomain ?? "example.org"}
  server_address: ${host}
  server_port: ${port}
  socket_path: ${socketPath}
  data_dir: ${path.join(dir, "data")}
  trust_bundle_path: ${bundlePath}
  sync_interval: 500ms
  log_level: debug
${opts.extraAgentYaml ?? ""}plugins:
  NodeAttestor:
    ${opts.nodeAttestorYaml ?? "join_token: {}"}
  WorkloadAttestor:
    unix: ${opts.unixAttestorYaml ?? "{}"}
${opts.extraWorkloadAttestorsYaml ?? ""}`,
  );
  const child: ChildProcess = spawn(process.execPath, [AGENT_MAIN, "run", "--config", configPath, ...(opts.joinToken === undefined ? [] : ["--join-token", opts.joinToken])], {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"],
  });
  return { child, socketPath };
}

/** Sends `signal` to `child` unless it has already exited; resolves once it has. */
function stopChild(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  return new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
    child.kill(signal);
  });
}

/** Result of a workload script. */
export interface WorkloadResult {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs a small ESM script as a workload (optionally as another uid/gid) with
 * SPIFFE_ENDPOINT_SOCKET set. The script gets `client` (the real Workload API
 * client) and prints what the test should check. Aborting `signal` ends it
 * (SIGKILL), e.g. from a test's cleanup after a failure. The script runs on
 * plain node; one that imports a TypeScript file (a test helper such as
 * test/support/sds-client.ts) runs through tsx.
 */
export function runWorkload(
  socketPath: string,
  body: string,
  as?: { uid: number; gid: number },
  timeoutMs = 20_000,
  onStdout?: (chunk: string) => void,
  signal?: AbortSignal,
): Promise<WorkloadResult> {
  const script = `
import { createWorkloadApiClient } from ${JSON.stringify(WORKLOAD_CLIENT)};
const client = createWorkloadApiClient();
try {
${body}
} catch (e) {
  console.log(JSON.stringify({ error: { code: e.grpcCode ?? null, message: e.message } }));
} finally {
  client.close();
}
`;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...(/\.ts["']/.test(body) ? ["--import", "tsx"] : []), "--input-type=module", "-e", script], {
      cwd: root,
      env: { ...process.env, SPIFFE_ENDPOINT_SOCKET: `unix://${socketPath}` },
      stdio: ["ignore", "pipe", "pipe"],
      ...(as ? { uid: as.uid, gid: as.gid } : {}),
      ...(signal ? { signal, killSignal: "SIGKILL" as const } : {}),
    });
    // An abort is reported as the child's 'error'; its 'exit' still resolves.
    child.on("error", () => undefined);
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => {
      stdout += d.toString();
      onStdout?.(stdout);
    });
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("exit", (status) => {
      clearTimeout(t);
      resolve({ status, stdout, stderr });
    });
  });
}

/** Runs `sigil-agent <args>` (optionally as another uid/gid); resolves with its exit status and output. */
export function runAgentCli(args: readonly string[], as?: { uid: number; gid: number }, env: Record<string, string> = {}): Promise<WorkloadResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [AGENT_MAIN, ...args], {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
      ...(as ? { uid: as.uid, gid: as.gid } : {}),
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.on("exit", (status) => {
      clearTimeout(t);
      resolve({ status, stdout, stderr });
    });
  });
}
