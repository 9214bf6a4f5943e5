/**
 * Issue 17, "upstream-signed intermediate tainted: everything under it is
 * replaced", against real processes: a `sigil-server run` whose X.509 CA is an
 * intermediate minted by the `disk` UpstreamAuthority (a root CA on disk),
 * and a `sigil-agent run` with a workload holding a FetchX509SVID stream open.
 *
 * The bundle holds the upstream root only; the served chain carries the
 * intermediate. Tainting the intermediate has the upstream mint a new one;
 * the agent finds the tainted intermediate in the chains it holds (nothing in
 * its bundle is tainted) and the workload's stream receives an SVID chaining
 * to the new intermediate, with no error in between. Once the inventory has
 * drained, revoking the tainted intermediate leaves the bundle as it was (the
 * upstream root) and the CLI says so, with what is left to the upstream CA.
 */
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AuthorityAdmin, BundleAdmin, type Authority } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { parseSpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import { encodePemCertificates } from "../../spiffe/pem.js";
import { createKeyObjectSigner } from "../../spiffe/signer.js";
import { createRootCa } from "../../spiffe/x509/ca.js";
import { startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";
import { watchX509, type WatchUpdate } from "./support/x509-watch.js";

const td = parseTrustDomain("example.org");
const WORKLOAD = "spiffe://example.org/upstream/w";
const uid = process.getuid?.() ?? 0;

let upstreamDir: string | undefined;
let upstreamRoot: X509Certificate;
let srv: ServerProcess | undefined;
let agent: AgentProcess | undefined;
let authorityAdmin: ReturnType<typeof createUnaryClient<(typeof AuthorityAdmin)["method"]>> | undefined;
let bundleAdmin: ReturnType<typeof createUnaryClient<(typeof BundleAdmin)["method"]>> | undefined;

function cli(args: readonly string[]): { stdout: string; stderr: string } {
  const r = (srv as ServerProcess).cli([...args, "--output", "json"]);
  expect(r.status, `${args.join(" ")}: ${r.stderr}`).toBe(0);
  return r;
}
const json = <T>(args: readonly string[]): T => JSON.parse(cli(args).stdout) as T;
// Reads go through the admin API (a CLI process costs a Node start); what an operator does goes through the CLI.
const authorities = async (): Promise<Authority[]> => (await (authorityAdmin as NonNullable<typeof authorityAdmin>).listAuthorities({})).authorities;
const activeX509 = async (): Promise<Authority> => {
  const row = (await authorities()).find((a) => a.kind === "x509" && a.status === "active");
  if (!row) throw new Error("no active x509 authority");
  return row;
};
const b64 = (der: Uint8Array): string => Buffer.from(der).toString("base64");
/** The bundle's X.509 authorities, DER in base64. */
const bundleRoots = async (): Promise<string[]> => parseSpiffeBundle((await (bundleAdmin as NonNullable<typeof bundleAdmin>).getBundle({})).spiffeBundleJson, td).bundle.x509Authorities.map(b64);

/** Asserts `update`'s chain is leaf → `intermediate` (base64 DER) → the upstream root, each signed by the next. */
function expectChainThrough(update: WatchUpdate, intermediate: string): void {
  expect(update.chain).toHaveLength(2);
  expect(update.chain[1]).toBe(intermediate);
  const [leaf, inter] = update.chain.map((c) => new X509Certificate(Buffer.from(c, "base64")));
  expect(leaf?.verify((inter as X509Certificate).publicKey)).toBe(true);
  expect(inter?.verify(upstreamRoot.publicKey)).toBe(true);
}

beforeAll(async () => {
  upstreamDir = mkdtempSync(path.join(tmpdir(), "sigil-it-upstream-"));
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const now = Date.now();
  const rootDer = createRootCa({ trustDomain: td, signer: createKeyObjectSigner(privateKey, "upstream"), notBefore: new Date(now - 60_000), notAfter: new Date(now + 48 * 3_600_000) });
  upstreamRoot = new X509Certificate(rootDer);
  const cert = path.join(upstreamDir, "upstream.pem");
  const key = path.join(upstreamDir, "upstream.key");
  writeFileSync(cert, encodePemCertificates([rootDer]));
  writeFileSync(key, privateKey.export({ format: "pem", type: "pkcs8" }), { mode: 0o600 });
  srv = await startServerProcess(`  UpstreamAuthority:\n    disk:\n      cert_file_path: ${cert}\n      key_file_path: ${key}\n`);
  authorityAdmin = createUnaryClient(AuthorityAdmin, `unix:${srv.socketPath}`, credentials.createInsecure());
  bundleAdmin = createUnaryClient(BundleAdmin, `unix:${srv.socketPath}`, credentials.createInsecure());
  const token = json<{ value: string; agent_id: string }>(["token", "generate"]);
  cli(["entry", "create", "--spiffe-id", WORKLOAD, "--parent-id", token.agent_id, "--selector", `unix:uid:${uid}`]);
  const roots = rootsPemFromBundleJson(cli(["bundle", "show"]).stdout);
  agent = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: roots, joinToken: token.value, extraAgentYaml: "  taint_replacement_spread: 1s\n" });
}, 120_000);

