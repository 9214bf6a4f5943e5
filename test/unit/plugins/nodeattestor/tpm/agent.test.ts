/**
 * The agent half against a fresh swtpm per test, answering the real server
 * half: the EK and its certificate it reports are what tpm2-tools reads, the
 * challenge is answered (ActivateCredential + Quote), the PCR values are
 * those tpm2_pcrread prints, and no transient object or session is left
 * loaded afterwards, whether the attestation succeeded or failed.
 */
import { createHash, createPublicKey, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createTpmAgentAttestor, tpmAgentConfigSchema } from "../../../../../plugins/nodeattestor/tpm/agent.js";
import { encodeTpmChallenge, parseTpmAnswer, parseTpmPayload, type TpmAnswer } from "../../../../../plugins/nodeattestor/tpm/payload.js";
import { createTpmServerAttestor, tpmServerConfigSchema } from "../../../../../plugins/nodeattestor/tpm/server.js";
import { decodePublic, publicToKeyObject } from "../../../../../plugins/nodeattestor/tpm/tpm2/structures.js";
import { parseTrustDomain } from "../../../../../spiffe/id.js";
import { ekPublicPemFromTools, loadedHandles, provisionEkCertificate, startSwtpm, tpm2, type Swtpm } from "../../../../support/swtpm.js";
import { requireTool } from "../../../../support/tools.js";

const haveTools = requireTool("swtpm", ["--version"], "TPM simulator") && requireTool("tpm2_getcap", ["--version"], "tpm2-tools");
const TD = parseTrustDomain("example.org");

function spkiHash(pem: string): string {
  return createHash("sha256").update(createPublicKey(pem).export({ type: "spki", format: "der" })).digest("hex");
}

function expectNothingLoaded(tpm: Swtpm): void {
  expect(loadedHandles(tpm, "handles-transient")).toEqual([]);
  expect(loadedHandles(tpm, "handles-loaded-session")).toEqual([]);
}

