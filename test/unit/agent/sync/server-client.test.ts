/**
 * The agent's server client over real TLS against a scripted AgentAPI server:
 * the server must present `spiffe://<td>/spire/server` verified by the bundle,
 * attestation answers challenges, the agent SVID is presented as client
 * certificate and a new one rebuilds the channel; plus trust bootstrap parsing
 * and the gRPC-status-to-error mapping; several servers with failover, and
 * the change stream.
 */
import { X509Certificate } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { experimental, Server, status, type ServerDuplexStream, type ServerUnaryCall, type ServerWritableStream, type sendUnaryData } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { createServerClient, serverRpcError, type GrpcServerClient } from "../../../../agent/sync/server-client.js";
import { loadBootstrapTrust, parseBootstrapBundle } from "../../../../agent/sync/trust-bootstrap.js";
import { systemClock } from "../../../../common/clock.js";
import type { Logger } from "../../../../common/log.js";
import { MemoryCertificateProvider } from "../../../../server/api/cert-provider.js";
import type { AgentNodeAttestor } from "../../../../plugins/nodeattestor/types.js";
import {
  AgentAPI,
  AttestAgentResponseSchema,
  SyncAuthorizedResponseSchema,
  WatchChangesResponseSchema,
  type AttestAgentRequest,
  type AttestAgentResponse,
  type SyncAuthorizedRequest,
  type SyncAuthorizedResponse,
  type WatchChangesRequest,
  type WatchChangesResponse,
} from "../../../../proto/gen/sigil/agent/v1/agent_pb.js";
import { serializeSpiffeBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { parseCsr } from "../../../../spiffe/csr.js";
import { isSigilError, SigilError } from "../../../../spiffe/errors.js";
import { grpcServiceDefinition, type GrpcServiceImplementation } from "../../../../spiffe/grpc/service.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { encodePemCertificates } from "../../../../spiffe/pem.js";
import { generateKeyPair, generateSigner } from "../../../../spiffe/signer.js";
import { createRootCa } from "../../../../spiffe/x509/ca.js";
import { issueLeaf, prepareLeafTemplate, type LeafTemplate } from "../../../../spiffe/x509/leaf.js";
import { randomSerial } from "../../../../spiffe/x509/serial.js";

const td = parseTrustDomain("example.org");
const HOUR = 3_600_000;

function makeCa() {
  const signer = generateSigner("ec-p256");
  const now = Date.now();
  const der = createRootCa({ trustDomain: td, notBefore: new Date(now - HOUR), notAfter: new Date(now + 24 * HOUR), signer });
  return { der, template: prepareLeafTemplate({ issuerCertDer: der, issuerSigner: signer }) };
}
const ca = makeCa();
const otherCa = makeCa();

function leaf(template: LeafTemplate, id: string, spki: Uint8Array): Uint8Array {
  const now = Date.now();
  return issueLeaf(template, { spiffeId: parseSpiffeId(id), subjectPublicKeyDer: spki, serial: randomSerial(), notBefore: new Date(now - 60_000), notAfter: new Date(now + HOUR) });
}

type Impl = GrpcServiceImplementation<(typeof AgentAPI)["method"]>;
const servers: Server[] = [];
const clients: GrpcServerClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  for (const s of servers.splice(0)) await new Promise<void>((r) => s.tryShutdown(() => r()));
});

