/**
 * Crisis commands end to end against a real `sigil-server run` process:
 * `authority list|taint|revoke` and `inventory` (CLI, `--output json`) with
 * two agents attested over the real agent API. Taint the active X.509 CA: a
 * successor signs at once; the inventory names the agents still holding
 * SVIDs under the old key and drains as they renew; revoke is refused before
 * and succeeds after, and the root leaves the bundle. JWT: a token of the
 * tainted key validates until revoke (forced, with a warning) and fails after.
 * Bad input (unknown key, revoke of the active key) is refused and changes nothing.
 */
import { credentials, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AuthorityAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { parseSpiffeBundle, toJwtBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { buildCsr } from "../../spiffe/csr.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import { validateJwtSvid } from "../../spiffe/jwt/validate.js";
import { attestWithJoinToken, refusal, rootsPemFromBundleJson, type Attested } from "./support/test-agent.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";

const td = parseTrustDomain("example.org");

interface AuthorityJson {
  key_id: string;
  kind: string;
  status: string;
  live_svids?: string;
  cert_der?: string;
}

let srv: ServerProcess;
let admin: ReturnType<typeof createUnaryClient<(typeof AuthorityAdmin)["method"]>>;
const agents: Attested[] = [];

function json<T>(args: string[]): T {
  const r = srv.cli([...args, "--output", "json"]);
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as T;
}

const list = () => json<{ authorities: AuthorityJson[] }>(["authority", "list"]).authorities;
const bundle = () => parseSpiffeBundle(json<{ spiffe_bundle_json: string }>(["bundle", "show"]).spiffe_bundle_json, td).bundle;

beforeAll(async () => {
  srv = await startServerProcess();
  admin = createUnaryClient(AuthorityAdmin, `unix:${srv.socketPath}`, credentials.createInsecure());
  // The successor is prepared first, so these test agents (which pin the roots they start with) trust it too.
  const prepared = srv.cli(["authority", "prepare", "--kind", "x509"]);
  expect(prepared.status, prepared.stderr).toBe(0);
  expect(prepared.stdout).toMatch(/^Prepared x509 authority x509-B-/);
  const roots = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
  for (let i = 0; i < 2; i++) {
    const tok = json<{ value: string }>(["token", "generate"]);
    agents.push(await attestWithJoinToken(srv.agentApiAddress, roots, tok.value));
  }
}, 180_000);

afterAll(async () => {
  for (const a of agents) a.api.close();
  admin?.close();
  await srv?.stop();
});

describe("authority taint and revoke (real server)", () => {
  it("X.509: bad input changes nothing; taint hands over; the inventory drains as agents renew; revoke refused before, done after", async () => {
    const before = list();
    const old = before.find((a) => a.kind === "x509" && a.status === "active");
    if (!old) throw new Error("no active X.509 authority");
    expect(Number(old.live_svids)).toBe(2);

    // Bad input: clear errors, nothing changed.
    const unknown = await refusal(admin.taintAuthority({ keyId: "x509-Z-000000000000" }));
    expect(unknown.code).toBe(status.NOT_FOUND);
    expect(unknown.details).toContain("x509-Z-000000000000");
    const active = await refusal(admin.revokeAuthority({ keyId: old.key_id }));
    expect(active.code).toBe(status.FAILED_PRECONDITION);
    expect(active.details).toMatch(/refusing to revoke the active x509 authority .*taint it first/);
    const badKind = await refusal(admin.prepareAuthority({ kind: "rsa" }));
    expect(badKind.code).toBe(status.INVALID_ARGUMENT);
    expect(badKind.details).toMatch(/^kind: must be "x509" or "jwt"/);
    expect(list()).toEqual(before);

    const inv = json<{ live: string; agents: Array<{ agent_id: string; count: string }> }>(["inventory", "--key-id", old.key_id]);
    expect(inv.live).toBe("2");
    expect(inv.agents.map((a) => a.agent_id).sort()).toEqual(agents.map((a) => a.spiffeId).sort());

    const taint = srv.cli(["authority", "taint", "--key-id", old.key_id]);
    expect(taint.status, taint.stderr).toBe(0);
    expect(taint.stdout).toContain(`Tainted x509 authority ${old.key_id}`);
    expect(taint.stdout).toMatch(/^Activated x509-B-\w+ in its place$/m);
    const after = list();
    expect(after.find((a) => a.key_id === old.key_id)?.status).toBe("tainted");
    const next = after.find((a) => a.kind === "x509" && a.status === "active");
    expect(next?.key_id).not.toBe(old.key_id);
    // Still in the bundle: connections made with what it signed keep verifying.
    expect(bundle().x509Authorities.map((d) => Buffer.from(d).toString("base64"))).toContain(old.cert_der);

    // Revoke refused while agents still hold SVIDs under the key.
    const early = srv.cli(["authority", "revoke", "--key-id", old.key_id]);
    expect(early.status).not.toBe(0);
    expect(early.stderr).toMatch(/2 live SVID\(s\) still chain to x509 authority/);
    expect(list().find((a) => a.key_id === old.key_id)?.status).toBe("tainted");

    // The agents renew: their new SVIDs come from the successor, and the inventory drains.
    for (const a of agents) {
      const r = await a.api.renewAgent({ csr: buildCsr(a.key) });
      expect(r.svid?.certChain.length).toBeGreaterThan(0);
    }
    expect(json<{ live: string }>(["inventory", "--key-id", old.key_id]).live).toBe("0");
    expect(json<{ live: string }>(["inventory", "--key-id", next?.key_id ?? "", "--limit", "-1"]).live).toBe("2");

    const revoke = srv.cli(["authority", "revoke", "--key-id", old.key_id]);
    expect(revoke.status, revoke.stderr).toBe(0);
    expect(revoke.stdout).toContain(`Revoked x509 authority ${old.key_id}`);
    expect(revoke.stderr).toBe("");
    expect(bundle().x509Authorities.map((d) => Buffer.from(d).toString("base64"))).not.toContain(old.cert_der);
  }, 400_000); // ~20 CLI processes, each a full Node start

  it("JWT: a token of the tainted key validates until revoke (forced over the live token, with a warning) and fails after", async () => {
    const token = json<{ token: string }>(["jwt", "mint", "--spiffe-id", "spiffe://example.org/minted", "--audience", "db"]).token;
    const old = list().find((a) => a.kind === "jwt" && a.status === "active");
    if (!old) throw new Error("no active JWT key");
    const validate = () => validateJwtSvid(token, { getJwtBundleForTrustDomain: () => toJwtBundle(bundle()) }, { audience: "db" });
    const t = await admin.taintAuthority({ kind: "jwt", keyId: old.key_id });
    expect(t.tainted?.status).toBe("tainted");
    expect(t.activated?.keyId).not.toBe(old.key_id);
    expect(validate().spiffeId.toString()).toBe("spiffe://example.org/minted");
    // The minted token is live (admin mints are never superseded): refused without --force.
    const early = srv.cli(["authority", "revoke", "--kind", "jwt", "--key-id", old.key_id]);
    expect(early.status).not.toBe(0);
    expect(early.stderr).toMatch(/1 live SVID\(s\) still chain to jwt authority/);
    const forced = srv.cli(["authority", "revoke", "--kind", "jwt", "--key-id", old.key_id, "--force"]);
    expect(forced.status, forced.stderr).toBe(0);
    expect(forced.stderr).toMatch(/WARNING: revoked with 1 live SVID\(s\) still chaining/);
    expect(() => validate()).toThrow();
  }, 300_000);
});