describe.skipIf(!haveTools)("tpm agent half against swtpm", () => {
  let tpm: Swtpm;
  beforeEach(async () => {
    tpm = await startSwtpm();
  });
  afterEach(async () => {
    await tpm.stop();
  });

  const agentFor = (type: "rsa" | "ecc") => createTpmAgentAttestor(tpmAgentConfigSchema.parse({ simulator: { host: tpm.host, port: tpm.port }, ek_key_type: type }));

  for (const type of ["rsa", "ecc"] as const) {
    it(`${type}: sends the provisioned EK certificate and answers the server's challenge; nothing stays loaded`, async () => {
      const { certDer, ca, ekPublicPem } = await provisionEkCertificate(tpm, type);
      const caFile = join(tpm.stateDir, "ek-ca.pem");
      writeFileSync(caFile, ca.certPem);
      // Make a PCR the quote covers differ from its reset value.
      tpm2(tpm, ["pcrextend", `7:sha256=${"11".repeat(32)}`]);

      const agent = agentFor(type);
      const payloadBytes = await agent.payload();
      expectNothingLoaded(tpm);
      const payload = parseTpmPayload(payloadBytes);
      expect(Buffer.from(payload.ekCert ?? []).equals(Buffer.from(certDer))).toBe(true);
      const ekKey = publicToKeyObject(decodePublic(payload.ekPublic));
      const hash = createHash("sha256").update(ekKey.export({ type: "spki", format: "der" })).digest("hex");
      expect(hash).toBe(spkiHash(ekPublicPem));

      const server = createTpmServerAttestor(tpmServerConfigSchema.parse({ ek_ca_certificates_path: caFile }), { trustDomain: TD });
      let answer: TpmAnswer | undefined;
      const result = await server.attest(payloadBytes, async (challenge) => {
        const bytes = await agent.answer?.(challenge);
        if (bytes === undefined) throw new Error("the agent half has no answer()");
        answer = parseTpmAnswer(bytes);
        return bytes;
      });
      expect(result.agentId.toString()).toBe(`spiffe://example.org/spire/agent/tpm/${hash}`);
      expect(result.selectors.map((s) => `${s.type}:${s.value}`)).toContain(`tpm:ek-pubhash:${hash}`);
      expectNothingLoaded(tpm);

      // The PCR values sent are the ones tpm2_pcrread prints.
      const printed = tpm2(tpm, ["pcrread", "sha256:0,1,2,3,4,5,6,7"]);
      for (const [index, value] of Object.entries(answer?.pcrValues.sha256 ?? {})) {
        expect(printed).toMatch(new RegExp(`^\\s*${index}\\s*:\\s*0x${value}\\s*$`, "im"));
      }
      expect(Object.keys(answer?.pcrValues.sha256 ?? {})).toEqual(["0", "1", "2", "3", "4", "5", "6", "7"]);
      expect(answer?.pcrValues.sha256?.["7"]).not.toBe("0".repeat(64));

      // The same TPM attests again to the same ID.
      const again = await server.attest(await agent.payload(), async (c) => (await agent.answer?.(c)) as Uint8Array);
      expect(again.agentId.toString()).toBe(result.agentId.toString());
      expectNothingLoaded(tpm);
    });
  }

  it("without an EK certificate sends only the EK public key, which an EK hash allow-list accepts", async () => {
    const ekPem = ekPublicPemFromTools(tpm, "ecc");
    const agent = agentFor("ecc");
    const payloadBytes = await agent.payload();
    expect(parseTpmPayload(payloadBytes).ekCert).toBeUndefined();
    const server = createTpmServerAttestor(tpmServerConfigSchema.parse({ ek_hashes: [spkiHash(ekPem)] }), { trustDomain: TD });
    const result = await server.attest(payloadBytes, async (c) => (await agent.answer?.(c)) as Uint8Array);
    expect(result.agentId.toString()).toBe(`spiffe://example.org/spire/agent/tpm/${spkiHash(ekPem)}`);
    expectNothingLoaded(tpm);
  });

  it("a challenge the TPM cannot activate fails naming TPM2_ActivateCredential, and still flushes everything", async () => {
    const agent = agentFor("rsa");
    await agent.payload();
    const bogus = encodeTpmChallenge({
      credentialBlob: Uint8Array.of(0, 32, ...randomBytes(32), ...randomBytes(34)),
      encryptedSecret: randomBytes(256),
      nonce: randomBytes(32),
      pcrs: [{ hash: "sha256", indices: [0] }],
    });
    await expect(agent.answer?.(bogus)).rejects.toThrow(/^tpm: TPM2_ActivateCredential failed: TPM_RC_/);
    expectNothingLoaded(tpm);
  });

  it("refuses a challenge before any payload and a malformed challenge, loading nothing", async () => {
    const agent = agentFor("rsa");
    const challenge = encodeTpmChallenge({ credentialBlob: randomBytes(10), encryptedSecret: randomBytes(10), nonce: randomBytes(32), pcrs: [] });
    await expect(agent.answer?.(challenge)).rejects.toThrow(/challenge arrived before any attestation payload/);
    await agent.payload();
    await expect(agent.answer?.(Buffer.from("{}"))).rejects.toThrow(/malformed challenge/);
    expectNothingLoaded(tpm);
  });
});

describe("tpm agent configuration", () => {
  it("refuses device_path together with simulator, naming the key", () => {
    const r = tpmAgentConfigSchema.safeParse({ device_path: "/dev/tpmrm0", simulator: { host: "127.0.0.1", port: 2321 } });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.path).toEqual(["simulator"]);
    expect(tpmAgentConfigSchema.safeParse({ ek_key_type: "dsa" }).success).toBe(false);
    expect(tpmAgentConfigSchema.parse({})).toEqual({ ek_key_type: "rsa" });
  });

  it("names the device it cannot open", async () => {
    const agent = createTpmAgentAttestor(tpmAgentConfigSchema.parse({ device_path: "/nonexistent/tpmrm0" }));
    await expect(agent.payload()).rejects.toThrow("tpm: cannot open the TPM device /nonexistent/tpmrm0: ENOENT");
  });
});