/** A TLS AgentAPI server presenting an SVID with `serverId`, issued by `issuer`. */
async function startFakeServer(serverId: string, issuer = ca, tag = ""): Promise<{ address: string; server: Server }> {
  const { privateKey, publicKey } = generateKeyPair("ec-p256");
  const cert = leaf(issuer.template, serverId, new Uint8Array(publicKey.export({ format: "der", type: "spki" })));
  const unimplemented = (_call: unknown, cb: sendUnaryData<never>) => cb({ code: status.UNIMPLEMENTED, details: "not here" });
  const impl: Impl = {
    attestAgent(call: ServerDuplexStream<AttestAgentRequest, AttestAgentResponse>) {
      let csr: Uint8Array | undefined;
      call.on("data", (m: AttestAgentRequest) => {
        if (m.step.case === "params") {
          if (Buffer.from(m.step.value.data?.payload ?? []).toString() === "deny") {
            call.emit("error", { code: status.PERMISSION_DENIED, details: "join_token: join token not found or already used" });
            return;
          }
          csr = m.step.value.csr;
          call.write(create(AttestAgentResponseSchema, { step: { case: "challenge", value: Buffer.from("nonce-1") } }));
        } else if (m.step.case === "challengeResponse") {
          if (Buffer.from(m.step.value).toString() !== "answer:nonce-1") {
            call.emit("error", { code: status.PERMISSION_DENIED, details: "wrong answer" });
            return;
          }
          const spki = parseCsr(csr!, ["ec-p256"]).publicKeyDer;
          const chain = [leaf(ca.template, "spiffe://example.org/spire/agent/test/node-1", spki)];
          call.write(create(AttestAgentResponseSchema, { step: { case: "result", value: { svid: { spiffeId: "spiffe://example.org/spire/agent/test/node-1", certChain: chain }, bundle: [ca.der] } } }));
          call.end();
        }
      });
    },
    renewAgent: unimplemented as Impl["renewAgent"],
    // The revision reports the caller's client certificate serial, so tests see which identity the channel presents.
    syncAuthorized(call: ServerUnaryCall<SyncAuthorizedRequest, SyncAuthorizedResponse>, cb: sendUnaryData<SyncAuthorizedResponse>) {
      const raw = call.getAuthContext()?.sslPeerCertificate?.raw;
      cb(null, create(SyncAuthorizedResponseSchema, {
        revision: raw ? new X509Certificate(raw).serialNumber : "anonymous",
        bundles: [{ trustDomain: "example.org", spiffeBundleJson: serializeSpiffeBundle({ trustDomain: td, x509Authorities: [ca.der], jwtAuthorities: new Map() }) }],
        entries: [{ id: "e1", spiffeId: "spiffe://example.org/w", selectors: [{ type: "unix", value: "uid:1" }], revision: 3n, createdAt: 1_900_000_000n, hint: tag }],
      }));
    },
    batchNewX509SVID: unimplemented as Impl["batchNewX509SVID"],
    // tag "hang": never answers (a frozen server).
    newJWTSVID: (tag === "hang" ? () => undefined : unimplemented) as Impl["newJWTSVID"],
    // Pushes two notices: the opening one and one more, then holds the stream.
    watchChanges(call: ServerWritableStream<WatchChangesRequest, WatchChangesResponse>) {
      call.write(create(WatchChangesResponseSchema, { revision: `${tag}-1` }));
      setTimeout(() => call.write(create(WatchChangesResponseSchema, { revision: `${tag}-2` })), 20);
    },
  };
  const server = new Server();
  server.addService(grpcServiceDefinition(AgentAPI), impl);
  // As the real server: client certificates requested against the CA but optional (attestation has none).
  const certs = new MemoryCertificateProvider();
  certs.setCaCertificates(encodePemCertificates([ca.der]));
  certs.setIdentity(encodePemCertificates([cert]), privateKey.export({ format: "pem", type: "pkcs8" }).toString());
  const creds = experimental.createCertificateProviderServerCredentials(certs, certs, false);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync("127.0.0.1:0", creds, (e, p) => (e ? reject(e) : resolve(p))));
  servers.push(server);
  return { address: `127.0.0.1:${port}`, server };
}

function client(address: string, roots: Uint8Array[] = [ca.der], insecure = false): GrpcServerClient {
  const c = createServerClient({ address, trustDomain: td, clock: systemClock, roots, insecureBootstrap: insecure, deadlineMs: 5_000 });
  clients.push(c);
  return c;
}

const answering: AgentNodeAttestor = { name: "test", payload: async () => Buffer.from("ok"), answer: async (c) => Buffer.from(`answer:${Buffer.from(c).toString()}`) };

