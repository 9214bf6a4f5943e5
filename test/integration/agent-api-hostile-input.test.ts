/**
 * The agent API against a rogue agent and a hostile peer, over real mTLS
 * against an in-process server on a manual clock: what they send never makes
 * the server sign an ID outside their reach, and never makes one audit record
 * larger than the server's own bound, whatever the size of the request.
 */
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { Client, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ManualClock } from "../../common/clock.js";
import { parseSelector } from "../../common/selector.js";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAPI, AttestAgentRequestSchema, WatchChangesRequestSchema } from "../../proto/gen/sigil/agent/v1/agent_pb.js";
import { parseServerConfig } from "../../server/config/load.js";
import { startServer, type RunningServer } from "../../server/main.js";
import { buildCsr } from "../../spiffe/csr.js";
import { encodeBitString, encodeNull, encodeOid, encodeSequence, encodeTlv, encodeUnsignedInteger, expectTlv, readChildren, TAG } from "../../spiffe/der.js";
import { grpcServiceDefinition } from "../../spiffe/grpc/service.js";
import { parseSpiffeId } from "../../spiffe/id.js";
import { encodePemCertificates } from "../../spiffe/pem.js";
import { makeTestCa } from "../support/federation-bundles.js";
import { testServerConfigYaml } from "./support/server-process.js";
import { attestInProcess, refusal, tlsCredentials, type Attested } from "./support/test-agent.js";

const TD = "example.org";
/** A request field a rogue agent may make as large as a gRPC message allows. */
const HUGE = "a".repeat(1 << 20);
/** Generous bound on one log line: far above any legitimate one, far below a huge field. */
const MAX_LOG_LINE = 16 * 1024;

let dir: string;
let server: RunningServer;
const clock = new ManualClock(new Date());
const logLines: string[] = [];

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "sigil-hostile-input-"));
  const config = parseServerConfig(testServerConfigYaml(dir, { keyManager: "memory" }));
  server = await startServer(config, { clock, logDestination: { write: (line: string) => void logLines.push(line) } });
}, 60_000);

afterAll(async () => {
  try {
    await server?.stop();
  } finally {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  }
});

function attestedAgent(name: string): Promise<Attested> {
  return attestInProcess(server, clock.now(), name);
}

function roots(): string {
  return encodePemCertificates(server.ca.bundle().x509Authorities);
}

const issuanceCount = async (): Promise<number> => (await server.datastore.listIssuances({ pageSize: 1000 })).items.length;

/** The audit record of the latest refused call of `method`. */
function auditLine(method: string): string {
  const line = logLines.findLast((l) => l.includes(`"method":"${method}"`) && l.includes('"status":"error"'));
  if (line === undefined) throw new Error(`no audit record of a refused ${method}`);
  return line;
}

/** The refusal's message is bounded, keeps its start and end, and so does its audit record. */
function expectBounded(e: ServiceError, method: string, ending: string): void {
  expect(e.details.length).toBeLessThan(MAX_LOG_LINE);
  expect(e.details).toContain("characters left out");
  expect(e.details).toContain(ending);
  const line = auditLine(method);
  expect(line.length).toBeLessThan(MAX_LOG_LINE);
  expect(line).toContain(ending);
}

