/**
 * Envoy SDS v3 on the agent socket (issue 12), end to end: real `sigil-server`
 * and `sigil-agent` processes, and an Envoy-like client written from Envoy's
 * protos alone (`test/support/sds-client.ts`). The test process (uid 0) holds
 * two identities: `sds/a` (oldest, so `default`; a 10 s TTL, so it rotates
 * every few seconds) and `sds/b` (federates with partner.org). uid 65534 holds
 * `nobody`, which uid 0 must never receive.
 *
 * Every assertion on "nothing was sent" allows the rotation pushes of `sds/a`:
 * versions name content, so a resend of rejected secrets shows as a response
 * with the rejected version.
 */
import { execFileSync } from "node:child_process";
import { createPublicKey, X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { connect, createServer, type TLSSocket } from "node:tls";
import { fileURLToPath } from "node:url";
import { create, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { credentials, Metadata, status, type Client, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { ServerReflection, ServerReflectionRequestSchema, type ServerReflectionResponse } from "../../proto/gen/grpc/reflection/v1/reflection_pb.js";
import { AgentAdmin, BundleAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { serializeSpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { grpcServiceDefinition } from "../../spiffe/grpc/service.js";
import { decodePemCertificates, encodePemCertificates } from "../../spiffe/pem.js";
import { makeRoot } from "../fixtures/x509/pki.js";
import { fetchSecrets, inlinePem, SDS_PATHS, SECRET_TYPE, sdsChannel, secretsOf, spiffeValidatorOf, streamSecrets } from "../support/sds-client.js";
import { requireTool } from "../support/tools.js";
import { runWorkload, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { attack, attackUnavailable, NOBODY, type AttackEvent } from "./support/exec-after-connect.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const A = "spiffe://example.org/sds/a";
const B = "spiffe://example.org/sds/b";
const NOBODY_ID = "spiffe://example.org/nobody";
const UNREGISTERED = { uid: 65533, gid: 65533 };
const isRoot = process.getuid?.() === 0;
const haveOpenssl = requireTool("openssl");

let srv: ServerProcess;
let agent: AgentProcess;
let client: Client;
let entryAdmin: ReturnType<typeof createUnaryClient<(typeof EntryAdmin)["method"]>>;
let agentId = "";
let ownRootsPem = "";
let partnerRootsPem = "";
const dir = mkdtempSync(path.join(tmpdir(), "sigil-sds-it-"));

function leafOf(chainPem: string): X509Certificate {
  return new X509Certificate(Buffer.from(decodePemCertificates(chainPem)[0] as Uint8Array));
}

/** The TLS certificate secret's chain and key PEM. */
function tlsOf(secret: ReturnType<typeof secretsOf>[number]): { chain: string; key: string } {
  if (secret.type.case !== "tlsCertificate") throw new Error(`${secret.name} is not a TLS certificate`);
  return { chain: inlinePem(secret.type.value.certificateChain), key: inlinePem(secret.type.value.privateKey) };
}

function trustedCaOf(secret: ReturnType<typeof secretsOf>[number]): string {
  if (secret.type.case !== "validationContext") throw new Error(`${secret.name} is not a validation context`);
  return inlinePem(secret.type.value.trustedCa);
}

/** Normalised PEM (the same certificates in the same order). */
const certsOf = (pem: string): string => encodePemCertificates(decodePemCertificates(pem));

describe.skipIf(!isRoot)("Envoy SDS v3 on the agent socket (issue 12)", () => {
  beforeAll(async () => {
    srv = await startServerProcess();
    const target = `unix:${srv.socketPath}`;
    entryAdmin = createUnaryClient(EntryAdmin, target, credentials.createInsecure());
    const agentAdmin = createUnaryClient(AgentAdmin, target, credentials.createInsecure());
    const bundleAdmin = createUnaryClient(BundleAdmin, target, credentials.createInsecure());
    const tok = await agentAdmin.createJoinToken({ ttl: 600 });
    agentAdmin.close();
    agentId = tok.agentId;
    const partner = makeRoot("partner.org");
    partnerRootsPem = encodePemCertificates([partner.der]);
    await bundleAdmin.setFederatedBundle({
      bundle: { trustDomain: "partner.org", spiffeBundleJson: serializeSpiffeBundle({ trustDomain: partner.td, x509Authorities: [partner.der], jwtAuthorities: new Map() }) },
    });
    bundleAdmin.close();
    const uid0 = [{ type: "unix", value: "uid:0" }];
    await entryAdmin.batchCreateEntry({ entries: [create(EntrySchema, { spiffeId: A, parentId: agentId, selectors: uid0, x509SvidTtl: 10 })] });
    // Created a second later: A stays the oldest, the default.
    await new Promise((r) => setTimeout(r, 1100));
    await entryAdmin.batchCreateEntry({
      entries: [
        create(EntrySchema, { spiffeId: B, parentId: agentId, selectors: uid0, federatesWith: ["partner.org"] }),
        create(EntrySchema, { spiffeId: NOBODY_ID, parentId: agentId, selectors: [{ type: "unix", value: `uid:${NOBODY.uid}` }] }),
        create(EntrySchema, { spiffeId: `${NOBODY_ID}-running/usr/bin/passwd`, parentId: agentId, selectors: [{ type: "unix", value: `uid:${NOBODY.uid}` }, { type: "unix", value: "path:/usr/bin/passwd" }] }),
      ],
    });
    ownRootsPem = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
    agent = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: ownRootsPem, joinToken: tok.token, unixAttestorYaml: "{ discover_workload_path: true }" });
    client = sdsChannel(agent.socketPath);
    // Until both of uid 0's identities are issued.
    for (let i = 0; i < 100; i++) {
      const got = await fetchSecrets(client, [A, B]).then(secretsOf, () => []);
      if (got.length === 2) break;
      await new Promise((r) => setTimeout(r, 200));
    }
  }, 90_000);

  afterAll(async () => {
    client?.close();
    entryAdmin?.close();
    await agent?.stop();
    await srv?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("initial request → versioned response with the default TLS certificate; ACK; a rotation is pushed with a new version and nonce", async () => {
    const s = streamSecrets(client, ["default"], { id: "envoy-1", cluster: "test" });
    const r1 = await s.next();
    expect(r1.typeUrl).toBe(SECRET_TYPE);
    expect(r1.versionInfo).toMatch(/^[0-9a-f]{16}$/);
    expect(r1.nonce).not.toBe("");
    const [secret] = secretsOf(r1);
    expect(secret?.name).toBe("default");
    const { chain, key } = tlsOf(secret!);
    const leaf = leafOf(chain);
    expect(leaf.subjectAltName).toBe(`URI:${A}`);
    expect(key).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    // The key is the certificate's.
    expect(createPublicKey(key).export({ format: "der", type: "spki" }).equals(leaf.publicKey.export({ format: "der", type: "spki" }))).toBe(true);
    s.ack(r1);
    // sds/a lives 10 s and is renewed at about half of it: the new SVID is pushed unasked.
    const r2 = await s.next(15_000);
    const leaf2 = leafOf(tlsOf(secretsOf(r2)[0]!).chain);
    expect(leaf2.subjectAltName).toBe(`URI:${A}`);
    expect(leaf2.serialNumber).not.toBe(leaf.serialNumber);
    expect(r2.versionInfo).not.toBe(r1.versionInfo);
    expect(r2.nonce).not.toBe(r1.nonce);
    s.ack(r2);
    await agent.waitForLog((l) => l.msg === "SDS: ACK" && l.version === r2.versionInfo);
    s.close();
  }, 40_000);

  it("NACK: logged with the reason, the last good version kept, the rejected secrets never sent again; the next rotation is", async () => {
    const s = streamSecrets(client, ["default"]);
    const r1 = await s.next();
    s.nack(r1, "", "certificate rejected by the test");
    const line = await agent.waitForLog((l) => l.msg === "SDS: the client rejected the secrets it was sent (NACK); it keeps its last good version" && l.reason === "certificate rejected by the test");
    expect(line).toMatchObject({ level: "warn", rejected_version: r1.versionInfo, applied_version: "" });
    // Until the next rotation, nothing; never the rejected version again.
    const r2 = await s.next(15_000);
    expect(r2.versionInfo).not.toBe(r1.versionInfo);
    expect(leafOf(tlsOf(secretsOf(r2)[0]!).chain).serialNumber).not.toBe(leafOf(tlsOf(secretsOf(r1)[0]!).chain).serialNumber);
    s.close();
  }, 40_000);

  it("several names in one request: one response, the secrets in the order asked; FetchSecrets the same without version or nonce", async () => {
    const s = streamSecrets(client, ["default", "ROOTCA", B]);
    const r = await s.next();
    const secrets = secretsOf(r);
    expect(secrets.map((x) => [x.name, x.type.case])).toEqual([
      ["default", "tlsCertificate"],
      ["ROOTCA", "validationContext"],
      [B, "tlsCertificate"],
    ]);
    expect(certsOf(trustedCaOf(secrets[1]!))).toBe(certsOf(ownRootsPem));
    expect(leafOf(tlsOf(secrets[2]!).chain).subjectAltName).toBe(`URI:${B}`);
    s.close();
    const f = await fetchSecrets(client, ["ROOTCA", B]);
    expect(f.versionInfo).toBe("");
    expect(f.nonce).toBe("");
    expect(secretsOf(f).map((x) => x.name)).toEqual(["ROOTCA", B]);
  });

  it("federated bundles: ALL is Envoy's SPIFFE validator with one bundle per trust domain; spiffe://partner.org its roots; node metadata can turn the validator off", async () => {
    const r = await fetchSecrets(client, ["ALL", "spiffe://partner.org", "spiffe://example.org"]);
    const [all, partner, own] = secretsOf(r);
    expect(all?.name).toBe("ALL");
    const validator = spiffeValidatorOf(all!);
    expect(all?.type.case === "validationContext" && all.type.value.customValidatorConfig?.name).toBe("envoy.tls.cert_validator.spiffe");
    expect(all?.type.case === "validationContext" && all.type.value.trustedCa).toBeUndefined();
    expect(validator?.trustDomains.map((t) => [t.name, certsOf(inlinePem(t.trustBundle))])).toEqual([
      ["example.org", certsOf(ownRootsPem)],
      ["partner.org", certsOf(partnerRootsPem)],
    ]);
    expect(certsOf(trustedCaOf(partner!))).toBe(certsOf(partnerRootsPem));
    expect(certsOf(trustedCaOf(own!))).toBe(certsOf(ownRootsPem));
    // An Envoy that says it cannot use the validator gets no ALL (a merged trusted_ca would let partner.org vouch for example.org IDs).
    const legacy = await fetchSecrets(client, ["ALL", "ROOTCA"], { id: "old-envoy", metadata: { disable_spiffe_cert_validation: "true" } });
    expect(secretsOf(legacy).map((x) => x.name)).toEqual(["ROOTCA"]);
  });

  it("unknown names and another identity's secret are left out, never answered with someone else's secret; alone they get no response", async () => {
    const s = streamSecrets(client, [NOBODY_ID, "no-such-secret", B]);
    const r = await s.next();
    expect(secretsOf(r).map((x) => x.name)).toEqual([B]);
    s.close();
    const lone = streamSecrets(client, [NOBODY_ID]);
    expect(await lone.quiet(1500)).toBeUndefined();
    // Asking for a name it holds on the same stream is answered at once.
    lone.send({ resourceNames: [NOBODY_ID, A] });
    expect(secretsOf(await lone.next()).map((x) => x.name)).toEqual([A]);
    lone.close();
    expect(secretsOf(await fetchSecrets(client, [NOBODY_ID, "spiffe://other.org"]))).toEqual([]);
    await agent.waitForLog((l) => l.msg === "SDS: requested secrets not served (unknown, or not the caller's)" && Array.isArray(l.names) && l.names.includes(NOBODY_ID));
  });

  it("server reflection lists SDS beside the Workload API and describes it with its dependencies", async () => {
    const def = grpcServiceDefinition(ServerReflection).serverReflectionInfo;
    const answers = await new Promise<ServerReflectionResponse[]>((resolve, reject) => {
      const out: ServerReflectionResponse[] = [];
      const call = client.makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, new Metadata());
      call.on("data", (r: ServerReflectionResponse) => {
        out.push(r);
        if (out.length === 2) call.end();
      });
      call.on("end", () => resolve(out));
      call.on("error", reject);
      call.write(create(ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "" } }));
      call.write(create(ServerReflectionRequestSchema, { messageRequest: { case: "fileContainingSymbol", value: "envoy.service.secret.v3.SecretDiscoveryService" } }));
    });
    const [list, file] = answers;
    const services = list?.messageResponse.case === "listServicesResponse" ? list.messageResponse.value.service.map((x) => x.name) : [];
    expect(services).toEqual(expect.arrayContaining(["SpiffeWorkloadAPI", "envoy.service.secret.v3.SecretDiscoveryService"]));
    const files = file?.messageResponse.case === "fileDescriptorResponse" ? file.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name) : [];
    expect(files).toEqual(expect.arrayContaining(["envoy/service/secret/v3/sds.proto", "envoy/service/discovery/v3/discovery.proto", "google/rpc/status.proto"]));
  });

  it("DeltaSecrets answers Unimplemented", async () => {
    const err = await new Promise<ServiceError>((resolve) => {
      const call = client.makeBidiStreamRequest(SDS_PATHS.delta, (b: Buffer) => b, (b: Buffer) => b, new Metadata());
      call.on("error", resolve);
      call.on("data", () => undefined);
      call.write(Buffer.alloc(0));
    });
    expect(err.code).toBe(status.UNIMPLEMENTED);
  });

  it("a caller with no identity at all is refused PermissionDenied on both methods", async () => {
    const sds = JSON.stringify(path.join(root, "test/support/sds-client.ts"));
    const r = await runWorkload(
      agent.socketPath,
      `const { sdsChannel, fetchSecrets, streamSecrets } = await import(${sds});
const c = sdsChannel(process.env.SPIFFE_ENDPOINT_SOCKET.slice("unix://".length));
const out = {};
try { await fetchSecrets(c, ["ROOTCA"]); out.fetch = "served"; } catch (e) { out.fetch = { code: e.code, details: e.details }; }
const s = streamSecrets(c, []);
const ended = await s.ended;
out.stream = ended ? { code: ended.code, details: ended.details } : "ended cleanly";
console.log(JSON.stringify(out));
c.close();`,
      UNREGISTERED,
    );
    const out = JSON.parse(r.stdout.trim().split("\n").pop() ?? "null") as Record<string, unknown>;
    expect(out, r.stderr).toEqual({ fetch: { code: status.PERMISSION_DENIED, details: "no identity issued" }, stream: { code: status.PERMISSION_DENIED, details: "no identity issued" } });
  });

  it("mutual TLS between two Node TLS endpoints configured only from two SDS responses; openssl verify accepts the chain", async () => {
    const [serverSecrets, clientSecrets] = await Promise.all([fetchSecrets(client, [A, "ROOTCA"]), fetchSecrets(client, [B, "ROOTCA"])]);
    const [srvCert, srvCa] = secretsOf(serverSecrets);
    const [cliCert, cliCa] = secretsOf(clientSecrets);
    const server = createServer({ ...pair(tlsOf(srvCert!)), ca: trustedCaOf(srvCa!), requestCert: true, rejectUnauthorized: true }, (sock: TLSSocket) => {
      sock.end(`hello ${sock.getPeerX509Certificate()?.subjectAltName ?? "?"}`);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    try {
      const reply = await new Promise<{ text: string; peer: string | undefined }>((resolve, reject) => {
        const sock = connect({
          host: "127.0.0.1",
          port,
          ...pair(tlsOf(cliCert!)),
          ca: trustedCaOf(cliCa!),
          // SVIDs carry no DNS name: the peer is authorised by its SPIFFE ID.
          checkServerIdentity: (_host, cert) => (cert.subjectaltname === `URI:${A}` ? undefined : new Error(`unexpected server ${cert.subjectaltname}`)),
        });
        let text = "";
        sock.on("data", (d: Buffer) => (text += d.toString()));
        sock.on("end", () => resolve({ text, peer: sock.getPeerX509Certificate()?.subjectAltName }));
        sock.on("error", reject);
      });
      expect(reply).toEqual({ text: `hello URI:${B}`, peer: `URI:${A}` });
    } finally {
      server.close();
    }
    if (!haveOpenssl) return;
    const chain = decodePemCertificates(tlsOf(srvCert!).chain);
    writeFileSync(path.join(dir, "roots.pem"), trustedCaOf(srvCa!));
    writeFileSync(path.join(dir, "leaf.pem"), encodePemCertificates(chain.slice(0, 1)));
    writeFileSync(path.join(dir, "untrusted.pem"), encodePemCertificates(chain.slice(1)));
    const args = ["verify", "-CAfile", path.join(dir, "roots.pem"), ...(chain.length > 1 ? ["-untrusted", path.join(dir, "untrusted.pem")] : []), path.join(dir, "leaf.pem")];
    expect(execFileSync("openssl", args, { encoding: "utf8" })).toContain(": OK");
  });

  describe.skipIf(attackUnavailable !== undefined)("exec-after-connect (issue 8's attack, on SDS)", () => {
    /** Every TLS certificate a holder was handed, with its certificate's URI SAN. */
    const certificates = (events: readonly AttackEvent[]) =>
      events
        .filter((e) => e.event === "message")
        .flatMap((e) => (e.secrets as Array<{ name: string; uriSan: string[]; hasKey: boolean }> | undefined) ?? [])
        .filter((x) => x.hasKey);

    it("connect, then exec /usr/bin/passwd: StreamSecrets and FetchSecrets are refused PermissionDenied, nothing is served", async () => {
      const events = await attack(agent.socketPath, "/usr/bin/passwd", "sds-after-exec");
      expect(events.map((e) => e.event)).toEqual(["connector-setuid", "end", "end"]);
      expect(events.filter((e) => e.event === "message")).toEqual([]);
      for (const method of ["StreamSecrets", "FetchSecrets"]) {
        expect(events.find((e) => e.method === method)).toMatchObject({ code: status.PERMISSION_DENIED, details: "caller changed credentials after connecting" });
      }
    }, 90_000);

    it("a stream opened before the exec is ended at its next push, never handed root's or passwd's secrets", async () => {
      let setuid!: () => void;
      const connectorSetuid = new Promise<void>((r) => (setuid = r));
      const done = attack(agent.socketPath, "/usr/bin/passwd", "sds-stream", (e) => {
        if (e.event === "connector-setuid") setuid();
      });
      await connectorSetuid;
      // uid 65534's secrets change: the agent pushes, re-checking the caller first.
      await entryAdmin.batchCreateEntry({ entries: [create(EntrySchema, { spiffeId: `${NOBODY_ID}-2`, parentId: agentId, selectors: [{ type: "unix", value: `uid:${NOBODY.uid}` }] })] });
      const events = await done;
      expect(certificates(events)).toEqual([{ name: NOBODY_ID, uriSan: [NOBODY_ID], hasKey: true }]);
      expect(events.at(-1)).toMatchObject({ event: "end", code: status.PERMISSION_DENIED, details: "caller changed credentials after connecting" });
      await agent.waitForLog((l) => l.msg === "SDS stream ended: its caller changed since it was attested");
    }, 90_000);
  });
});

/** Node's TLS options from an SDS TLS certificate. */
function pair(tls: { chain: string; key: string }): { cert: string; key: string } {
  return { cert: tls.chain, key: tls.key };
}