describe("GrpcServerClient", () => {
  it("attests through a challenge, then syncs presenting the agent SVID, and rebuilds the channel for a new SVID", async () => {
    const { address } = await startFakeServer("spiffe://example.org/spire/server");
    const c = client(address);
    await expect(c.sync("")).rejects.toThrow(/has no SVID yet; attest first/);
    const first = await c.attest(answering);
    expect(first.svid.spiffeId).toBe("spiffe://example.org/spire/agent/test/node-1");
    expect(first.bundle).toEqual([ca.der]);
    c.setIdentity(first.svid);
    const r1 = await c.sync("");
    expect(r1.revision).toBe(new X509Certificate(first.svid.chain[0]!).serialNumber);
    expect(r1.entries).toMatchObject([{ id: "e1", spiffeId: "spiffe://example.org/w", revision: 3, createdAt: new Date(1_900_000_000_000), expiresAt: undefined }]);
    expect(r1.entries[0]!.selectors.map(String)).toEqual(["unix:uid:1"]);
    expect(r1.bundles.map((b) => b.trustDomain.name)).toEqual(["example.org"]);

    const second = await c.attest(answering);
    c.setIdentity(second.svid);
    expect((await c.sync("")).revision).toBe(new X509Certificate(second.svid.chain[0]!).serialNumber);
  });

  it("close() cancels every call in flight on a server that does not answer (twenty at once, no listener-leak warning), and later calls fail at once", async () => {
    const { address } = await startFakeServer("spiffe://example.org/spire/server", ca, "hang");
    const c = client(address);
    c.setIdentity((await c.attest(answering)).svid);
    const warnings: Error[] = [];
    const onWarning = (w: Error): void => void warnings.push(w);
    process.on("warning", onWarning);
    try {
      const calls = Array.from({ length: 20 }, () => c.newJwtSvid("e1", ["db"]).then(() => "answered", (e: unknown) => e));
      await new Promise((r) => setTimeout(r, 200));
      c.close();
      const outcomes = await Promise.all(calls);
      for (const o of outcomes) expect(isSigilError(o, "ERR_UNAVAILABLE")).toBe(true);
      await expect(c.newJwtSvid("e1", ["db"])).rejects.toThrow(/the agent is stopping/);
      await new Promise((r) => setImmediate(r));
      expect(warnings.map((w) => w.name)).not.toContain("MaxListenersExceededWarning");
    } finally {
      process.off("warning", onWarning);
    }
  });

  it("after close() an attestation fails at once with the agent stopping, without failing over through the other servers", async () => {
    const warned: string[] = [];
    const log = { warn: (_o: object, msg: string) => void warned.push(msg), info: () => undefined, error: () => undefined, debug: () => undefined } as unknown as Logger;
    const c = createServerClient({ address: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], trustDomain: td, clock: systemClock, roots: [ca.der], log, random: () => 0 });
    c.close();
    await expect(c.attest(answering)).rejects.toThrow(/AttestAgent: the agent is stopping/);
    expect(warned.filter((m) => m.includes("failing over"))).toEqual([]);
    expect(c.currentAddress).toBe("127.0.0.1:1");
  });

  it("refuses a server whose SVID is not spiffe://<td>/spire/server", async () => {
    const { address } = await startFakeServer("spiffe://example.org/not-the-server");
    const e = await client(address).attest(answering).catch((err: unknown) => err);
    expect(isSigilError(e, "ERR_UNAVAILABLE"), String(e)).toBe(true);
    expect((e as Error).message).toContain("presented spiffe://example.org/not-the-server, expected spiffe://example.org/spire/server");
  });

  // Any other SVID of the trust domain, however close to the server's, is refused.
  it.each(["spiffe://example.org/workload", "spiffe://example.org/spire/agent/test/node-1", "spiffe://example.org/spire/server/x", "spiffe://example.org/spire", "spiffe://example.org/spire/serverx"])(
    "refuses %s presented as the server",
    async (id) => {
      const { address } = await startFakeServer(id);
      const e = await client(address).attest(answering).catch((err: unknown) => err);
      expect(isSigilError(e, "ERR_UNAVAILABLE"), String(e)).toBe(true);
      expect((e as Error).message).toContain(`presented ${id}, expected spiffe://example.org/spire/server`);
    },
  );

  it("refuses a server whose certificate the bundle does not verify", async () => {
    const { address } = await startFakeServer("spiffe://example.org/spire/server", otherCa);
    const e = await client(address).attest(answering).catch((err: unknown) => err);
    expect(isSigilError(e, "ERR_UNAVAILABLE"), String(e)).toBe(true);
  });

  it("with insecure bootstrap attests to any server, then verifies it with the attested bundle", async () => {
    const { address } = await startFakeServer("spiffe://example.org/not-the-server");
    const c = client(address, [], true);
    const r = await c.attest(answering);
    c.setTrustBundle(r.bundle);
    c.setIdentity(r.svid);
    await expect(c.sync("")).rejects.toThrow(/presented spiffe:\/\/example.org\/not-the-server/);
  });

  it("needs roots unless insecure bootstrap is on", () => {
    expect(() => createServerClient({ address: "127.0.0.1:1", trustDomain: td, clock: systemClock, roots: [] })).toThrow(/no trust bundle to verify the server with/);
  });

  it("reports a refused attestation with the server's reason and an attestor that cannot answer a challenge", async () => {
    const { address } = await startFakeServer("spiffe://example.org/spire/server");
    const denied = await client(address).attest({ name: "join_token", payload: async () => Buffer.from("deny") }).catch((e: unknown) => e);
    expect(isSigilError(denied, "ERR_PERMISSION_DENIED")).toBe(true);
    expect((denied as Error).message).toBe("sync: AttestAgent: join_token: join token not found or already used");
    const mute = await client(address).attest({ name: "mute", payload: async () => Buffer.from("ok") }).catch((e: unknown) => e);
    expect((mute as Error).message).toBe("sync: AttestAgent: the server sent a challenge but the mute attestor answers none");
  });

  it("maps an unreachable server to ERR_UNAVAILABLE", async () => {
    const c = client("127.0.0.1:1");
    const e = await c.attest(answering).catch((err: unknown) => err);
    expect(isSigilError(e, "ERR_UNAVAILABLE"), String(e)).toBe(true);
    expect((e as Error).message).toMatch(/^sync: AttestAgent: /);
  });
});

