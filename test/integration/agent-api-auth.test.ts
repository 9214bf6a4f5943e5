/**
 * Agent API authentication over real mTLS against an in-process server on a
 * manual clock. The server remembers client certificates it has verified; this
 * checks that a remembered certificate never outlives what it proved: a ban,
 * an eviction or the SVID's expiry takes effect on the very next call.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { Client, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ManualClock } from "../../common/clock.js";
import { RETRY_PUSHBACK_METADATA_KEY } from "../../common/rpc/status.js";
import { AgentAPI, WatchChangesRequestSchema } from "../../proto/gen/sigil/agent/v1/agent_pb.js";
import { grpcServiceDefinition } from "../../spiffe/grpc/service.js";
import { encodePemCertificates } from "../../spiffe/pem.js";
import { parseSelector } from "../../common/selector.js";
import { parseServerConfig } from "../../server/config/load.js";
import { startServer, type RunningServer } from "../../server/main.js";
import { testServerConfigYaml } from "./support/server-process.js";
import { attestInProcess, refusal, tlsCredentials, type Attested } from "./support/test-agent.js";

const TD = "example.org";
let dir: string;
let server: RunningServer;
const clock = new ManualClock(new Date());

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "sigil-agent-auth-"));
  const config = parseServerConfig(testServerConfigYaml(dir, { keyManager: "memory", serverExtra: "  audit_log_enabled: false\n" }));
  server = await startServer(config, { clock, logDestination: { write: () => undefined } });
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

/** Opens WatchChanges with the agent's SVID on a connection of its own. */
function openWatch(agent: Attested): { client: Client; ended: Promise<ServiceError>; first: Promise<void> } {
  const def = grpcServiceDefinition(AgentAPI).watchChanges;
  const roots = encodePemCertificates(server.ca.bundle().x509Authorities);
  const creds = tlsCredentials(roots, { keyPem: agent.key.export({ format: "pem", type: "pkcs8" }).toString(), certPem: encodePemCertificates(agent.chain) });
  const client = new Client(server.agentApiAddress, creds, { "grpc.use_local_subchannel_pool": 1 });
  const call = client.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, create(WatchChangesRequestSchema), new Metadata());
  const ended = new Promise<ServiceError>((resolve) => call.on("error", resolve));
  const first = new Promise<void>((resolve) => call.on("data", () => resolve()));
  return { client, ended, first };
}

// Before the tests that move the clock far: these refill buckets by moving it a little.
describe("agent API: per-agent limits on syncs and change streams", () => {
  it("an agent syncing in a loop is refused with ResourceExhausted and a retry hint after its burst; another agent is not", async () => {
    const noisy = await attestedAgent("sync-loop");
    const quiet = await attestedAgent("sync-quiet");
    try {
      for (let i = 0; i < 10; i++) await noisy.api.syncAuthorized({});
      const e = await refusal(noisy.api.syncAuthorized({}));
      expect(e.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(e.details).toMatch(new RegExp(`^sync authorized: rate limit: agent ${noisy.spiffeId} synced more than 5 times per second; retry after 200ms$`));
      expect(e.metadata.get(RETRY_PUSHBACK_METADATA_KEY)).toEqual(["200"]);
      expect((await quiet.api.syncAuthorized({})).revision).not.toBe("");
      clock.advance(200);
      expect((await noisy.api.syncAuthorized({})).revision).not.toBe("");
    } finally {
      noisy.api.close();
      quiet.api.close();
    }
  });

  it("an agent opening change streams in a loop is refused with ResourceExhausted after 3", async () => {
    const agent = await attestedAgent("watch-loop");
    const opened: ReturnType<typeof openWatch>[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        opened.push(openWatch(agent));
        await opened[i]!.first;
      }
      const refused = openWatch(agent);
      opened.push(refused);
      const e = await refused.ended;
      expect(e.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(e.details).toMatch(/^watch changes: rate limit: agent .* opened more than 1 change stream per second; retry after 1000ms$/);
      expect(e.metadata.get(RETRY_PUSHBACK_METADATA_KEY)).toEqual(["1000"]);
    } finally {
      for (const o of opened) o.client.close();
      agent.api.close();
    }
  });
});

// First: a later test moves the shared clock past every SVID's expiry.
describe("agent API: the reserved namespace", () => {
  it("an entry naming a /spire ID, stored before entries were checked for it, is never signed for", async () => {
    const agent = await attestedAgent("reserved");
    try {
      const entry = await server.datastore.createEntry({ spiffeId: `spiffe://${TD}/spire/server`, parentId: agent.spiffeId, selectors: [parseSelector("unix:uid:0")] });
      // The entry index follows the datastore's change feed.
      // Slower than the per-agent sync limit (5/s, burst 10), which this frozen clock never refills.
      for (let i = 0; i < 40 && !(await agent.api.syncAuthorized({})).entries.some((e) => e.id === entry.id); i++) await new Promise((r) => setTimeout(r, 250));
      const spki = new Uint8Array(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ format: "der", type: "spki" }));
      const before = (await server.datastore.listIssuances({})).items.length;
      const res = await agent.api.batchNewX509SVID({ params: [{ entryId: entry.id, key: { case: "publicKey", value: spki } }] });
      expect(res.results[0]?.svid).toBeUndefined();
      expect(res.results[0]?.status?.code).toBe(status.PERMISSION_DENIED);
      expect(res.results[0]?.status?.message).toContain("in the reserved namespace /spire; no SVID is issued for it");
      const jwt = await refusal(agent.api.newJWTSVID({ entryId: entry.id, audience: ["x"] }));
      expect(jwt.code).toBe(status.PERMISSION_DENIED);
      expect((await server.datastore.listIssuances({})).items.length).toBe(before);
    } finally {
      agent.api.close();
    }
  });
});

