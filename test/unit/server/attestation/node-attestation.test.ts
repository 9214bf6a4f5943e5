/**
 * Node attestation as the transparency log sees it: the agent SVID issued at
 * attestation is logged with the SHA-256 of the attestation payload the agent
 * sent (`evidenceSha256`); a renewal, which presents no evidence, is logged
 * without it. And a join token is spent only with the agent record: an
 * attestation failing after the attestor's check leaves it for the retry.
 */
import { createHash, generateKeyPairSync } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { makeSelector } from "../../../../common/selector.js";
import { createJoinTokenServerAttestor } from "../../../../plugins/nodeattestor/join_token/server.js";
import type { ServerNodeAttestor } from "../../../../plugins/nodeattestor/types.js";
import { NodeAttestation } from "../../../../server/attestation/node-attestation.js";
import type { IssuedX509 } from "../../../../server/ca/manager.js";
import type { AgentInput, Datastore, TlogEntryInput } from "../../../../server/datastore/index.js";
import { Issuer } from "../../../../server/issuance/issuer.js";
import { credentialEntry, decodeLogEntry, toTlogInput } from "../../../../server/tlog/entry.js";
import { buildCsr } from "../../../../spiffe/csr.js";
import { isSigilError, SigilError } from "../../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { closeTempDatastore, openTempDatastore, rejection } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const AGENT = parseSpiffeId("spiffe://example.org/spire/agent/test/node1");

/** A CA that signs agent SVIDs with `signX509Svid` and nothing else. */
function fakeCa(signX509Svid: () => IssuedX509) {
  const unused = (): never => {
    throw new Error("not used");
  };
  return { signX509Svid, signX509SvidBatch: unused, signJwtSvid: unused, signDownstreamX509Ca: unused };
}

function setup() {
  const logged: TlogEntryInput[] = [];
  let serial = 0x10;
  const ca = fakeCa((): IssuedX509 => ({ chain: [Buffer.from([0x30, 0x00])], serial: (serial++).toString(16), notBefore: T0, notAfter: new Date(T0.getTime() + 3_600_000), caKeyId: "x509-A-1" }));
  const issuer = new Issuer({
    ca,
    datastore: { recordIssuances: async (_records, entries) => void logged.push(...(entries ?? [])) },
    now: () => T0,
    defaultX509TtlMs: 3_600_000,
    defaultJwtTtlMs: 300_000,
    transparencyLog: { credentialEntries: (creds) => creds.map((c) => toTlogInput(credentialEntry(c))), appended: () => undefined },
  });
  const attestor: ServerNodeAttestor = { name: "test", attest: async () => ({ agentId: AGENT, selectors: [makeSelector("test", "node1")], canReattest: true }) };
  const attestation = new NodeAttestation({
    attestors: new Map([["test", attestor]]),
    datastore: {
      getAgent: async () => undefined,
      createAgent: async () => undefined as never,
      updateAgent: async () => undefined as never,
      deleteAgent: async () => undefined as never,
      consumeJoinToken: async () => undefined as never,
      peekJoinToken: async () => undefined as never,
      createJoinToken: async () => undefined,
    },
    issuer,
    agentTtlMs: 3_600_000,
  });
  return { logged, attestation };
}

describe("node attestation in the transparency log", () => {
  it("logs the agent SVID with the SHA-256 of the attestation payload; a renewal without it", async () => {
    const { logged, attestation } = setup();
    const csr = buildCsr(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey);
    const payload = Buffer.from('{"token":"evidence of node1"}');
    await attestation.attest({ type: "test", payload, csr }, async () => new Uint8Array());
    await attestation.renew(AGENT, csr);

    const [attested, renewed] = logged.map((e) => decodeLogEntry(e.entry));
    expect(attested).toMatchObject({ kind: "agent-svid", spiffeId: AGENT.toString(), requestedBy: "attestation:test", evidenceSha256: createHash("sha256").update(payload).digest("hex") });
    expect(renewed).toMatchObject({ kind: "agent-svid", requestedBy: `agent:${AGENT.toString()}` });
    expect(renewed && "evidenceSha256" in renewed).toBe(false);
  });
});