describe("GrpcServerClient with several servers", () => {
  it("starts at a random server, sticks to it, and fails over to the next when it is gone; attestation too", async () => {
    const a = await startFakeServer("spiffe://example.org/spire/server", ca, "A");
    const b = await startFakeServer("spiffe://example.org/spire/server", ca, "B");
    const c = createServerClient({ address: [a.address, b.address], trustDomain: td, clock: systemClock, roots: [ca.der], deadlineMs: 5_000, random: () => 0.99 });
    clients.push(c);
    expect(c.currentAddress).toBe(b.address);
    c.setIdentity((await c.attest(answering)).svid);
    expect((await c.sync("")).entries[0]!.hint).toBe("B");
    expect((await c.sync("")).entries[0]!.hint).toBe("B");
    b.server.forceShutdown();
    expect((await c.sync("")).entries[0]!.hint).toBe("A");
    expect(c.currentAddress).toBe(a.address);
    a.server.forceShutdown();
    const err = await c.sync("").catch((e: unknown) => e);
    expect(isSigilError(err, "ERR_UNAVAILABLE")).toBe(true);
    await expect(c.attest(answering)).rejects.toMatchObject({ code: "ERR_UNAVAILABLE" });
  });

  it("does not fail over on an answer that is not unavailability", async () => {
    const a = await startFakeServer("spiffe://example.org/spire/server", ca, "A");
    const b = await startFakeServer("spiffe://example.org/spire/server", ca, "B");
    const c = createServerClient({ address: [a.address, b.address], trustDomain: td, clock: systemClock, roots: [ca.der], deadlineMs: 5_000, random: () => 0 });
    clients.push(c);
    c.setIdentity((await c.attest(answering)).svid);
    await expect(c.renew()).rejects.toThrow(/not here/);
    expect(c.currentAddress).toBe(a.address);
  });

  it("delivers pushed notices on the change stream and reports its end", async () => {
    const a = await startFakeServer("spiffe://example.org/spire/server", ca, "A");
    const c = client(a.address);
    c.setIdentity((await c.attest(answering)).svid);
    const notices: string[] = [];
    const ended = new Promise<SigilError>((resolve) => {
      c.watchChanges((r) => {
        notices.push(r);
        if (notices.length === 2) a.server.forceShutdown();
      }, resolve);
    });
    const err = await ended;
    expect(notices).toEqual(["A-1", "A-2"]);
    expect(err.code).toBe("ERR_UNAVAILABLE");
  });
});