// Moves the clock past the SVID's expiry and back: the TLS layer checks client certificates by the real time.
describe("agent API: a change stream does not outlive its SVID", () => {
  it("a WatchChanges stream whose agent record never changes is ended when the SVID it was opened with expires", async () => {
    const agent = await attestedAgent("watch-expiry");
    const w = openWatch(agent);
    const start = clock.now();
    try {
      await Promise.race([w.first, w.ended.then((e) => Promise.reject(new Error(`the stream ended before its first notice: ${e.details}`)))]);
      const notAfter = Date.parse(new X509Certificate(Buffer.from(agent.chain[0] as Uint8Array)).validTo);
      clock.set(new Date(notAfter + 1));
      const e = await w.ended;
      expect(e.code).toBe(status.PERMISSION_DENIED);
      expect(e.details).toContain(`the SVID the stream of ${agent.spiffeId} was opened with expired at ${new Date(notAfter).toISOString()}`);
    } finally {
      clock.set(start);
      w.client.close();
      agent.api.close();
    }
  });
});

describe("agent API: a verified client certificate is remembered, never trusted beyond its proof", () => {
  it("a ban takes effect on the next call of an agent whose SVID was already verified", async () => {
    const agent = await attestedAgent("ban");
    try {
      await agent.api.syncAuthorized({});
      await agent.api.syncAuthorized({}); // served from the remembered verification
      await server.datastore.banAgent(agent.spiffeId);
      const e = await refusal(agent.api.syncAuthorized({}));
      expect(e.code).toBe(status.PERMISSION_DENIED);
      expect(e.details).toContain(`agent ${agent.spiffeId} is banned`);
    } finally {
      agent.api.close();
    }
  });

  it("a banned agent whose current serial is still on record is refused because of the ban", async () => {
    // banAgent also clears the serials, which alone would refuse the SVID; a record marked banned
    // with its serial intact (a partial update, or a record written another way) must be refused too.
    const agent = await attestedAgent("ban-serial");
    try {
      await agent.api.syncAuthorized({});
      const serial = (await server.datastore.getAgent(agent.spiffeId))?.certSerial;
      expect(serial).toMatch(/^[0-9a-f]+$/);
      await server.datastore.updateAgent(agent.spiffeId, { banned: true }, ["banned"]);
      expect(await server.datastore.getAgent(agent.spiffeId)).toMatchObject({ banned: true, certSerial: serial });
      const spki = new Uint8Array(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ format: "der", type: "spki" }));
      for (const call of [agent.api.syncAuthorized({}), agent.api.batchNewX509SVID({ params: [{ entryId: "any", key: { case: "publicKey", value: spki } }] })]) {
        const e = await refusal(call);
        expect(e.code).toBe(status.PERMISSION_DENIED);
        expect(e.details).toBe(`agent api: agent ${agent.spiffeId} is banned`);
      }
    } finally {
      agent.api.close();
    }
  });

  it("an evicted agent is refused although its certificate verified before", async () => {
    const agent = await attestedAgent("evict");
    try {
      await agent.api.syncAuthorized({});
      await server.datastore.deleteAgent(agent.spiffeId);
      const e = await refusal(agent.api.syncAuthorized({}));
      expect(e.code).toBe(status.PERMISSION_DENIED);
      expect(e.details).toContain("is not an attested agent");
    } finally {
      agent.api.close();
    }
  });

  it("a remembered SVID stops working once it expires by the server's clock", async () => {
    const agent = await attestedAgent("expiry");
    try {
      await agent.api.syncAuthorized({});
      const notAfter = Date.parse(new X509Certificate(Buffer.from(agent.chain[0] as Uint8Array)).validTo);
      clock.set(new Date(notAfter + 1000));
      const e = await refusal(agent.api.syncAuthorized({}));
      expect(e.code).toBe(status.PERMISSION_DENIED);
      expect(e.details).toContain("client certificate is not a valid SVID");
    } finally {
      agent.api.close();
    }
  });
});
