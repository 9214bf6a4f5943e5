/**
 * The `sigil` UpstreamAuthority's own checks, against a fake Workload API and
 * a fake parent (a DownstreamAPI over mTLS with a real server SVID): its
 * config; a Workload API it cannot reach (ERR_UNAVAILABLE naming the socket);
 * an answer it must not use (a CA under a root outside the Workload API
 * bundle, a wrong SAN, a non-CA) refused, and the roots it publishes taken
 * from the Workload API bundle, not from the parent's answer; which SVID it
 * presents (`spiffe_id`, or each in turn until one is accepted); and the
 * bundle watch that pushes the parent's changed roots. The path through a
 * real agent and parent is test/integration/nested-servers.test.ts.
 */
import { createPrivateKey, generateKeyPairSync, X509Certificate } from "node:crypto";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { Server, ServerCredentials, status, type sendUnaryData, type ServerUnaryCall } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { DownstreamAPI, NewDownstreamX509CAResponseSchema, type NewDownstreamX509CARequest, type NewDownstreamX509CAResponse } from "../../../../proto/gen/sigil/agent/v1/downstream_pb.js";
import { createSigilUpstreamAuthority, sigilUpstreamAuthorityConfigSchema } from "../../../../plugins/upstreamauthority/sigil/index.js";
import { grpcServiceDefinition } from "../../../../spiffe/grpc/service.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import { encodePemCertificates } from "../../../../spiffe/pem.js";
import { createKeyObjectSigner } from "../../../../spiffe/signer.js";
import { createIntermediateCa } from "../../../../spiffe/x509/ca.js";
import {
  AsyncQueue,
  concatCaDers,
  createTestCa,
  FakeWorkloadApi,
  issueTestX509Svid,
  x509BundlesResponse,
  x509SvidEntry,
  x509SvidResponse,
  type TestCa,
} from "../../../fakes/fake-workload-api.js";
import { testTempDir } from "../../../support/temp-dir.js";
import { requireTool } from "../../../support/tools.js";

const td = parseTrustDomain("example.org");
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const mintRequest = () => {
  const now = Date.now();
  return { trustDomain: td, publicKey: generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey, notBefore: new Date(now), notAfter: new Date(now + 3_600_000) };
};

/** What the fake parent signs with: the CA `issuer`, for trust domain `caTd`. */
interface Answer {
  readonly issuer: TestCa;
  readonly caTd?: string;
  readonly roots: readonly TestCa[];
}

/** A fake parent: DownstreamAPI over mTLS as `spiffe://example.org/spire/server` under `root`, accepting only `accepted` caller IDs. */
async function startParent(root: TestCa, accepted: readonly string[], answer: () => Answer) {
  const serverSvid = issueTestX509Svid(root, "spiffe://example.org/spire/server");
  const callers: string[] = [];
  const server = new Server();
  server.addService(grpcServiceDefinition(DownstreamAPI), {
    newDownstreamX509CA: (call: ServerUnaryCall<NewDownstreamX509CARequest, NewDownstreamX509CAResponse>, cb: sendUnaryData<NewDownstreamX509CAResponse>) => {
      const caller = (call.getAuthContext()?.sslPeerCertificate?.subjectaltname ?? "").replace(/^URI:/, "");
      callers.push(caller);
      if (!accepted.includes(caller)) return cb({ code: status.PERMISSION_DENIED, details: `${caller} has no registration entry marked downstream` });
      const a = answer();
      const now = Date.now();
      const certDer = createIntermediateCa({
        trustDomain: parseTrustDomain(a.caTd ?? "example.org"),
        subjectPublicKey: call.request.key.value as Uint8Array,
        issuerCertDer: a.issuer.der,
        issuerSigner: createKeyObjectSigner(createPrivateKey(a.issuer.keyPem)),
        notBefore: new Date(now - 1000),
        notAfter: new Date(now + 3_600_000),
      });
      cb(null, create(NewDownstreamX509CAResponseSchema, { caCertChain: [certDer], x509Authorities: a.roots.map((r) => r.der) }));
    },
  });
  const creds = ServerCredentials.createSsl(
    Buffer.from(root.certPem),
    [{ cert_chain: Buffer.from(encodePemCertificates([serverSvid.leafDer])), private_key: Buffer.from(createPrivateKey({ key: Buffer.from(serverSvid.keyDer), format: "der", type: "pkcs8" }).export({ format: "pem", type: "pkcs8" }) as string) }],
    true,
  );
  const port = await new Promise<number>((resolve, reject) => server.bindAsync("127.0.0.1:0", creds, (e, p) => (e ? reject(e) : resolve(p))));
  cleanups.push(() => new Promise<void>((resolve) => server.tryShutdown(() => resolve())));
  return { address: `127.0.0.1:${port}`, callers };
}

