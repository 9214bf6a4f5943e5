/**
 * Issue 17, "Revoke: removes the key from bundles everywhere", seen from a
 * workload: a server and one agent. After the active X.509 authority is
 * tainted, replaced in the workload's SVID and revoked, the agent's Workload
 * API (FetchX509Bundles and the bundle in FetchX509SVID) stops serving the
 * revoked root; after the JWT key is tainted and revoked, FetchJWTBundles
 * stops listing its kid. Both are polled with a generous bound (30 s).
 *
 * The agent's own SVID is under the tainted authority too: unless it is
 * replaced no later than the workload's, the revoke cuts the agent off the
 * server (its SVID no longer verifies), and it keeps serving the revoked root.
 */
import { createHash, X509Certificate } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rootsPemFromBundleJson } from "./support/test-agent.js";
import { runServerCli, startServerProcess, type ServerProcess } from "./support/server-process.js";
import { authorityCli, type AuthorityRow } from "./support/authority-cli.js";
import { runWorkload, startAgentProcess, type AgentProcess } from "./support/agent-process.js";

const authorityHelp = runServerCli(["authority", "--help"]);
const authorityCommand = authorityHelp.status === 0 && /^\s+revoke\b/m.test(authorityHelp.stdout);
if (!authorityCommand) console.warn("SKIP: authority-revoke-agents needs `sigil-server authority revoke` (issue 17), not in this tree yet");

const uid = process.getuid?.() ?? 0;
const TD = "example.org";
const SPIFFE_ID = `spiffe://${TD}/revoke/w`;

const spkiSha256 = (der: Uint8Array): string =>
  createHash("sha256").update(new X509Certificate(der).publicKey.export({ format: "der", type: "spki" })).digest("hex");

/** What a workload sees through the agent's Workload API, in one run. */
interface WorkloadView {
  /** SPKI hashes of the own trust domain's roots from FetchX509Bundles. */
  readonly bundleRoots: string[];
  /** SPKI hashes of the own trust domain's roots in FetchX509SVID's bundle. */
  readonly svidBundleRoots: string[];
  /** SPKI hash of the root that signed the default SVID (its chain's last certificate's issuer among the roots). */
  readonly svidSigner: string | undefined;
  /** Key ids of the own trust domain's JWT bundle from FetchJWTBundles. */
  readonly jwtKids: string[];
}

let srv: ServerProcess | undefined;
let agent: AgentProcess | undefined;