describe("agent API: a request quoting a megabyte gets a bounded refusal and audit record", () => {
  it("a rogue agent's batch naming one huge entry ID twice (refused before any rate limit)", async () => {
    const agent = await attestedAgent("long-id");
    try {
      const spki = new Uint8Array(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ format: "der", type: "spki" }));
      const key = { case: "publicKey" as const, value: spki };
      const e = await refusal(agent.api.batchNewX509SVID({ params: [{ entryId: HUGE, key }, { entryId: HUGE, key }] }));
      expect(e.code).toBe(status.INVALID_ARGUMENT);
      expectBounded(e, "BatchNewX509SVID", "ask for each entry once");
    } finally {
      agent.api.close();
    }
  });

  it("a rogue agent's JWT-SVID request for a huge entry ID", async () => {
    const agent = await attestedAgent("long-jwt-id");
    try {
      const e = await refusal(agent.api.newJWTSVID({ entryId: HUGE, audience: ["x"] }));
      expect(e.code).toBe(status.PERMISSION_DENIED);
      expectBounded(e, "NewJWTSVID", `is not authorized for agent ${agent.spiffeId}`);
    } finally {
      agent.api.close();
    }
  });

  it("a rogue agent's JWT-SVID request with too many or too long audiences, or control characters in one (a log entry stays bounded)", async () => {
    const agent = await attestedAgent("long-audience");
    try {
      const long = await refusal(agent.api.newJWTSVID({ entryId: "e", audience: ["db", "a".repeat(257)] }));
      expect(long.code).toBe(status.INVALID_ARGUMENT);
      expect(long.details).toBe("new jwt svid: audience[1] is longer than the maximum 256 bytes (257)");
      // 129 two-byte characters: under 256 UTF-16 units, over 256 UTF-8 bytes.
      const wide = await refusal(agent.api.newJWTSVID({ entryId: "e", audience: ["é".repeat(129)] }));
      expect(wide.details).toBe("new jwt svid: audience[0] is longer than the maximum 256 bytes (258)");
      const ctl = await refusal(agent.api.newJWTSVID({ entryId: "e", audience: ["db", "a\u0001b"] }));
      expect(ctl.code).toBe(status.INVALID_ARGUMENT);
      expect(ctl.details).toBe("new jwt svid: audience[1] contains control character U+0001 at offset 1");
      const many = await refusal(agent.api.newJWTSVID({ entryId: "e", audience: Array.from({ length: 33 }, (_, i) => `a${i}`) }));
      expect(many.code).toBe(status.INVALID_ARGUMENT);
      expect(many.details).toBe("new jwt svid: audience has 33 audiences, more than the maximum 32");
    } finally {
      agent.api.close();
    }
  });

  it("a peer without credentials attesting with a huge attestor name", async () => {
    const def = grpcServiceDefinition(AgentAPI).attestAgent;
    const client = new Client(server.agentApiAddress, tlsCredentials(roots()));
    try {
      const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
      const e = await new Promise<ServiceError>((resolve, reject) => {
        const call = client.makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, new Metadata(), { deadline: new Date(Date.now() + 30_000) });
        call.on("data", () => reject(new Error("expected a refusal")));
        call.on("error", resolve);
        call.write(create(AttestAgentRequestSchema, { step: { case: "params", value: { data: { type: HUGE, payload: Buffer.from("x") }, csr: buildCsr(privateKey) } } }));
      });
      expect(e.code).toBe(status.INVALID_ARGUMENT);
      expectBounded(e, "AttestAgent", "(enabled: join_token)");
    } finally {
      client.close();
    }
  });
});

describe("agent API: agent records outside /spire/agent/", () => {
  it("an agent whose ID lies outside the agent namespace (stored before IDs were confined) is refused, nothing renewed", async () => {
    // What a join token chosen as spiffe://example.org/legacy-node left behind before agent IDs had to lie under /spire/agent/.
    const id = parseSpiffeId(`spiffe://${TD}/legacy-node`);
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    const issued = server.ca.signX509Svid({ spiffeId: id, publicKeyDer: new Uint8Array(publicKey.export({ format: "der", type: "spki" })), ttlMs: 3_600_000 });
    await server.datastore.createAgent({ spiffeId: id.toString(), attestationType: "join_token", certSerial: issued.serial, certNotAfter: issued.notAfter });
    const api = createUnaryClient(
      AgentAPI,
      server.agentApiAddress,
      tlsCredentials(roots(), { keyPem: privateKey.export({ format: "pem", type: "pkcs8" }).toString(), certPem: encodePemCertificates(issued.chain) }),
    );
    try {
      const before = await issuanceCount();
      const { privateKey: next } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
      const e = await refusal(api.renewAgent({ csr: buildCsr(next) }));
      expect(e.code).toBe(status.PERMISSION_DENIED);
      expect(e.details).toContain("not under spiffe://example.org/spire/agent/");
      expect(await issuanceCount()).toBe(before);
    } finally {
      api.close();
    }
  });
});

/** Public keys of a shape the CA does not embed; each is well-formed DER. */
function malformedPublicKeys(): Record<string, Uint8Array> {
  const rsaSpki = new Uint8Array(generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey.export({ format: "der", type: "spki" }));
  const [rsaAlg, rsaBits] = readChildren(rsaSpki, expectTlv(rsaSpki, 0, TAG.SEQUENCE, "spki"));
  const rsaKey = (rsaBits?.content ?? new Uint8Array()).subarray(1);
  const [n, e] = readChildren(rsaKey, expectTlv(rsaKey, 0, TAG.SEQUENCE, "rsa"));
  const rsa = (...ints: Uint8Array[]): Uint8Array => encodeSequence(rsaAlg?.raw ?? new Uint8Array(), encodeBitString(encodeSequence(...ints)));
  const ecSpki = new Uint8Array(generateKeyPairSync("ec", { namedCurve: "P-384" }).publicKey.export({ format: "der", type: "spki" }));
  const [, ecBits] = readChildren(ecSpki, expectTlv(ecSpki, 0, TAG.SEQUENCE, "spki"));
  return {
    "RSA parameters other than NULL": encodeSequence(encodeSequence(encodeOid("1.2.840.113549.1.1.1"), encodeTlv(TAG.OCTET_STRING, new Uint8Array(64))), rsaBits?.raw ?? new Uint8Array()),
    "an element after the RSA exponent": rsa(n?.raw ?? new Uint8Array(), e?.raw ?? new Uint8Array(), encodeUnsignedInteger(new Uint8Array(512).fill(7))),
    "an RSA exponent of 4096 bits": rsa(n?.raw ?? new Uint8Array(), encodeUnsignedInteger(new Uint8Array(512).fill(0xff))),
    "EC parameters followed by another element": encodeSequence(encodeSequence(encodeOid("1.2.840.10045.2.1"), encodeOid("1.3.132.0.34"), encodeNull()), ecBits?.raw ?? new Uint8Array()),
  };
}

