/**
 * Local sockets against real `sigil-server run` and `sigil-agent run`
 * processes (issue 8, point 4):
 *
 * - every admin API call is audited with the uid, gid, pid and binary of the
 *   process on the other end of the socket, as the kernel names it;
 * - a socket directory that already exists is used only when it belongs to
 *   the process's user and group and others cannot write to it; otherwise
 *   the process exits non-zero naming the directory, its owner and its mode,
 *   and (the agent) before spending its join token.
 *
 * The cases with another uid need root (CI runs as root).
 */
import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, existsSync, lchownSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runAgentCli } from "./support/agent-process.js";
import { SERVER_CLI, runServerCli, startServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

const isRoot = process.geteuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("local-sockets needs root for its other-uid cases (chown, a CLI run as another uid); CI runs as root");
  console.warn("SKIP: local-sockets cases with another uid need root; skipped on this machine");
}

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const uid = process.geteuid?.() ?? 0;
interface Owner {
  readonly uid: number;
  readonly gid: number;
}

const OTHER: Owner = { uid: 4501, gid: 4501 };
const temps: string[] = [];
let srv: ServerProcess;

function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  temps.push(dir);
  return dir;
}

beforeAll(async () => {
  srv = await startServerProcess();
  temps.push(srv.dir);
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  for (const d of temps) rmSync(d, { recursive: true, force: true });
});

/** The audit record of the one call of `method` made by process `pid`. */
function auditOf(method: string, pid: number): Promise<Record<string, unknown>> {
  return srv.waitForLog((l) => l.type === "audit" && String(l.method).endsWith(`/${method}`) && l.caller_pid === pid);
}

describe("admin API audit", () => {
  it("names the calling process: uid, gid, pid and binary of sigil-server entry show", async () => {
    const r = srv.cli(["entry", "show", "--output", "json"]);
    expect(r.status, r.stderr).toBe(0);
    const rec = await auditOf("ListEntries", r.pid);
    expect(rec).toMatchObject({
      msg: "API accessed",
      subsystem_name: "admin_api",
      method: "/sigil.admin.v1.EntryAdmin/ListEntries",
      status: "success",
      caller_uid: process.getuid?.(),
      caller_gid: process.getgid?.(),
      caller_pid: r.pid,
      caller_path: realpathSync(process.execPath),
    });
    expect(r.pid).not.toBe(srv.child.pid);
  });

  it("records what a call was about, never a join token", async () => {
    const r = srv.cli(["token", "generate", "--output", "json"]);
    expect(r.status, r.stderr).toBe(0);
    const { value: token } = JSON.parse(r.stdout) as { value: string };
    const rec = await auditOf("CreateJoinToken", r.pid);
    expect(rec).toMatchObject({ status: "success", caller_pid: r.pid, caller_uid: process.getuid?.(), caller_path: realpathSync(process.execPath) });
    expect(token.length).toBeGreaterThan(0);
    expect(JSON.stringify(rec)).not.toContain(token);
  });

  it.skipIf(!isRoot)("names another uid when another user calls (needs root)", async () => {
    // Let uid 4501 reach the socket for this one call; the directories stay unwritable to it.
    chmodSync(srv.dir, 0o711);
    chmodSync(path.dirname(srv.socketPath), 0o711);
    chmodSync(srv.socketPath, 0o666);
    try {
      const r = spawnSync(process.execPath, [...SERVER_CLI, "entry", "count", "--output", "json", "--socket-path", srv.socketPath], {
        cwd: repoRoot,
        encoding: "utf8",
        timeout: 60_000,
        ...OTHER,
      });
      expect(r.status, r.stderr).toBe(0);
      const rec = await auditOf("CountEntries", r.pid);
      expect(rec).toMatchObject({ status: "success", caller_uid: OTHER.uid, caller_gid: OTHER.gid, caller_pid: r.pid, caller_path: realpathSync(process.execPath) });
    } finally {
      chmodSync(srv.socketPath, 0o600);
      chmodSync(path.dirname(srv.socketPath), 0o700);
      chmodSync(srv.dir, 0o700);
    }
  });
});

/** A temporary directory holding `name`, a socket directory that exists already with `mode` (and `owner`). */
function withSocketDir(prefix: string, name: string, mode: number, owner?: Owner): { dir: string; socketDir: string } {
  const dir = tempDir(prefix);
  const socketDir = path.join(dir, name);
  mkdirSync(socketDir);
  chmodSync(socketDir, mode);
  if (owner) chownSync(socketDir, owner.uid, owner.gid);
  return { dir, socketDir };
}

/** Checks that a run exited 1 naming the directory, its owner and its mode, and left no socket behind. */
function expectRefused(r: { status: number | null; stdout: string; stderr: string }, subsystem: string, socketDir: string, mode: number, owner?: Owner): void {
  expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(1);
  expect(r.stderr).toContain(`${subsystem}: refusing to use directory ${socketDir}: it is owned by uid ${owner?.uid ?? uid} with mode ${mode.toString(8).padStart(4, "0")};`);
  expect(existsSync(path.join(socketDir, "api.sock"))).toBe(false);
}

