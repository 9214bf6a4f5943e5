/**
 * Issue 17, "a federated peer's bundle drops the key", against real
 * processes: two `sigil-server run` trust domains, `td-a.test` serving its
 * bundle endpoint (`https_spiffe`, a one-second refresh hint) and `td-b.test`
 * federating with it through `sigil-server federation create` (polling at
 * least every second). On td-a an operator prepares a successor, taints the
 * active X.509 authority and revokes it, with the CLI:
 *
 * - prepared: td-b comes to hold the successor (it polls td-a's endpoint);
 * - tainted: td-a's endpoint still serves the old key, and td-b, having
 *   fetched since the taint, still holds it (taint keeps it in the bundle);
 * - revoked: td-a's endpoint no longer serves it, and td-b's copy of td-a's
 *   bundle (`bundle list --id td-a.test`) drops it and keeps the successor.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { BundleAdmin, FederationAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { parseSpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";

const A = "td-a.test";
const B = "td-b.test";

let a: ServerProcess | undefined;
let b: ServerProcess | undefined;
let endpointUrl = "";
let scratch: string | undefined;
// td-b's admin API, for the polls (a CLI process costs a Node start); the checks that matter go through the CLI as well.
let bBundles: ReturnType<typeof createUnaryClient<(typeof BundleAdmin)["method"]>> | undefined;
let bFederation: ReturnType<typeof createUnaryClient<(typeof FederationAdmin)["method"]>> | undefined;

/** A server for trust domain `name`, polling federated endpoints at least every second, with its bundle endpoint (one-second hint) when `endpoint`. */
async function startTrustDomain(name: string, endpoint: boolean): Promise<ServerProcess> {
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-it-"));
  const configPath = path.join(dir, "server.yaml");
  const bundleEndpoint = endpoint ? "  bundle_endpoint:\n    address: 127.0.0.1\n    port: 0\n    refresh_hint: 1s\n" : "";
  try {
    writeFileSync(configPath, testServerConfigYaml(dir, { trustDomain: name, serverExtra: "  log_level: debug\n", extraYaml: `federation:\n  min_refresh_interval: 1s\n${bundleEndpoint}` }));
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return launchServerProcess(dir, configPath, path.join(dir, "admin", "api.sock"), { ownsDir: true });
}

/** `sigil-server <args> --output json` against `srv`, parsed; fails the test with its stderr on a non-zero exit. */
function json<T>(srv: ServerProcess | undefined, args: readonly string[]): T {
  const r = (srv as ServerProcess).cli([...args, "--output", "json"]);
  expect(r.status, `${args.join(" ")}: ${r.stderr}`).toBe(0);
  return JSON.parse(r.stdout) as T;
}

const authoritiesOf = (spiffeBundleJson: string): string[] => parseSpiffeBundle(spiffeBundleJson, parseTrustDomain(A)).bundle.x509Authorities.map((d) => Buffer.from(d).toString("base64"));

/** td-a's X.509 authorities (DER in base64) in the copy of its bundle that td-b holds, as `sigil-server bundle list --id td-a.test` on td-b prints it. */
function heldByB(): string[] {
  const { bundles } = json<{ bundles?: Array<{ trust_domain: string; spiffe_bundle_json: string }> }>(b, ["bundle", "list", "--id", A]);
  const held = bundles?.find((x) => x.trust_domain === A);
  if (!held) throw new Error(`${B} holds no bundle of ${A}`);
  return authoritiesOf(held.spiffe_bundle_json);
}

/** The same through td-b's admin API, for polling. */
async function polledFromB(): Promise<string[]> {
  const held = (await (bBundles as NonNullable<typeof bBundles>).listFederatedBundles({})).bundles.find((x) => x.trustDomain === A);
  return held ? authoritiesOf(held.spiffeBundleJson) : [];
}

/** td-a's X.509 authorities (DER in base64) as its bundle endpoint serves them (the serving SVID is not what this test checks). */
function servedByA(): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const req = request(endpointUrl, { rejectUnauthorized: false, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (d: Buffer) => chunks.push(d));
      res.on("end", () => {
        try {
          resolve(authoritiesOf(Buffer.concat(chunks).toString("utf8")));
        } catch (e) {
          reject(e as Error);
        }
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

/** Resolves once `check` holds, polling every 250 ms; rejects after 30 s (a bound for a failing run, not a timing assertion). */
async function until(what: string, check: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** An authority as `authority list --output json` prints it. */
interface AuthorityRow {
  readonly kind: string;
  readonly key_id: string;
  readonly status: string;
  readonly cert_der?: string;
}

beforeAll(async () => {
  scratch = mkdtempSync(path.join(tmpdir(), "sigil-it-authority-fed-"));
  a = await startTrustDomain(A, true);
  endpointUrl = String((await a.waitForLog((r) => r.msg === "bundle endpoint listening")).url);
  b = await startTrustDomain(B, false);
  const bootstrap = path.join(scratch, `${A}.bundle.json`);
  const shown = a.cli(["bundle", "show", "--format", "spiffe"]);
  expect(shown.status, shown.stderr).toBe(0);
  writeFileSync(bootstrap, shown.stdout);
  bBundles = createUnaryClient(BundleAdmin, `unix:${b.socketPath}`, credentials.createInsecure());
  bFederation = createUnaryClient(FederationAdmin, `unix:${b.socketPath}`, credentials.createInsecure());
  json(b, ["federation", "create", "--trust-domain", A, "--bundle-endpoint-url", endpointUrl, "--bundle-endpoint-profile", "https_spiffe", "--endpoint-spiffe-id", `spiffe://${A}/spire/server`, "--trust-domain-bundle-path", bootstrap]);
}, 90_000);

afterAll(async () => {
  bBundles?.close();
  bFederation?.close();
  await b?.stop();
  await a?.stop();
  if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
});

describe("a federated peer under a taint and revoke (issue 17)", () => {
  it("td-b keeps td-a's tainted key while it is only tainted, and drops it from td-a's bundle once td-a revokes it", async () => {
    const old = json<{ authorities: AuthorityRow[] }>(a, ["authority", "list"]).authorities.find((x) => x.kind === "x509" && x.status === "active");
    if (!old?.cert_der) throw new Error("td-a has no active X.509 authority");
    expect(heldByB()).toContain(old.cert_der);

    // Prepared: published at once, and td-b's poller brings it over.
    const next = json<AuthorityRow>(a, ["authority", "prepare", "--kind", "x509"]);
    if (!next.cert_der) throw new Error("the prepared authority has no certificate");
    await until(`${B} to hold ${A}'s prepared authority`, async () => (await polledFromB()).includes(next.cert_der as string));

    // Tainted: td-a hands over to the successor and keeps the old key in its bundle, and so does td-b after fetching again.
    const taintedAt = Date.now();
    const tainted = json<{ tainted: AuthorityRow; activated?: AuthorityRow }>(a, ["authority", "taint", "--key-id", old.key_id]);
    expect(tainted.tainted.status).toBe("tainted");
    expect(tainted.activated?.key_id).toBe(next.key_id);
    expect(await servedByA()).toContain(old.cert_der);
    await until(`${B} to fetch ${A}'s bundle after the taint`, async () => {
      const { status } = await (bFederation as NonNullable<typeof bFederation>).getFederationRelationship({ trustDomain: A });
      return Number(status?.lastSuccess ?? 0n) > taintedAt;
    });
    expect(heldByB()).toEqual(expect.arrayContaining([old.cert_der, next.cert_der]));

    // Revoked: the key leaves td-a's bundle, so its endpoint stops serving it, and td-b's copy drops it at its next fetch.
    // td-a has no agents: nothing live chains to the key, so revoke needs no --force.
    expect(json<{ live: string }>(a, ["inventory", "--key-id", old.key_id, "--limit", "-1"]).live).toBe("0");
    const revoke = (a as ServerProcess).cli(["authority", "revoke", "--key-id", old.key_id]);
    expect(revoke.status, revoke.stderr).toBe(0);
    expect(revoke.stderr).toBe("");
    expect(revoke.stdout).toBe(`Revoked x509 authority ${old.key_id}: it is no longer in the trust bundle\n`);
    const served = await servedByA();
    expect(served).not.toContain(old.cert_der);
    expect(served).toContain(next.cert_der);
    await until(`${B}'s copy of ${A}'s bundle to drop the revoked key`, async () => !(await polledFromB()).includes(old.cert_der as string));
    expect(heldByB()).toEqual(served);
  }, 90_000);
});
