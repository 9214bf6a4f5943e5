/**
 * NewDownstreamX509CA against a real `sigil-server run` with the transparency
 * log on, called over the agent API listener by a test client presenting an
 * X509-SVID (minted by the admin CLI) as TLS client certificate:
 *
 * - an ID whose entry is marked downstream gets an intermediate CA (CA:true,
 *   URI SAN `spiffe://example.org`) that `openssl verify` chains to the
 *   server's root, and a leaf signed with the intermediate's key verifies
 *   through it; `log prove --cert` proves it as a `downstream-ca` entry and
 *   `log verify` passes;
 * - an ID whose entry is not marked downstream is PermissionDenied, naming why;
 * - a bad key or a negative preferred_ttl is InvalidArgument naming the field.
 */
import { execFileSync } from "node:child_process";
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { DownstreamAPI } from "../../proto/gen/sigil/agent/v1/downstream_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { buildCsr } from "../../spiffe/csr.js";
import { encodePemCertificates } from "../../spiffe/pem.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { cliLogVerify, cliUntilOk } from "./support/tlog-cli.js";
import { tlsCredentials } from "./support/test-agent.js";

let srv: ServerProcess;
let url: string;
const work = mkdtempSync(path.join(tmpdir(), "sigil-downstream-ca-"));

beforeAll(async () => {
  srv = await startServerProcess("transparency_log:\n  enabled: true\n  checkpoint_interval: 200ms\n  listen_address: 127.0.0.1:0\n");
  const started = await srv.waitForLog((r) => r.msg === "server started");
  url = String(started.transparency_log);
  const entryAdmin = createUnaryClient(EntryAdmin, `unix:${srv.socketPath}`, credentials.createInsecure());
  const agentAdmin = createUnaryClient(AgentAdmin, `unix:${srv.socketPath}`, credentials.createInsecure());
  // Entries need a parent the server knows: a join token's agent ID.
  const parentId = (await agentAdmin.createJoinToken({ ttl: 600 })).agentId;
  agentAdmin.close();
  const created = await entryAdmin.batchCreateEntry({
    entries: [
      create(EntrySchema, { spiffeId: "spiffe://example.org/child-server", parentId, selectors: [{ type: "unix", value: "uid:5001" }], downstream: true }),
      create(EntrySchema, { spiffeId: "spiffe://example.org/plain", parentId, selectors: [{ type: "unix", value: "uid:5002" }] }),
    ],
  });
  entryAdmin.close();
  expect(created.results.map((r) => r.status?.code ?? 0)).toEqual([0, 0]);
  for (const name of ["child-server", "plain"]) {
    const minted = srv.cli(["x509", "mint", "--spiffe-id", `spiffe://example.org/${name}`, "--write", path.join(work, name)]);
    expect(minted.status, minted.stderr).toBe(0);
  }
}, 60_000);
afterAll(async () => {
  await srv?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** A DownstreamAPI client presenting the SVID minted for `name`. */
function clientAs(name: string) {
  const dir = path.join(work, name);
  const identity = { keyPem: readFileSync(path.join(dir, "svid.key"), "utf8"), certPem: readFileSync(path.join(dir, "svid.pem"), "utf8") };
  return createUnaryClient(DownstreamAPI, srv.agentApiAddress, tlsCredentials(readFileSync(path.join(dir, "bundle.pem"), "utf8"), identity));
}

async function refusal(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (e) {
    return e as ServiceError;
  }
  throw new Error("the call succeeded");
}

describe("NewDownstreamX509CA, real server", () => {
  it("signs a logged intermediate CA for a downstream entry's SVID that chains to the root; log prove and log verify pass", async () => {
    const client = clientAs("child-server");
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const res = await client.newDownstreamX509CA({ key: { case: "csr", value: buildCsr(privateKey) }, preferredTtl: 3600n });
    client.close();
    expect(res.caCertChain).toHaveLength(1);
    const ca = new X509Certificate(res.caCertChain[0] as Uint8Array);
    expect(ca.ca).toBe(true);
    expect(ca.subjectAltName).toBe("URI:spiffe://example.org");
    expect(Buffer.from(ca.publicKey.export({ format: "der", type: "spki" }))).toEqual(publicKey.export({ format: "der", type: "spki" }));
    expect(Number(res.expiresAt)).toBe(Math.floor(Date.parse(ca.validTo) / 1000));
    expect(Date.parse(ca.validTo) - Date.now()).toBeLessThanOrEqual(3_600_000);

    const rootFile = path.join(work, "root.pem");
    const caFile = path.join(work, "downstream-ca.pem");
    writeFileSync(rootFile, encodePemCertificates(res.x509Authorities));
    writeFileSync(caFile, encodePemCertificates([res.caCertChain[0] as Uint8Array]));
    expect(execFileSync("openssl", ["verify", "-CAfile", rootFile, caFile], { encoding: "utf8" })).toContain(": OK");

    const proved = JSON.parse((await cliUntilOk(srv, ["log", "prove", "--cert", caFile, "--output", "json"])).stdout) as { entry: Record<string, unknown>; verified: boolean };
    expect(proved.verified).toBe(true);
    expect(proved.entry).toMatchObject({ kind: "downstream-ca", spiffeId: "spiffe://example.org", requestedBy: "downstream:spiffe://example.org/child-server", cert: Buffer.from(res.caCertChain[0] as Uint8Array).toString("base64") });

    const verify = cliLogVerify(srv, url, work);
    expect(verify.status, verify.stderr).toBe(0);
    expect(JSON.parse(verify.stdout)).toMatchObject({ findings_total: 0 });
  }, 120_000);

  it("refuses an SVID whose entry is not marked downstream with PermissionDenied naming why", async () => {
    const client = clientAs("plain");
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const err = await refusal(client.newDownstreamX509CA({ key: { case: "publicKey", value: publicKey.export({ format: "der", type: "spki" }) } }));
    client.close();
    expect(err.code).toBe(status.PERMISSION_DENIED);
    expect(err.details).toContain("spiffe://example.org/plain has no registration entry marked downstream");
  });

  it("refuses a missing or bad key and a negative preferred_ttl with InvalidArgument naming the field", async () => {
    const client = clientAs("child-server");
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const spki = publicKey.export({ format: "der", type: "spki" });
    const cases: [Parameters<typeof client.newDownstreamX509CA>[0], string][] = [
      [{}, "new downstream x509 ca: key: a csr or public_key is required"],
      [{ key: { case: "publicKey", value: Buffer.from("not a key") } }, "new downstream x509 ca: public_key:"],
      [{ key: { case: "csr", value: Buffer.from("not a csr") } }, "new downstream x509 ca: csr:"],
      [{ key: { case: "publicKey", value: spki }, preferredTtl: -1n }, "new downstream x509 ca: preferred_ttl: -1 is negative"],
    ];
    for (const [req, message] of cases) {
      const err = await refusal(client.newDownstreamX509CA(req));
      expect([err.code, err.details]).toEqual([status.INVALID_ARGUMENT, expect.stringContaining(message)]);
    }
    client.close();
  });
});
