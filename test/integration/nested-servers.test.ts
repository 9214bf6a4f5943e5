/**
 * Nested servers end to end, all real processes: a parent server (transparency
 * log on) and its agent; an entry marked downstream for the child server's
 * uid; a child server of the same trust domain whose `sigil` UpstreamAuthority
 * fetches that SVID from the parent agent's Workload API and asks the parent
 * for its intermediate CA; the child's own agent and a workload under it.
 *
 * The workload's X509-SVID chains parent root → child intermediate → leaf
 * (`openssl verify -CAfile <parent root> -untrusted <intermediate>`); on the
 * parent, `log prove --cert <intermediate>` finds its `downstream-ca` entry
 * and `log verify` passes over the whole log.
 *
 * Then a root the parent prepares reaches the child's bundle without a child
 * rotation (the plugin's Workload API bundle watch). Dropping a revoked root
 * and re-minting are test/unit/server/ca/upstream-roots.test.ts: end to end,
 * the parent's agent still served the revoked root on its Workload API a
 * minute after the revoke.
 *
 * Needs root (the workload runs as another uid); CI runs as root.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import { afterAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { decodePemCertificates, encodePemCertificates } from "../../spiffe/pem.js";
import { runWorkload, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { cliLogVerify, cliUntilOk } from "./support/tlog-cli.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("nested-servers runs a workload as another uid and needs root (CI runs as root)");
  console.warn("SKIP: nested-servers runs a workload as another uid and needs root");
}
/** The workload under the child server. */
const WEB = { uid: 4351, gid: 4351 };
const work = mkdtempSync(path.join(tmpdir(), "sigil-nested-"));
let parent: ServerProcess | undefined;
let child: ServerProcess | undefined;
let parentAgent: AgentProcess | undefined;
let childAgent: AgentProcess | undefined;