describe("agent API: a rogue agent's public keys", () => {
  it("a key the CA would not embed as is (odd parameters, extra elements, a huge exponent) is refused as InvalidArgument, nothing signed", async () => {
    const agent = await attestedAgent("odd-keys");
    try {
      const entry = await server.datastore.createEntry({ spiffeId: `spiffe://${TD}/odd-keys`, parentId: agent.spiffeId, selectors: [parseSelector("unix:uid:1000")] });
      // Slower than the per-agent sync limit (5/s, burst 10), which this frozen clock never refills.
      for (let i = 0; i < 40 && !(await agent.api.syncAuthorized({})).entries.some((e) => e.id === entry.id); i++) await new Promise((r) => setTimeout(r, 250));
      const before = await issuanceCount();
      for (const [what, value] of Object.entries(malformedPublicKeys())) {
        const res = await agent.api.batchNewX509SVID({ params: [{ entryId: entry.id, key: { case: "publicKey", value } }] });
        expect(res.results[0]?.svid, what).toBeUndefined();
        expect(res.results[0]?.status?.code, `${what}: ${res.results[0]?.status?.message}`).toBe(status.INVALID_ARGUMENT);
      }
      expect(await issuanceCount()).toBe(before);
    } finally {
      agent.api.close();
    }
  });
});

describe("agent API: presented intermediates and change streams", () => {
  it("refuses more than 4 presented intermediates, and a presented certificate that chains to no bundle root adds no trust", async () => {
    const agent = await attestedAgent("chain-metadata");
    try {
      const md = (values: Uint8Array[]): Metadata => {
        const m = new Metadata();
        for (const v of values) m.add("sigil-agent-chain-bin", Buffer.from(v));
        return m;
      };
      const junk = new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x01]);
      const tooMany = await refusal(agent.api.syncAuthorized({ knownRevision: "" }, { metadata: md([junk, junk, junk, junk, junk]) }));
      expect(tooMany.code).toBe(status.INVALID_ARGUMENT);
      expect(tooMany.details).toContain("sigil-agent-chain-bin: 5 certificates is more than the maximum 4");
      // Something that is not a certificate is refused; the call is denied, nothing is granted.
      expect((await refusal(agent.api.syncAuthorized({ knownRevision: "" }, { metadata: md([junk]) }))).code).toBe(status.PERMISSION_DENIED);
      // Another CA's certificate beside the agent's own valid leaf changes nothing: the path still ends at the bundle.
      const ok = await agent.api.syncAuthorized({ knownRevision: "" }, { metadata: md([makeTestCa("other.example").certDer]) });
      expect(ok.bundles.length).toBeGreaterThan(0);
      // And a foreign CA presented beside a leaf it did not sign grants nothing either (the leaf is still checked against the bundle).
      expect((await agent.api.syncAuthorized({ knownRevision: "" })).bundles.length).toBeGreaterThan(0);
    } finally {
      agent.api.close();
    }
  });

  it("WatchChanges needs the agent SVID, answers the first notice at once, and ends an older stream of the same agent", async () => {
    const agent = await attestedAgent("watcher");
    const def = grpcServiceDefinition(AgentAPI).watchChanges;
    const creds = tlsCredentials(roots(), { keyPem: agent.key.export({ format: "pem", type: "pkcs8" }).toString(), certPem: encodePemCertificates(agent.chain) });
    const opts = { "grpc.ssl_target_name_override": TD, "grpc.use_local_subchannel_pool": 1 };
    const anonymous = new Client(server.agentApiAddress, tlsCredentials(roots()), opts);
    const c1 = new Client(server.agentApiAddress, creds, opts);
    const c2 = new Client(server.agentApiAddress, creds, opts);
    const open = (c: Client) => {
      const got: string[] = [];
      const call = c.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, create(WatchChangesRequestSchema), new Metadata());
      const ended = new Promise<ServiceError>((resolve) => call.on("error", resolve));
      const first = new Promise<void>((resolve) => call.on("data", (m: { revision: string }) => (got.push(m.revision), resolve())));
      return { call, got, ended, first };
    };
    try {
      expect((await open(anonymous).ended).code).toBe(status.PERMISSION_DENIED);
      const s1 = open(c1);
      await s1.first;
      expect(s1.got[0]).toMatch(/^[\w-]{22}$/);
      const s2 = open(c2);
      await s2.first;
      const e = await s1.ended;
      expect(e.code).toBe(status.FAILED_PRECONDITION);
      expect(e.details).toContain("opened a newer change stream");
      s2.call.cancel();
    } finally {
      for (const c of [anonymous, c1, c2]) c.close();
      agent.api.close();
    }
  });
});
