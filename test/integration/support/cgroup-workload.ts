/**
 * A Workload API client process that is moved into a container's cgroup
 * before it calls: how a pod's workload looks to the agent's `k8s` attestor.
 */
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { ContainerCgroup } from "../../support/cgroups.js";
import { WORKLOAD_CLIENT } from "../../support/programs.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

/** What the workload got: its SVIDs' IDs (sorted), or the error. */
export interface WorkloadOutcome {
  readonly ids?: string[];
  readonly error?: { readonly code: number | null; readonly message: string };
}

/**
 * Starts a workload as `as` that waits on stdin; moves it into `cgroup` (when
 * given) by its pid, then lets it call FetchX509SVID on `socketPath`.
 * Resolves once it has exited, with the IDs it got or the error.
 */
export function runWorkloadInCgroup(socketPath: string, cgroup: ContainerCgroup | undefined, as: { uid: number; gid: number }): Promise<WorkloadOutcome> {
  const script = `
import { createWorkloadApiClient } from ${JSON.stringify(WORKLOAD_CLIENT)};
await new Promise((resolve) => process.stdin.once("data", resolve));
process.stdin.destroy();
const client = createWorkloadApiClient();
try {
  const ctx = await client.fetchX509Context();
  console.log(JSON.stringify({ ids: ctx.svids.map((s) => s.id.toString()).sort() }));
} catch (e) {
  console.log(JSON.stringify({ error: { code: e.grpcCode ?? null, message: e.message } }));
} finally {
  client.close();
}
`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      cwd: root,
      env: { ...process.env, SPIFFE_ENDPOINT_SOCKET: `unix://${socketPath}` },
      stdio: ["pipe", "pipe", "pipe"],
      uid: as.uid,
      gid: as.gid,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("exit", (code) => {
      clearTimeout(timer);
      const last = stdout.trim().split("\n").pop() ?? "";
      try {
        resolve(JSON.parse(last) as WorkloadOutcome);
      } catch {
        reject(new Error(`workload exited ${code} without a result: ${stdout}\n${stderr}`));
      }
    });
    try {
      if (cgroup !== undefined) cgroup.add(child.pid as number);
      child.stdin.end("go\n");
    } catch (e) {
      child.kill("SIGKILL");
      reject(e);
    }
  });
}