describe.skipIf(!authorityCommand)("revoke reaches the agent's Workload API (issue 17)", () => {
  const { cli, authorities, active } = authorityCli(() => srv);
  /** SPKI hashes of the X.509 roots in the server's `bundle show`. */
  const serverRoots = (): string[] => {
    const pem = rootsPemFromBundleJson(cli(["bundle", "show"]));
    return pem
      .split(/(?=-----BEGIN CERTIFICATE-----)/)
      .filter((p) => p.includes("BEGIN CERTIFICATE"))
      .map((p) => spkiSha256(new X509Certificate(p).raw));
  };

  async function view(): Promise<WorkloadView> {
    const r = await runWorkload(
      (agent as AgentProcess).socketPath,
      `const b = await client.fetchX509Bundles();
const c = await client.fetchX509Context();
const j = await client.fetchJwtBundles();
const hex = (d) => Array.from(new Uint8Array(d)).map((x) => x.toString(16).padStart(2, "0")).join("");
const ders = (m) => (m.get(${JSON.stringify(TD)})?.authorityDers ?? []).map((d) => Buffer.from(d).toString("base64"));
const leaf = Buffer.from(c.defaultSvid.certificateDers[0]).toString("base64");
console.log(JSON.stringify({ bundle: ders(b.bundles), svidBundle: ders(c.bundles), leaf, kids: [...(j.bundles.get(${JSON.stringify(TD)})?.authorities.keys() ?? [])] }));`,
    );
    const last = JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}") as { bundle?: string[]; svidBundle?: string[]; leaf?: string; kids?: string[]; error?: unknown };
    if (last.bundle === undefined || last.svidBundle === undefined || last.kids === undefined) throw new Error(`workload failed: ${r.stdout} ${r.stderr}`);
    const der = (b64: string): Uint8Array => Buffer.from(b64, "base64");
    const svidBundle = last.svidBundle.map(der);
    let svidSigner: string | undefined;
    if (last.leaf) {
      const leaf = new X509Certificate(der(last.leaf));
      const ca = svidBundle.map((d) => new X509Certificate(d)).find((a) => leaf.checkIssued(a) && leaf.verify(a.publicKey));
      svidSigner = ca ? spkiSha256(ca.raw) : undefined;
    }
    return { bundleRoots: last.bundle.map((b) => spkiSha256(der(b))), svidBundleRoots: svidBundle.map(spkiSha256), svidSigner, jwtKids: last.kids };
  }

  /** Polls the workload's view (bounded) until `ok` holds; returns the last view. */
  async function until(ok: (v: WorkloadView) => boolean, what: string, rounds = 60): Promise<WorkloadView> {
    let v = await view();
    for (let i = 0; i < rounds && !ok(v); i++) {
      await new Promise((r) => setTimeout(r, 500));
      v = await view();
    }
    if (!ok(v)) console.warn(`agent log tail: ${JSON.stringify((agent as AgentProcess).logs.slice(-5))}`);
    expect(ok(v), `${what}: ${JSON.stringify(v)}`).toBe(true);
    return v;
  }

  beforeAll(async () => {
    srv = await startServerProcess();
    const roots = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
    const { value, agent_id: agentId } = JSON.parse(cli(["token", "generate"])) as { value: string; agent_id: string };
    cli(["entry", "create", "--spiffe-id", SPIFFE_ID, "--parent-id", agentId, "--selector", `unix:uid:${uid}`]);
    // A spread wide enough that the agent SVID's own draw often falls after the workload's: the agent must still
    // hold an SVID under the new authority by the time the revoke comes, or it can no longer sync.
    agent = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: roots, joinToken: value, extraAgentYaml: "  taint_replacement_spread: 20s\n" });
  }, 180_000);

  afterAll(async () => {
    await agent?.stop();
    await srv?.stop();
  });

  it("revoking a tainted X.509 authority: FetchX509Bundles and FetchX509SVID's bundle drop its root", async () => {
    const first = await until((v) => v.svidSigner !== undefined, "the workload's first SVID");
    const old = first.svidSigner as string;
    expect(first.bundleRoots).toContain(old);

    cli(["authority", "taint", "--key-id", active("x509").key_id]);
    const tainted = authorities().find((a) => a.kind === "x509" && a.status === "tainted");
    expect(tainted, JSON.stringify(authorities())).toBeDefined();
    await until((v) => v.svidSigner !== undefined && v.svidSigner !== old, "an SVID from the new authority");

    const revokedAt = Date.now();
    const r = (srv as ServerProcess).cli(["authority", "revoke", "--key-id", (tainted as AuthorityRow).key_id, "--force"]);
    expect(r.status, r.stderr).toBe(0);
    expect(serverRoots()).not.toContain(old);

    const after = await until((v) => !v.bundleRoots.includes(old) && !v.svidBundleRoots.includes(old), "the revoked root gone from the Workload API");
    // A figure for the docs, not an assertion (each look is a new workload process, so it is an upper bound).
    console.log(`revoked root gone from the agent's Workload API ${Date.now() - revokedAt} ms after the revoke command started`);
    // The replacement still verifies: its root stays.
    expect(after.svidBundleRoots).toContain(after.svidSigner);
  }, 120_000);

  it("revoking a tainted JWT key: FetchJWTBundles no longer lists its kid", async () => {
    const kid = active("jwt").key_id;
    await until((v) => v.jwtKids.includes(kid), "the active JWT key in FetchJWTBundles");
    cli(["authority", "taint", "--key-id", kid]);
    const revokedAt = Date.now();
    const r = (srv as ServerProcess).cli(["authority", "revoke", "--key-id", kid, "--force"]);
    expect(r.status, r.stderr).toBe(0);
    const after = await until((v) => !v.jwtKids.includes(kid), "the revoked kid gone from FetchJWTBundles");
    console.log(`revoked kid gone from the agent's FetchJWTBundles ${Date.now() - revokedAt} ms after the revoke command started`);
    expect(after.jwtKids).toContain(active("jwt").key_id);
  }, 120_000);
});