describe("serverRpcError", () => {
  it.each([
    [status.UNAVAILABLE, "ERR_UNAVAILABLE"],
    [status.DEADLINE_EXCEEDED, "ERR_UNAVAILABLE"],
    [status.PERMISSION_DENIED, "ERR_PERMISSION_DENIED"],
    [status.UNAUTHENTICATED, "ERR_PERMISSION_DENIED"],
    [status.INVALID_ARGUMENT, "ERR_INVALID_ARGUMENT"],
    [status.NOT_FOUND, "ERR_NOT_FOUND"],
    [status.INTERNAL, "ERR_INTERNAL"],
  ])("gRPC status %i becomes %s", (code, want) => {
    const e = serverRpcError("SyncAuthorized", Object.assign(new Error("x"), { code, details: "because" }));
    expect(e.code).toBe(want);
    expect(e.message).toBe("sync: SyncAuthorized: because");
  });

  it("keeps SigilErrors as they are", () => {
    const orig = new SigilError("ERR_BUNDLE_INVALID", "bundle: x");
    expect(serverRpcError("X", orig)).toBe(orig);
  });
});

describe("trust bootstrap", () => {
  const pem = encodePemCertificates([ca.der]);
  const json = serializeSpiffeBundle({ trustDomain: td, x509Authorities: [ca.der], jwtAuthorities: new Map() });

  it("reads PEM and SPIFFE bundles from a file or an https URL", async () => {
    const files: Record<string, string> = { "/b.pem": pem, "/b.json": json };
    const readFile = async (p: string) => files[p] ?? Promise.reject(new Error("ENOENT"));
    expect(await loadBootstrapTrust({ trust_bundle_path: "/b.pem", trust_bundle_format: "pem" }, td, { readFile })).toEqual({ kind: "roots", roots: [ca.der], source: "/b.pem" });
    expect(await loadBootstrapTrust({ trust_bundle_path: "/b.json", trust_bundle_format: "spiffe" }, td, { readFile })).toMatchObject({ roots: [ca.der] });
    const fetched: string[] = [];
    const fetch = async (u: string) => (fetched.push(u), { ok: true, status: 200, text: async () => json });
    expect(await loadBootstrapTrust({ trust_bundle_url: "https://b.example.org/b", trust_bundle_format: "spiffe" }, td, { fetch })).toMatchObject({ roots: [ca.der] });
    expect(fetched).toEqual(["https://b.example.org/b"]);
    expect(await loadBootstrapTrust({ insecure_bootstrap: true, trust_bundle_format: "pem" }, td)).toEqual({ kind: "insecure" });
  });

  it("names the source and the problem", async () => {
    await expect(loadBootstrapTrust({ trust_bundle_path: "/nope.pem", trust_bundle_format: "pem" }, td, { readFile: async () => Promise.reject(new Error("ENOENT")) })).rejects.toThrow(
      "bootstrap: cannot read trust_bundle_path /nope.pem: ENOENT",
    );
    const fetch404 = async () => ({ ok: false, status: 404, text: async () => "" });
    await expect(loadBootstrapTrust({ trust_bundle_url: "https://b.example.org/b", trust_bundle_format: "pem" }, td, { fetch: fetch404 })).rejects.toThrow(
      "bootstrap: cannot fetch trust_bundle_url https://b.example.org/b: HTTP 404",
    );
    await expect(loadBootstrapTrust({ trust_bundle_url: "http://b.example.org/b", trust_bundle_format: "pem" }, td)).rejects.toThrow(/must be an https:\/\/ URL/);
    expect(() => parseBootstrapBundle(json, "pem", td, "/b.pem")).toThrow(/^bootstrap: \/b.pem is not a PEM certificate bundle \(trust_bundle_format: pem\)/);
    expect(() => parseBootstrapBundle(pem, "spiffe", td, "/b.json")).toThrow(/^bootstrap: \/b.json is not a SPIFFE bundle/);
    expect(() => parseBootstrapBundle('{"keys":[]}', "spiffe", td, "/e.json")).toThrow("bootstrap: /e.json holds no X.509 authority");
  });
});
