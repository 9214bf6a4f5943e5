/**
 * End to end through the kernel: the agent's Workload Endpoint (SO_PEERCRED,
 * unix attestor, handler) in front of a cache holding one identity for uid
 * 4321. Separate `node` processes running the real Workload API client as
 * uid 4321 and 4322 must get exactly that SVID and PermissionDenied.
 *
 * Needs root to run clients as other uids (CI runs as root).
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { status } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { FakeWorkloadCache, startTestAgentEndpoint, type TestAgentEndpoint } from "../fakes/fake-workload-cache.js";

const isRoot = process.geteuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("workload-api-uid needs root to run clients as other uids; CI runs as root");
  console.warn("SKIP: workload-api-uid needs root to run clients as other uids; skipped on this machine");
}

interface ClientResult {
  readonly svids?: Array<{ id: string; leafSha256: string; hint: string; keyMatches: boolean }>;
  readonly bundles?: string[];
  readonly code?: number;
  readonly details?: string;
}

const SCRIPT = (clientModule: string): string => `
import { createHash, createPublicKey } from "node:crypto";
const { createWorkloadApiClient } = await import(${JSON.stringify(clientModule)});
const c = createWorkloadApiClient({ address: process.argv[2] });
try {
  const ctx = await c.fetchX509Context();
  console.log(JSON.stringify({
    svids: ctx.svids.map((s) => ({
      id: s.id.toString(),
      hint: s.hint,
      leafSha256: createHash("sha256").update(s.leaf.raw).digest("hex"),
      keyMatches: createPublicKey(s.privateKey).export({ type: "spki", format: "der" }).equals(s.leaf.publicKey.export({ type: "spki", format: "der" })),
    })),
    bundles: [...ctx.bundles.keys()],
  }));
} catch (e) {
  console.log(JSON.stringify({ code: e.grpcCode ?? -1, details: e.grpcDetails ?? String(e) }));
} finally {
  c.close();
}
`;

function runAs(script: string, address: string, uid: number, gid: number): Promise<ClientResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", script, address], { cwd: process.cwd(), uid, gid, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", reject);
    child.on("exit", (code) => {
      try {
        resolve(JSON.parse(out.trim().split("\n").pop() ?? "") as ClientResult);
      } catch {
        reject(new Error(`client as uid ${uid} exited ${code}: ${out} ${err}`));
      }
    });
  });
}

describe.skipIf(!isRoot)("Workload API by caller uid (needs root)", () => {
  let ep: TestAgentEndpoint | undefined;
  afterEach(async () => {
    await ep?.close();
    ep = undefined;
  });

  it("WEP-13, WAPI-3: uid 4321 gets exactly its SVID; uid 4322 gets PermissionDenied", async () => {
    const cache = new FakeWorkloadCache();
    const identity = cache.addIdentity({ spiffeId: "spiffe://example.org/uid-4321", selectors: ["unix:uid:4321"], hint: "svc" });
    ep = await startTestAgentEndpoint({ cache });
    const script = path.join(ep.dir, "client.mjs");
    await writeFile(script, SCRIPT(path.resolve("spiffe/workloadapi/client.ts")), { mode: 0o644 });

    const [allowed, denied] = await Promise.all([runAs(script, ep.address, 4321, 4321), runAs(script, ep.address, 4322, 4322)]);

    const leaf = identity.svid.chain[0] ?? new Uint8Array();
    expect(allowed.svids).toEqual([
      { id: "spiffe://example.org/uid-4321", hint: "svc", leafSha256: createHash("sha256").update(leaf).digest("hex"), keyMatches: true },
    ]);
    expect(allowed.bundles).toEqual(["example.org"]);
    expect(denied).toEqual({ code: status.PERMISSION_DENIED, details: "no identity issued" });

    // The endpoint saw both callers' real uids.
    expect(ep.attestedPeers.map((p) => p.uid).sort()).toEqual([4321, 4322]);
  });
});
