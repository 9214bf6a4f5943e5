/**
 * Node attestation as the transparency log sees it: the agent SVID issued at
 * attestation is logged with the SHA-256 of the attestation payload the agent
 * sent (`evidenceSha256`); a renewal, which presents no evidence, is logged
 * without it.
 */
import { createHash, generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { makeSelector } from "../../../../common/selector.js";
import type { ServerNodeAttestor } from "../../../../plugins/nodeattestor/types.js";
import { NodeAttestation } from "../../../../server/attestation/node-attestation.js";
import type { IssuedX509 } from "../../../../server/ca/manager.js";
import type { TlogEntryInput } from "../../../../server/datastore/index.js";
import { Issuer } from "../../../../server/issuance/issuer.js";
import { credentialEntry, decodeLogEntry, toTlogInput } from "../../../../server/tlog/entry.js";
import { buildCsr } from "../../../../spiffe/csr.js";
import { parseSpiffeId } from "../../../../spiffe/id.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const AGENT = parseSpiffeId("spiffe://example.org/spire/agent/test/node1");

function setup() {
  const logged: TlogEntryInput[] = [];
  let serial = 0x10;
  const ca = {
    signX509Svid: (): IssuedX509 => ({ chain: [Buffer.from([0x30, 0x00])], serial: (serial++).toString(16), notBefore: T0, notAfter: new Date(T0.getTime() + 3_600_000), caKeyId: "x509-A-1" }),
    signX509SvidBatch: () => {
      throw new Error("not used");
    },
    signJwtSvid: () => {
      throw new Error("not used");
    },
    signDownstreamX509Ca: () => {
      throw new Error("not used");
    },
  };
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
    datastore: { getAgent: async () => undefined, createAgent: async () => undefined as never, updateAgent: async () => undefined as never },
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
