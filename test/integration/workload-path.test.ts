/**
 * What `unix:path` proves, against real `sigil-server` and `sigil-agent`
 * processes with `discover_workload_path`: the path names, in the agent's own
 * view of the filesystem, the very file the caller runs.
 *
 * The attack: any local user may create a user namespace and, in it, a mount
 * namespace of its own (`unshare -Urm`), mount anything at any path there,
 * and run it. `/proc/<pid>/exe` then reads as the path inside that namespace,
 * so an entry selecting only `unix:path:/opt/web/bin/web` would be served to
 * whoever mounts their own program at that path. The agent must give such a
 * caller no `unix:path` selector, while a caller running the file that is
 * really at that path (in a namespace or not) keeps it.
 *
 * Needs root (to run workloads as uid 65534) and unprivileged user namespaces.
 */
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { runWorkload, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const NOBODY = { uid: 65534, gid: 65534 };
const NODE = realpathSync(process.execPath);

const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("workload-path runs workloads as uid 65534 and needs root (CI runs as root)");
  console.warn("SKIP: workload-path runs workloads as uid 65534 and needs root; skipped on this machine");
}
const userns = isRoot && spawnSync("unshare", ["-Urm", "true"], { ...NOBODY, stdio: "ignore" }).status === 0;
if (isRoot && !userns) console.warn("SKIP: workload-path needs unprivileged user namespaces (unshare -Urm as uid 65534 failed); without them the attack is not possible");

const IDS = {
  root: "spiffe://example.org/root",
  nobody: "spiffe://example.org/nobody",
  nobodyNode: "spiffe://example.org/nobody-running-node",
  web: "spiffe://example.org/web-by-path",
};
const PRINT_IDS = `const ctx = await client.fetchX509Context(); console.log(JSON.stringify(ctx.svids.map((s) => s.id.toString())));`;

/** The IDs a workload printed (its last line), sorted: entries made in one batch have no defined order. */
function idsOf(r: { stdout: string; stderr: string }): unknown {
  const last = r.stdout.trim().split("\n").pop() ?? "";
  try {
    return (JSON.parse(last) as string[]).sort();
  } catch {
    throw new Error(`workload printed no IDs: ${r.stdout}\n${r.stderr}`);
  }
}

/**
 * Runs, as uid 65534 in a user and mount namespace of its own, `command` (a
 * shell snippet that prepares the namespace), then node from `nodePath`
 * printing the caller's SPIFFE IDs.
 */
function inOwnNamespace(socketPath: string, command: string, nodePath: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const script = `import { createWorkloadApiClient } from ${JSON.stringify(path.join(root, "spiffe/workloadapi/client.ts"))};
const client = createWorkloadApiClient();
try { ${PRINT_IDS} } finally { client.close(); }`;
  return new Promise((resolve, reject) => {
    // unshare runs the shell in its own process and the shell execs node: one process to wait for.
    const child = spawn("unshare", ["-Urm", "sh", "-ec", `${command}; exec "$NODE_AT" --import tsx --input-type=module -e "$SCRIPT"`], {
      cwd: root,
      env: { ...process.env, SPIFFE_ENDPOINT_SOCKET: `unix://${socketPath}`, SCRIPT: script, NODE_AT: nodePath },
      stdio: ["ignore", "pipe", "pipe"],
      ...NOBODY,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.on("error", reject);
    child.on("exit", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

let srv: ServerProcess;
let agent: AgentProcess;
let dir = "";
let binDir = "";

describe.skipIf(!userns)("unix:path names the file the caller runs, as the agent sees it", () => {
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "sigil-workload-path-"));
    chmodSync(dir, 0o755);
    // Exists on the host, empty: nothing runs from <binDir>/web here.
    binDir = path.join(dir, "bin");
    mkdirSync(binDir, { mode: 0o755 });
    srv = await startServerProcess();
    const target = `unix:${srv.socketPath}`;
    const agentAdmin = createUnaryClient(AgentAdmin, target, credentials.createInsecure());
    const tok = await agentAdmin.createJoinToken({ ttl: 600 });
    agentAdmin.close();
    const entry = (spiffeId: string, ...selectors: string[]) =>
      create(EntrySchema, { spiffeId, parentId: tok.agentId, selectors: selectors.map((s) => ({ type: "unix", value: s })) });
    const entryAdmin = createUnaryClient(EntryAdmin, target, credentials.createInsecure());
    await entryAdmin.batchCreateEntry({
      entries: [
        // Inside its user namespace the caller is uid 0; the kernel reports its real uid to the agent.
        entry(IDS.root, "uid:0"),
        entry(IDS.nobody, `uid:${NOBODY.uid}`),
        entry(IDS.nobodyNode, `uid:${NOBODY.uid}`, `path:${NODE}`),
        // Path only: served to any user running the file at that path, so the path must be the truth.
        entry(IDS.web, `path:${path.join(binDir, "web")}`),
      ],
    });
    entryAdmin.close();
    const roots = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
    agent = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: roots, joinToken: tok.token, unixAttestorYaml: "{ discover_workload_path: true }" });
  }, 90_000);

  afterAll(async () => {
    await agent?.stop();
    await srv?.stop();
    for (const d of [agent?.dir, srv?.dir]) if (d !== undefined) rmSync(d, { recursive: true, force: true });
    if (dir !== "") rmSync(dir, { recursive: true, force: true });
  });

  it("a caller running node from its own path gets the entry that names that path", async () => {
    const r = await runWorkload(agent.socketPath, PRINT_IDS, NOBODY);
    expect(idsOf(r)).toEqual([IDS.nobody, IDS.nobodyNode].sort());
  });

  it("a caller in its own namespaces (root inside them) is uid 65534 to the agent, and running the file really at that path keeps the path entry", async () => {
    const r = await inOwnNamespace(agent.socketPath, "true", NODE);
    expect(r.status, r.stderr).toBe(0);
    expect(idsOf(r)).toEqual([IDS.nobody, IDS.nobodyNode].sort());
  });

  it("a caller that mounts node at the entry's path in its own mount namespace gets no unix:path, and the agent says why", async () => {
    const web = path.join(binDir, "web");
    const r = await inOwnNamespace(agent.socketPath, `mount -t tmpfs none ${binDir}; touch ${web}; mount --bind "${NODE}" ${web}`, web);
    expect(r.status, r.stderr).toBe(0);
    // Neither the path-only entry nor the entry for node's real path: the caller's path is not believed at all.
    expect(idsOf(r)).toEqual([IDS.nobody]);
    const line = await agent.waitForLog((l) => typeof l.msg === "string" && l.msg.includes("unix:path omitted") && l.path === web);
    expect(line.msg).toBe("workloadattestor(unix): the binary's path does not lead to the caller's binary for the agent (another mount namespace, or the file was replaced or deleted); unix:path omitted");
  });
});