/** A fake Workload API serving `svids` (IDs under `root`) and `root` as the bundle. */
async function startWorkloadApi(root: TestCa, ids: readonly string[]) {
  const wapi = await FakeWorkloadApi.start();
  cleanups.push(() => wapi.close());
  wapi.x509Svid.push(x509SvidResponse({ svids: ids.map((id) => x509SvidEntry(issueTestX509Svid(root, id), root)) }));
  return wapi;
}

describe("sigil upstream authority", () => {
  it.each([
    [{ workload_api_socket: "/run/agent.sock" }, "server_address"],
    [{ server_address: "parent.example.org", workload_api_socket: "/run/agent.sock" }, "server_address"],
    [{ server_address: "parent.example.org:8081" }, "workload_api_socket"],
    [{ server_address: "parent.example.org:8081", workload_api_socket: "/run/agent.sock", ca_ttl: "1h" }, "ca_ttl"],
    [{ server_address: "parent.example.org:8081", workload_api_socket: "/run/agent.sock", spiffe_id: "example.org/child" }, "spiffe_id"],
  ])("refuses the config %j, naming %s", (config, field) => {
    const r = sigilUpstreamAuthorityConfigSchema.safeParse(config);
    expect(r.success).toBe(false);
    expect(JSON.stringify(r.error?.issues)).toContain(field);
  });

  it("reports a Workload API it cannot reach as ERR_UNAVAILABLE naming the socket", async () => {
    const socket = path.join(testTempDir("sigil-ua-sigil-"), "no-agent.sock");
    const ua = createSigilUpstreamAuthority({ server_address: "127.0.0.1:1", workload_api_socket: socket });
    await expect(ua.mintX509Ca(mintRequest())).rejects.toMatchObject({ code: "ERR_UNAVAILABLE", message: expect.stringContaining(`cannot fetch this server's X509-SVID from the Workload API at ${socket}`) });
  });

  it("uses a good answer, publishing the Workload API bundle's roots rather than the parent's list", async () => {
    requireTool("openssl");
    const [root, foreign] = [createTestCa("example.org"), createTestCa("example.org")];
    const parent = await startParent(root, ["spiffe://example.org/child"], () => ({ issuer: root, roots: [root, foreign] }));
    const wapi = await startWorkloadApi(root, ["spiffe://example.org/child"]);
    const ua = createSigilUpstreamAuthority({ server_address: parent.address, workload_api_socket: wapi.socketPath });
    const req = mintRequest();
    const minted = await ua.mintX509Ca(req);
    expect(new X509Certificate(minted.certDer).publicKey.equals(req.publicKey)).toBe(true);
    expect(minted.rootDers.map((d) => Buffer.from(d).toString("hex"))).toEqual([Buffer.from(root.der).toString("hex")]);
  });

  it.each([
    ["a CA under a root outside the Workload API bundle", "foreign", undefined, "does not chain to a root of the Workload API bundle"],
    ["a CA of another trust domain", "root", "other.org", "SAN is not exactly URI:spiffe://example.org"],
  ])("refuses %s from a peer holding a server SVID, with ERR_UNAVAILABLE", async (_what, issuerName, caTd, message) => {
    requireTool("openssl");
    const [root, foreign] = [createTestCa("example.org"), createTestCa("example.org")];
    const issuer = issuerName === "foreign" ? foreign : root;
    const parent = await startParent(root, ["spiffe://example.org/child"], () => ({ issuer, roots: [foreign], ...(caTd ? { caTd } : {}) }));
    const wapi = await startWorkloadApi(root, ["spiffe://example.org/child"]);
    const ua = createSigilUpstreamAuthority({ server_address: parent.address, workload_api_socket: wapi.socketPath });
    await expect(ua.mintX509Ca(mintRequest())).rejects.toMatchObject({ code: "ERR_UNAVAILABLE", message: expect.stringContaining(message) });
  });

  it("presents spiffe_id's SVID when set; without it tries each SVID until the parent accepts one", async () => {
    requireTool("openssl");
    const root = createTestCa("example.org");
    const parent = await startParent(root, ["spiffe://example.org/child"], () => ({ issuer: root, roots: [root] }));
    const wapi = await startWorkloadApi(root, ["spiffe://example.org/web", "spiffe://example.org/child"]);
    await createSigilUpstreamAuthority({ server_address: parent.address, workload_api_socket: wapi.socketPath }).mintX509Ca(mintRequest());
    expect(parent.callers).toEqual(["spiffe://example.org/web", "spiffe://example.org/child"]);
    parent.callers.length = 0;
    await createSigilUpstreamAuthority({ server_address: parent.address, workload_api_socket: wapi.socketPath, spiffe_id: "spiffe://example.org/child" }).mintX509Ca(mintRequest());
    expect(parent.callers).toEqual(["spiffe://example.org/child"]);
    const wrong = createSigilUpstreamAuthority({ server_address: parent.address, workload_api_socket: wapi.socketPath, spiffe_id: "spiffe://example.org/web" });
    await expect(wrong.mintX509Ca(mintRequest())).rejects.toMatchObject({ code: "ERR_PERMISSION_DENIED", message: expect.stringContaining("refused NewDownstreamX509CA for spiffe://example.org/web") });
  });

  it("pushes the Workload API bundle's roots each time they change, until stopped", async () => {
    requireTool("openssl");
    const [r1, r2] = [createTestCa("example.org"), createTestCa("example.org")];
    const wapi = await FakeWorkloadApi.start();
    cleanups.push(() => wapi.close());
    const ua = createSigilUpstreamAuthority({ server_address: "127.0.0.1:1", workload_api_socket: wapi.socketPath });
    cleanups.push(() => ua.close?.());
    const pushed = new AsyncQueue<string[]>();
    const stop = ua.watchRoots?.(td, (roots) => pushed.push(roots.map((d) => Buffer.from(d).toString("hex"))));
    const hex = (c: TestCa) => Buffer.from(c.der).toString("hex");
    wapi.x509Bundles.push(x509BundlesResponse({ bundles: { "spiffe://example.org": concatCaDers([r1]) } }));
    expect(await pushed.next()).toEqual([hex(r1)]);
    wapi.x509Bundles.push(x509BundlesResponse({ bundles: { "spiffe://example.org": concatCaDers([r1]), "spiffe://other.org": concatCaDers([r2]) } })); // no change for example.org
    wapi.x509Bundles.push(x509BundlesResponse({ bundles: { "spiffe://example.org": concatCaDers([r1, r2]) } }));
    expect(await pushed.next()).toEqual([hex(r1), hex(r2)]);
    wapi.x509Bundles.push(x509BundlesResponse({ bundles: { "spiffe://example.org": concatCaDers([r2]) } }));
    expect(await pushed.next()).toEqual([hex(r2)]);
    stop?.();
    expect(pushed.pending).toBe(0);
  });
});