afterAll(async () => {
  await childAgent?.stop();
  await child?.stop();
  await parentAgent?.stop();
  await parent?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** Creates one entry on `srv` under a new join token's agent ID; returns the token. */
async function tokenAndEntry(srv: ServerProcess, entry: { spiffeId: string; uid: number; downstream?: boolean }): Promise<string> {
  const target = `unix:${srv.socketPath}`;
  const agentAdmin = createUnaryClient(AgentAdmin, target, credentials.createInsecure());
  const entryAdmin = createUnaryClient(EntryAdmin, target, credentials.createInsecure());
  try {
    const tok = await agentAdmin.createJoinToken({ ttl: 600 });
    const created = await entryAdmin.batchCreateEntry({
      entries: [create(EntrySchema, { spiffeId: entry.spiffeId, parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${entry.uid}` }], downstream: entry.downstream ?? false })],
    });
    expect(created.results[0]?.status?.code ?? 0, created.results[0]?.status?.message).toBe(0);
    return tok.token;
  } finally {
    agentAdmin.close();
    entryAdmin.close();
  }
}

/** The chain (DER, base64, leaf first) of the default X509-SVID at `socketPath` for `as`, once the agent has it. */
async function fetchChain(socketPath: string, as?: { uid: number; gid: number }): Promise<string[]> {
  let last = "";
  for (let i = 0; i < 60; i++) {
    const r = await runWorkload(socketPath, `const ctx = await client.fetchX509Context(); console.log(JSON.stringify({ chain: ctx.defaultSvid.certificateDers.map((d) => Buffer.from(d).toString("base64")) }));`, as, 20_000);
    const out = JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}") as { chain?: string[]; error?: unknown };
    if (out.chain) return out.chain;
    last = r.stdout + r.stderr;
    await delay(250);
  }
  throw new Error(`no X509-SVID at ${socketPath}: ${last}`);
}

describe.skipIf(!isRoot)("nested servers", () => {
  it("a child server's workload SVID chains to the parent's root through the logged downstream CA", async () => {
    parent = await startServerProcess("transparency_log:\n  enabled: true\n  checkpoint_interval: 200ms\n  listen_address: 127.0.0.1:0\n");
    const tlogUrl = String((await parent.waitForLog((r) => r.msg === "server started")).transparency_log);
    const parentRootsPem = rootsPemFromBundleJson(parent.cli(["bundle", "show", "--output", "json"]).stdout);
    // The child server runs as this test's uid: that is what the parent's agent attests it by.
    const myUid = process.getuid?.() ?? 0;
    const parentToken = await tokenAndEntry(parent, { spiffeId: "spiffe://example.org/nested/child-server", uid: myUid, downstream: true });
    parentAgent = await startAgentProcess({ serverAddress: parent.agentApiAddress, bundlePem: parentRootsPem, joinToken: parentToken });
    // The child asks for its CA at start: wait until the parent's agent holds its SVID.
    await fetchChain(parentAgent.socketPath);

    child = await startServerProcess(`  UpstreamAuthority:\n    sigil:\n      server_address: ${parent.agentApiAddress}\n      workload_api_socket: ${parentAgent.socketPath}\n`);
    const childRootsPem = rootsPemFromBundleJson(child.cli(["bundle", "show", "--output", "json"]).stdout);
    // The child publishes the parent's roots: its agents and workloads trust the same anchors.
    expect(decodePemCertificates(childRootsPem)).toEqual(decodePemCertificates(parentRootsPem));
    const childToken = await tokenAndEntry(child, { spiffeId: "spiffe://example.org/nested/web", uid: WEB.uid });
    childAgent = await startAgentProcess({ serverAddress: child.agentApiAddress, bundlePem: childRootsPem, joinToken: childToken });

    const chain = (await fetchChain(childAgent.socketPath, WEB)).map((b) => Buffer.from(b, "base64"));
    expect(chain).toHaveLength(2); // leaf, then the child's intermediate
    const [leaf, intermediate] = chain as [Buffer, Buffer];
    const files = { root: path.join(work, "parent-root.pem"), intermediate: path.join(work, "intermediate.pem"), leaf: path.join(work, "leaf.pem") };
    writeFileSync(files.root, parentRootsPem);
    writeFileSync(files.intermediate, encodePemCertificates([intermediate]));
    writeFileSync(files.leaf, encodePemCertificates([leaf]));
    expect(execFileSync("openssl", ["verify", "-CAfile", files.root, "-untrusted", files.intermediate, files.leaf], { encoding: "utf8" })).toBe(`${files.leaf}: OK\n`);
    // Without the intermediate the leaf does not verify: the child did not sign with a root of its own.
    expect(() => execFileSync("openssl", ["verify", "-CAfile", files.root, files.leaf], { stdio: "pipe" })).toThrow();

    const proved = await cliUntilOk(parent, ["log", "prove", "--cert", files.intermediate, "--output", "json"]);
    expect(JSON.parse(proved.stdout)).toMatchObject({
      verified: true,
      entry: { kind: "downstream-ca", spiffeId: "spiffe://example.org", requestedBy: "downstream:spiffe://example.org/nested/child-server", cert: intermediate.toString("base64") },
    });
    const verify = cliLogVerify(parent, tlogUrl, work);
    expect(verify.status, verify.stderr).toBe(0);
    expect(JSON.parse(verify.stdout)).toMatchObject({ findings_total: 0 });
  }, 180_000);

  it("the parent's new root reaches the child's bundle without a child rotation, and the child's CA stays", async () => {
    const [p, c] = [parent, child];
    if (!p || !c) throw new Error("the first test did not start the servers");
    const b64 = (d: Uint8Array) => Buffer.from(d).toString("base64");
    const childRoots = () => decodePemCertificates(rootsPemFromBundleJson(c.cli(["bundle", "show", "--output", "json"]).stdout)).map(b64);
    const active = (srv: ServerProcess) => json<{ authorities: AuthorityRow[] }>(srv, ["authority", "list"]).authorities.find((a) => a.kind === "x509" && a.status === "active");
    const childCa = active(c);
    if (!childCa) throw new Error("the child has no active X.509 authority");

    const next = json<AuthorityRow>(p, ["authority", "prepare", "--kind", "x509"]);
    await until("the child to publish the parent's prepared root", () => childRoots().includes(next.cert_der as string));
    expect(active(c)?.key_id).toBe(childCa.key_id); // its CA still chains to a published root
  }, 180_000);
});

interface AuthorityRow {
  readonly kind: string;
  readonly key_id: string;
  readonly status: string;
  readonly cert_der?: string;
}

function json<T>(srv: ServerProcess, args: readonly string[]): T {
  const r = srv.cli([...args, "--output", "json"]);
  expect(r.status, `${args.join(" ")}: ${r.stderr}`).toBe(0);
  return JSON.parse(r.stdout) as T;
}

/** Polls `check` every 250 ms for up to 60 s; the error quotes the child's warnings and errors. */
async function until(what: string, check: () => boolean): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (check()) return;
    await delay(250);
  }
  const problems = (child?.logs ?? []).filter((l) => l.level === "warn" || l.level === "error" || Number(l.level) >= 40).slice(-5);
  throw new Error(`timed out waiting for ${what}; the child's last warnings: ${JSON.stringify(problems)}`);
}