afterAll(async () => {
  authorityAdmin?.close();
  bundleAdmin?.close();
  await agent?.stop();
  await srv?.stop();
  if (upstreamDir !== undefined) rmSync(upstreamDir, { recursive: true, force: true });
});

describe("an upstream-signed intermediate under a taint (issue 17)", () => {
  it("tainting the intermediate: the workload's stream receives an SVID chaining to the new intermediate, no error in between; revoke leaves the upstream root in the bundle and says so", async () => {
    const rootB64 = Buffer.from(upstreamRoot.raw).toString("base64");
    const old = await activeX509();
    expect(old.upstream).toBe(true);
    // The bundle holds the upstream root, never the intermediate.
    expect(await bundleRoots()).toEqual([rootB64]);

    const stop = path.join(upstreamDir as string, "stop");
    const w = watchX509((agent as AgentProcess).socketPath, stop);
    try {
      await w.until((e) => e.some((x) => x.t === "update"), "the workload's first SVID");
      const first = w.events().find((x): x is WatchUpdate => x.t === "update") as WatchUpdate;
      expect(first.ids).toEqual([WORKLOAD]);
      expectChainThrough(first, b64(old.certDer));

      const taint = (srv as ServerProcess).cli(["authority", "taint", "--key-id", old.keyId]);
      expect(taint.status, taint.stderr).toBe(0);
      expect(taint.stdout).toMatch(/^Prepared and activated x509-\S+ in its place$/m);
      expect((await authorities()).find((a) => a.keyId === old.keyId)?.status).toBe("tainted");
      const next = await activeX509();
      expect(taint.stdout).toContain(next.keyId);
      // The successor is a new intermediate from the same upstream root.
      expect(next.upstream).toBe(true);
      const nextB64 = b64(next.certDer);
      expect(nextB64).not.toBe(b64(old.certDer));
      expect(new X509Certificate(next.certDer).verify(upstreamRoot.publicKey)).toBe(true);

      const underNext = (x: { t: string; chain?: string[] }): boolean => x.t === "update" && x.chain?.[1] === nextB64;
      await w.until((e) => e.some(underNext), "an SVID under the new intermediate");
      const events = w.events();
      expectChainThrough(events.find(underNext) as WatchUpdate, nextB64);
      // Never a gap: no error on the stream, and every message carried the workload's SVID.
      expect(events.filter((x) => x.t === "error"), JSON.stringify(events)).toEqual([]);
      for (const x of events) if (x.t === "update") expect(x.ids).toEqual([WORKLOAD]);
      expect(await bundleRoots()).toEqual([rootB64]);

      // The agent replaced its own SVID too: nothing live chains to the old intermediate any more (bounded poll).
      const live = (): string => json<{ live: string }>(["inventory", "--key-id", old.keyId, "--limit", "-1"]).live;
      for (let i = 0; i < 40 && live() !== "0"; i++) await new Promise((r) => setTimeout(r, 500));
      expect(live()).toBe("0");

      const revoke = (srv as ServerProcess).cli(["authority", "revoke", "--key-id", old.keyId]);
      expect(revoke.status, revoke.stderr).toBe(0);
      expect(revoke.stdout).toBe(`Revoked x509 authority ${old.keyId}: this trust domain no longer serves it; the trust bundle is unchanged (it holds the upstream root)\n`);
      expect(revoke.stderr).toMatch(/^WARNING: x509-\S+ is an upstream-signed intermediate: the trust bundle holds the upstream root, not this intermediate, so revoking it removed nothing from the bundle/);
      expect(revoke.stderr).toContain("only the upstream CA can revoke the intermediate itself");
      expect(await bundleRoots()).toEqual([rootB64]);
      expect((await authorities()).find((a) => a.keyId === old.keyId)?.status).toBe("revoked");
    } finally {
      writeFileSync(stop, "");
      await w.result;
    }
  }, 90_000);
});