describe("node attestation with a join token", () => {
  const td = parseTrustDomain("example.org");
  const csr = buildCsr(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey);
  const payload = (token: string) => ({ type: "join_token", payload: Buffer.from(token), csr });
  const noChallenge = async (): Promise<Uint8Array> => new Uint8Array();
  let ds: Datastore;
  let dir: string;

  beforeEach(async () => {
    ({ ds, dir } = await openTempDatastore("node-attest", T0));
  });
  afterEach(() => closeTempDatastore(ds, dir));

  /**
   * NodeAttestation over the real datastore and join_token attestor; `failSign`
   * makes the CA refuse the next signings, `beforeCreate` runs before each
   * agent record is created (and may throw), `failRecord` fails the next
   * issuance records' writes.
   */
  function attestation(hooks: { failSign?: number; beforeCreate?: (input: AgentInput) => Promise<void>; failRecord?: number } = {}) {
    let failSign = hooks.failSign ?? 0;
    let failRecord = hooks.failRecord ?? 0;
    let serial = 0x20;
    const ca = fakeCa((): IssuedX509 => {
      if (failSign-- > 0) throw new SigilError("ERR_UNAVAILABLE", "ca: no active X.509 CA");
      return { chain: [Buffer.from([0x30, 0x00])], serial: (serial++).toString(16), notBefore: T0, notAfter: new Date(T0.getTime() + 3_600_000), caKeyId: "x509-A-1" };
    });
    const recordIssuances = async (): Promise<undefined> => {
      if (failRecord-- > 0) throw new SigilError("ERR_UNAVAILABLE", "datastore: mysql unavailable: Lock wait timeout exceeded");
      return undefined;
    };
    const issuer = new Issuer({ ca, datastore: { recordIssuances }, now: () => T0, defaultX509TtlMs: 3_600_000, defaultJwtTtlMs: 300_000 });
    const store: Pick<Datastore, "getAgent" | "createAgent" | "updateAgent" | "deleteAgent" | "consumeJoinToken" | "peekJoinToken" | "createJoinToken"> = {
      getAgent: (id) => ds.getAgent(id),
      createAgent: async (input) => {
        await hooks.beforeCreate?.(input);
        return ds.createAgent(input);
      },
      updateAgent: (id, changes, mask) => ds.updateAgent(id, changes, mask),
      deleteAgent: (id) => ds.deleteAgent(id),
      consumeJoinToken: (token, now) => ds.consumeJoinToken(token, now),
      peekJoinToken: (token, now) => ds.peekJoinToken(token, now),
      createJoinToken: (input) => ds.createJoinToken(input),
    };
    const attestor = createJoinTokenServerAttestor({ trustDomain: td, store: ds });
    return new NodeAttestation({ attestors: new Map([["join_token", attestor]]), datastore: store, issuer, agentTtlMs: 3_600_000 });
  }

  const tokenAgent = (token: string) => `spiffe://example.org/spire/agent/join_token/${token}`;

  it("the CA refusing to sign leaves the token: the retry with it attests, and then the token is used", async () => {
    await ds.createJoinToken({ token: "tok", expiresAt: new Date(T0.getTime() + 600_000) });
    const nodes = attestation({ failSign: 1 });
    await rejection(nodes.attest(payload("tok"), noChallenge), "ERR_UNAVAILABLE", "ca: no active X.509 CA");
    expect(await ds.getAgent(tokenAgent("tok"))).toBeUndefined();
    const attested = await nodes.attest(payload("tok"), noChallenge);
    expect(attested.agentId).toBe(tokenAgent("tok"));
    expect((await ds.getAgent(tokenAgent("tok")))?.certSerial).toBe(attested.svid.serial);
    const again = await rejection(nodes.attest(payload("tok"), noChallenge), "ERR_PERMISSION_DENIED");
    expect(again.message).toBe("join_token: join token not found or already used");
  });

  it("the agent record's creation failing (a lock wait timeout) leaves the token: the retry with it attests", async () => {
    await ds.createJoinToken({ token: "tok", expiresAt: new Date(T0.getTime() + 600_000) });
    let timeouts = 1;
    const nodes = attestation({
      beforeCreate: async () => {
        if (timeouts-- > 0) throw new SigilError("ERR_UNAVAILABLE", "datastore: mysql unavailable: Lock wait timeout exceeded");
      },
    });
    await rejection(nodes.attest(payload("tok"), noChallenge), "ERR_UNAVAILABLE", "datastore: mysql unavailable");
    expect(await ds.peekJoinToken("tok")).toBeDefined();
    expect((await nodes.attest(payload("tok"), noChallenge)).agentId).toBe(tokenAgent("tok"));
    await rejection(ds.peekJoinToken("tok"), "ERR_NOT_FOUND");
  });

  it("the issuance record's write failing after the agent record spent the token: the record goes, the token comes back with its expiry and agent ID, and the retry attests", async () => {
    const expiresAt = new Date(T0.getTime() + 600_000);
    const chosen = "spiffe://example.org/spire/agent/rack-7/node-1";
    await ds.createJoinToken({ token: "tok", expiresAt, agentId: chosen });
    const nodes = attestation({ failRecord: 1 });
    await rejection(nodes.attest(payload("tok"), noChallenge), "ERR_UNAVAILABLE", "datastore: mysql unavailable");
    expect(await ds.getAgent(chosen)).toBeUndefined();
    expect(await ds.peekJoinToken("tok")).toEqual({ expiresAt, agentId: chosen });
    const attested = await nodes.attest(payload("tok"), noChallenge);
    expect(attested.agentId).toBe(chosen);
    expect((await ds.getAgent(chosen))?.certSerial).toBe(attested.svid.serial);
    await rejection(ds.peekJoinToken("tok"), "ERR_NOT_FOUND");
  });

  it("an agent that stopped waiting (its call cancelled or past its deadline) before its record is written spends nothing: its retry attests", async () => {
    await ds.createJoinToken({ token: "tok", expiresAt: new Date(T0.getTime() + 600_000) });
    const nodes = attestation();
    const err = await rejection(nodes.attest(payload("tok"), noChallenge, { abandoned: () => true }), "ERR_UNAVAILABLE");
    expect(err.message).toMatch(/stopped waiting for its attestation/);
    expect(await ds.getAgent(tokenAgent("tok"))).toBeUndefined();
    expect((await nodes.attest(payload("tok"), noChallenge, { abandoned: () => false })).agentId).toBe(tokenAgent("tok"));
  });

  it("an agent gone by the time its SVID is recorded: the record goes, the token comes back, and the retry attests", async () => {
    await ds.createJoinToken({ token: "tok", expiresAt: new Date(T0.getTime() + 600_000) });
    const nodes = attestation();
    let checks = 0;
    // Still there when the record is written (first check), gone once the SVID is recorded (second).
    const err = await rejection(nodes.attest(payload("tok"), noChallenge, { abandoned: () => ++checks > 1 }), "ERR_UNAVAILABLE");
    expect(err.message).toMatch(/recorded but not delivered/);
    expect(await ds.getAgent(tokenAgent("tok"))).toBeUndefined();
    expect((await nodes.attest(payload("tok"), noChallenge)).agentId).toBe(tokenAgent("tok"));
  });

  it("a token spent elsewhere between the attestor's check and the agent record is denied as used, and no agent is created", async () => {
    await ds.createJoinToken({ token: "tok", expiresAt: new Date(T0.getTime() + 600_000) });
    const nodes = attestation({ beforeCreate: async () => void (await ds.consumeJoinToken("tok")) });
    const err = await rejection(nodes.attest(payload("tok"), noChallenge), "ERR_PERMISSION_DENIED");
    expect(err.message).toBe("join_token: join token not found or already used");
    expect(await ds.countAgents()).toBe(0);
  });

  it("two attestations at once with one token: exactly one agent, the other denied", async () => {
    await ds.createJoinToken({ token: "tok", expiresAt: new Date(T0.getTime() + 600_000), agentId: "spiffe://example.org/spire/agent/node/a" });
    const nodes = attestation();
    const results = await Promise.allSettled([nodes.attest(payload("tok"), noChallenge), nodes.attest(payload("tok"), noChallenge)]);
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    const denied = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    expect(isSigilError(denied?.reason, "ERR_PERMISSION_DENIED"), String(denied?.reason)).toBe(true);
    expect(await ds.countAgents()).toBe(1);
  });

  it("an agent already on record that may re-attest: the token is spent right before its record is updated", async () => {
    const id = "spiffe://example.org/spire/agent/node/db-1";
    await ds.createAgent({ spiffeId: id, attestationType: "tpm", certSerial: "01", certNotAfter: new Date(T0.getTime() + 3_600_000), canReattest: true });
    await ds.createJoinToken({ token: "tok", expiresAt: new Date(T0.getTime() + 600_000), agentId: id });
    const attested = await attestation().attest(payload("tok"), noChallenge);
    expect(await ds.getAgent(id)).toMatchObject({ attestationType: "join_token", certSerial: attested.svid.serial, canReattest: false });
    await rejection(ds.peekJoinToken("tok"), "ERR_NOT_FOUND");
  });
});