describe("sigil-server run refuses an unsafe admin socket directory", () => {
  function refused(mode: number, owner?: Owner): void {
    const { dir, socketDir } = withSocketDir("sigil-local-sockets-srv-", "admin", mode, owner);
    const configPath = path.join(dir, "server.yaml");
    writeFileSync(configPath, testServerConfigYaml(dir, { keyManager: "memory" }));
    expectRefused(runServerCli(["run", "--config", configPath]), "admin api", socketDir, mode, owner);
  }

  it("mode 0777: exits 1 naming the directory, its owner and its mode", () => {
    refused(0o777);
  });

  it.skipIf(!isRoot)("owned by another uid: exits 1 naming the directory, its owner and its mode (needs root)", () => {
    refused(0o700, OTHER);
  });
});

describe("sigil-agent run refuses an unsafe Workload API socket directory", () => {
  /** An agent config whose socket directory exists already with `mode` (and `owner`). */
  function agentWithSocketDir(mode: number, owner?: Owner): { configPath: string; socketDir: string } {
    const { dir, socketDir } = withSocketDir("sigil-local-sockets-agent-", "public", mode, owner);
    return { configPath: agentConfig(dir, socketDir), socketDir };
  }

  /** Writes an agent config under `dir` serving the Workload API in `socketDir`; returns its path. */
  function agentConfig(dir: string, socketDir: string): string {
    const bundlePath = path.join(dir, "bundle.pem");
    writeFileSync(bundlePath, rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout));
    const [host, port] = srv.agentApiAddress.split(":");
    const configPath = path.join(dir, "agent.yaml");
    writeFileSync(
      configPath,
      [
        "agent:",
        "  trust_domain: example.org",
        `  server_address: ${host}`,
        `  server_port: ${port}`,
        `  socket_path: ${path.join(socketDir, "api.sock")}`,
        `  data_dir: ${path.join(dir, "data")}`,
        `  trust_bundle_path: ${bundlePath}`,
        "plugins:",
        "  NodeAttestor: { join_token: {} }",
        "  WorkloadAttestor: { unix: {} }",
        "",
      ].join("\n"),
    );
    return configPath;
  }

  /** Runs the agent with `configPath` and a fresh join token; checks the token was not spent and returns the run. */
  async function runWithoutAttesting(configPath: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
    const tok = srv.cli(["token", "generate", "--output", "json"]);
    expect(tok.status, tok.stderr).toBe(0);
    const { value: token } = JSON.parse(tok.stdout) as { value: string };
    const agentsBefore = srv.cli(["agent", "count", "--output", "json"]).stdout;
    const r = await runAgentCli(["run", "--config", configPath, "--join-token", token]);
    // Refused before attesting: no agent was added, so the join token is still unspent.
    expect(srv.cli(["agent", "count", "--output", "json"]).stdout).toBe(agentsBefore);
    return r;
  }

  async function refusedBeforeAttesting(mode: number, owner?: Owner): Promise<void> {
    const { configPath, socketDir } = agentWithSocketDir(mode, owner);
    expectRefused(await runWithoutAttesting(configPath), "workload endpoint", socketDir, mode, owner);
  }

  it("mode 0777: exits 1 naming the directory, its owner and its mode, before spending the join token", async () => {
    await refusedBeforeAttesting(0o777);
  }, 60_000);

  it.skipIf(!isRoot)("owned by another uid: exits 1 naming the directory, its owner and its mode (needs root)", async () => {
    await refusedBeforeAttesting(0o755, OTHER);
  }, 60_000);

  it.skipIf(!isRoot)(
    "a symbolic link another uid planted in a sticky directory like /tmp, leading to a safe directory: exits 1 naming the link and its owner (needs root)",
    async () => {
      // The attacker creates /tmp/<name> -> a directory of root's before the agent first starts; once the agent
      // listens there, repointing the link at the attacker's own directory would hand every workload a fake socket.
      const dir = tempDir("sigil-local-sockets-agent-");
      const sticky = path.join(dir, "tmp");
      mkdirSync(sticky);
      chmodSync(sticky, 0o1777);
      const safe = path.join(dir, "safe");
      mkdirSync(safe, { mode: 0o755 });
      const socketDir = path.join(sticky, "sigil");
      symlinkSync(safe, socketDir);
      lchownSync(socketDir, OTHER.uid, OTHER.gid);
      const r = await runWithoutAttesting(agentConfig(dir, socketDir));
      expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(1);
      expect(r.stderr).toContain(
        `workload endpoint: refusing to use directory ${socketDir}: ${socketDir}, a symbolic link on the way, is owned by uid ${OTHER.uid}; every symbolic link on the way must be owned by root or uid ${uid}`,
      );
      expect(existsSync(path.join(safe, "api.sock"))).toBe(false);
    },
    60_000,
  );
});
