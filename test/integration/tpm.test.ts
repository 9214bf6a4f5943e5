/**
 * The `tpm` node attestor end to end, with software TPMs (swtpm): a real
 * `sigil-server` trusting a test manufacturer CA and one enrolled EK hash,
 * real `sigil-agent` processes on an RSA EK with a manufacturer certificate
 * and on an ECC EK enrolled by hash, and a workload on the RSA node getting
 * its SVID. The refusals drive the agent API as a rogue agent would, with the
 * real agent half or raw TPM commands against other swtpm instances, and each
 * leaves no agent record behind.
 */
import { createPublicKey, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { createTpmAgentAttestor, tpmAgentConfigSchema } from "../../plugins/nodeattestor/tpm/agent.js";
import { ekPubHash } from "../../plugins/nodeattestor/tpm/ek.js";
import { encodeTpmAnswer, encodeTpmPayload, parseTpmAnswer, parseTpmChallenge, parseTpmPayload, type PcrBank } from "../../plugins/nodeattestor/tpm/payload.js";
import { TpmClient } from "../../plugins/nodeattestor/tpm/tpm2/client.js";
import { passwordAuth, policyAuth, TPM_RH } from "../../plugins/nodeattestor/tpm/tpm2/commands.js";
import { hashAlgId } from "../../plugins/nodeattestor/tpm/tpm2/structures.js";
import { akTemplate, ekTemplate, type TpmKeyType } from "../../plugins/nodeattestor/tpm/tpm2/templates.js";
import { openTcpTransport } from "../../plugins/nodeattestor/tpm/tpm2/transport.js";
import type { AgentNodeAttestor } from "../../plugins/nodeattestor/types.js";
import { EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { createTestManufacturerCa, ekPublicPemFromTools, flushAll, issueEkCertificate, provisionEkCertificate, startSwtpm, tpm2, writeEkCertificate, type Swtpm } from "../support/swtpm.js";
import { requireTool } from "../support/tools.js";
import { runWorkload, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { attestAgent, rootsPemFromBundleJson } from "./support/test-agent.js";

const haveTools = requireTool("swtpm", ["--version"], "TPM node attestation tests") && requireTool("tpm2_createek", ["--version"], "TPM node attestation tests");

const ZERO_SHA256 = "00".repeat(32);
const agentIdFor = (hash: string) => `spiffe://example.org/spire/agent/tpm/${hash}`;

let dir = "";
let srv: ServerProcess;
let roots = "";
/** RSA EK with a certificate from the trusted manufacturer CA. */
let tpmA: Swtpm;
/** ECC EK enrolled by hash, no certificate. */
let tpmB: Swtpm;
/** A TPM the server knows nothing about: the rogue's. */
let tpmC: Swtpm;
let hashA = "";
let hashB = "";
const agents: AgentProcess[] = [];

function agentHalf(tpm: Swtpm, type: TpmKeyType): AgentNodeAttestor {
  return createTpmAgentAttestor(tpmAgentConfigSchema.parse({ simulator: { host: tpm.host, port: tpm.port }, ek_key_type: type }));
}

/** Attests over the agent API with this payload, answering challenges with `answer`. */
function attest(payload: Uint8Array, answer: (challenge: Uint8Array) => Promise<Uint8Array>) {
  return attestAgent(srv.agentApiAddress, roots, { type: "tpm", payload }, undefined, answer);
}

async function refused(p: Promise<unknown>, message: RegExp): Promise<void> {
  const e = await p.then(
    () => {
      throw new Error("expected the attestation to be refused");
    },
    (err: unknown) => err as ServiceError,
  );
  expect(e.code, e.message).toBe(status.PERMISSION_DENIED);
  expect(e.details ?? e.message).toMatch(message);
}

function tpmAgents(): Array<{ spiffe_id: string; selectors?: Array<{ type: string; value: string }> }> {
  const r = srv.cli(["agent", "list", "--output", "json"]);
  expect(r.status, r.stderr).toBe(0);
  const doc = JSON.parse(r.stdout) as { agents?: Array<{ spiffe_id: string; attestation_type: string; selectors?: Array<{ type: string; value: string }> }> };
  return (doc.agents ?? []).filter((a) => a.attestation_type === "tpm");
}

/**
 * What a rogue agent holding `tpm` can answer: it tries TPM2_ActivateCredential
 * with its own EK and AK (which fails for a credential sealed to another EK)
 * and falls back to a random secret; it quotes with its own AK.
 */
async function rogueAnswer(tpm: Swtpm, type: TpmKeyType, challengeBytes: Uint8Array): Promise<{ answer: Uint8Array; activated: boolean }> {
  const c = parseTpmChallenge(challengeBytes);
  const transport = await openTcpTransport({ host: tpm.host, port: tpm.port });
  const client = new TpmClient(transport);
  try {
    const ek = await client.createPrimary(TPM_RH.ENDORSEMENT, ekTemplate(type));
    const ak = await client.createPrimary(TPM_RH.ENDORSEMENT, akTemplate(type));
    let secret: Uint8Array;
    let activated = true;
    try {
      const session = await client.startPolicySession();
      await client.policySecret(TPM_RH.ENDORSEMENT, session);
      secret = await client.activateCredential(ak.handle, ek.handle, passwordAuth(), policyAuth(session), c.credentialBlob, c.encryptedSecret);
    } catch {
      activated = false;
      secret = randomBytes(32);
    }
    const sel = c.pcrs.map((p) => ({ hash: hashAlgId(p.hash), indices: [...p.indices] }));
    const { attest, signature } = await client.quote(ak.handle, c.nonce, sel);
    const pcrValues: Partial<Record<PcrBank, Record<string, string>>> = {};
    for (const v of await client.pcrRead(sel)) {
      const bank = c.pcrs.find((p) => hashAlgId(p.hash) === v.hash)?.hash as PcrBank;
      (pcrValues[bank] ??= {})[String(v.index)] = Buffer.from(v.value).toString("hex");
    }
    return { answer: encodeTpmAnswer({ secret, attest, signature, pcrValues }), activated };
  } finally {
    await transport.close();
    flushAll(tpm);
  }
}

/** The AK public area a TPM makes from the agent's template. */
async function akPublicOf(tpm: Swtpm, type: TpmKeyType): Promise<Uint8Array> {
  const transport = await openTcpTransport({ host: tpm.host, port: tpm.port });
  try {
    return (await new TpmClient(transport).createPrimary(TPM_RH.ENDORSEMENT, akTemplate(type))).public.raw;
  } finally {
    await transport.close();
    flushAll(tpm);
  }
}

describe.skipIf(!haveTools)("tpm node attestation with real server and agent processes and swtpm", () => {
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "sigil-tpm-it-"));
    [tpmA, tpmB, tpmC] = await Promise.all([startSwtpm(), startSwtpm(), startSwtpm()]);
    const ca = await createTestManufacturerCa();
    const caPath = path.join(dir, "manufacturer-ca.pem");
    writeFileSync(caPath, ca.certPem);
    const provisioned = await provisionEkCertificate(tpmA, "rsa", ca);
    hashA = ekPubHash(createPublicKey(provisioned.ekPublicPem));
    hashB = ekPubHash(createPublicKey(ekPublicPemFromTools(tpmB, "ecc")));

    const serverDir = mkdtempSync(path.join(tmpdir(), "sigil-it-"));
    const configPath = path.join(serverDir, "server.yaml");
    // The extra YAML lands under plugins.NodeAttestor, after join_token. Attestation rate limits off: the refusals make many attempts.
    writeFileSync(
      configPath,
      testServerConfigYaml(serverDir, {
        serverExtra: "  log_level: debug\n  ratelimit: { attestation: false }\n",
        extraYaml: `    tpm:
      ek_ca_certificates_path: ${JSON.stringify(caPath)}
      ek_hashes: ["${hashB}"]
      require_ek_certificate: false
      pcr_policy:
        sha256: { "0": "${ZERO_SHA256}", "16": "${ZERO_SHA256}" }
`,
      }),
    );
    srv = await launchServerProcess(serverDir, configPath, path.join(serverDir, "admin", "api.sock"), { ownsDir: true });
    roots = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
  }, 120_000);

  afterAll(async () => {
    for (const a of agents) await a.stop();
    await srv?.stop();
    await Promise.all([tpmA, tpmB, tpmC].map((t) => t?.stop()));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  describe("refusals, each leaving no agent record", () => {
    it("an EK that is neither enrolled nor certified", async () => {
      const c = agentHalf(tpmC, "rsa");
      await refused(attest(await c.payload(), (ch) => c.answer!(ch)), /EK [0-9a-f]{64} is not in the EK hash allow-list and sent no EK certificate/);
      expect(tpmAgents()).toEqual([]);
    });

    it("an EK certificate from an untrusted CA", async () => {
      const rogueCa = await createTestManufacturerCa("Rogue EK CA");
      writeEkCertificate(tpmC, "rsa", await issueEkCertificate(rogueCa, ekPublicPemFromTools(tpmC, "rsa")));
      const c = agentHalf(tpmC, "rsa");
      const payload = await c.payload();
      expect(parseTpmPayload(payload).ekCert).toBeDefined();
      await refused(attest(payload, (ch) => c.answer!(ch)), /not signed by any configured EK CA certificate/);
      expect(tpmAgents()).toEqual([]);
    });

    it("a different TPM answers the challenge for the certified RSA TPM (it cannot activate the credential)", async () => {
      const a = agentHalf(tpmA, "rsa");
      let activated: boolean | undefined;
      await refused(
        attest(await a.payload(), async (ch) => {
          const r = await rogueAnswer(tpmC, "rsa", ch);
          activated = r.activated;
          return r.answer;
        }),
        /did not activate the credential sealed to EK/,
      );
      expect(activated).toBe(false);
      expect(tpmAgents()).toEqual([]);
    });

    it("a second TPM claims the enrolled ECC TPM's EK with its own AK", async () => {
      const claimed = parseTpmPayload(await agentHalf(tpmB, "ecc").payload());
      const payload = encodeTpmPayload({ ekPublic: claimed.ekPublic, akPublic: await akPublicOf(tpmC, "ecc") });
      let activated: boolean | undefined;
      await refused(
        attest(payload, async (ch) => {
          const r = await rogueAnswer(tpmC, "ecc", ch);
          activated = r.activated;
          return r.answer;
        }),
        new RegExp(`did not activate the credential sealed to EK ${hashB}`),
      );
      expect(activated).toBe(false);
      expect(tpmAgents()).toEqual([]);
    });

    it("a replayed answer, and a fresh activation with a replayed quote", async () => {
      const a = agentHalf(tpmA, "rsa");
      // A genuine answer, captured and never sent: the attempt is abandoned.
      let captured: Uint8Array | undefined;
      const abandon = new Error("captured");
      await expect(
        attest(await a.payload(), async (ch) => {
          captured = await a.answer!(ch);
          throw abandon;
        }),
      ).rejects.toBe(abandon);
      const old = parseTpmAnswer(captured as Uint8Array);

      await refused(attest(await a.payload(), async () => captured as Uint8Array), /did not activate the credential/);
      await refused(
        attest(await a.payload(), async (ch) => {
          const fresh = parseTpmAnswer(await a.answer!(ch));
          return encodeTpmAnswer({ secret: fresh.secret, attest: old.attest, signature: old.signature, pcrValues: old.pcrValues });
        }),
        /not qualified with this attempt's nonce/,
      );
      expect(tpmAgents()).toEqual([]);
    });

    it("PCR values that do not match the policy (PCR 16 extended on the ECC TPM)", async () => {
      tpm2(tpmB, ["pcrextend", `16:sha256=${"ab".repeat(32)}`]);
      try {
        const b = agentHalf(tpmB, "ecc");
        await refused(attest(await b.payload(), (ch) => b.answer!(ch)), new RegExp(`sha256 PCR 16 is [0-9a-f]{64}, but the PCR policy requires ${ZERO_SHA256}`));
      } finally {
        tpm2(tpmB, ["pcrreset", "16"]);
      }
      expect(tpmAgents()).toEqual([]);
    });
  });

  it("an agent on the certified RSA TPM attests (EK and PCR selectors) and a workload on its node gets its SVID", async () => {
    const agent = await startAgentProcess({
      serverAddress: srv.agentApiAddress,
      bundlePem: roots,
      nodeAttestorYaml: `tpm: { simulator: { host: 127.0.0.1, port: ${tpmA.port} }, ek_key_type: rsa }`,
    });
    agents.push(agent);
    await agent.waitForLog((l) => l.msg === "node attestation: agent attested" && l.agent_id === agentIdFor(hashA), 60_000);
    const record = tpmAgents().find((a) => a.spiffe_id === agentIdFor(hashA));
    expect((record?.selectors ?? []).map((s) => `${s.type}:${s.value}`).sort()).toEqual(
      [
        `tpm:ek-pubhash:${hashA}`,
        "tpm:ek-cert-issuer:O=Sigil Test TPM Manufacturer,CN=Test EK Root CA",
        "tpm:ek-cert-serial:a1b2c3d",
        `tpm:pcr:sha256:0:${ZERO_SHA256}`,
        `tpm:pcr:sha256:16:${ZERO_SHA256}`,
      ].sort(),
    );

    const entries = createUnaryClient(EntryAdmin, `unix:${srv.socketPath}`, credentials.createInsecure());
    try {
      const res = await entries.batchCreateEntry({
        entries: [{ spiffeId: "spiffe://example.org/tpm-node/web", parentId: agentIdFor(hashA), selectors: [{ type: "unix", value: `uid:${process.getuid?.() ?? 0}` }] }],
      });
      expect(res.results.map((r) => r.status?.code ?? 0)).toEqual([0]);
    } finally {
      entries.close();
    }
    // The agent picks the entry up at its next sync; the Workload API answers once it has.
    let ids: string[] = [];
    for (let i = 0; i < 30 && ids.length === 0; i++) {
      const r = await runWorkload(agent.socketPath, `const ctx = await client.fetchX509Context(); console.log(JSON.stringify({ ids: ctx.svids.map((s) => s.id.toString()) }));`);
      ids = (JSON.parse(r.stdout.trim().split("\n").pop() || "{}") as { ids?: string[] }).ids ?? [];
      if (ids.length === 0) await new Promise((r) => setTimeout(r, 500));
    }
    expect(ids).toEqual(["spiffe://example.org/tpm-node/web"]);
  }, 120_000);

  it("an agent on the enrolled ECC TPM attests by EK hash; the same TPM attests again under the same ID", async () => {
    const agent = await startAgentProcess({
      serverAddress: srv.agentApiAddress,
      bundlePem: roots,
      nodeAttestorYaml: `tpm: { simulator: { host: 127.0.0.1, port: ${tpmB.port} }, ek_key_type: ecc }`,
    });
    agents.push(agent);
    await agent.waitForLog((l) => l.msg === "node attestation: agent attested" && l.agent_id === agentIdFor(hashB), 60_000);
    const record = tpmAgents().find((a) => a.spiffe_id === agentIdFor(hashB));
    expect((record?.selectors ?? []).map((s) => `${s.type}:${s.value}`).sort()).toEqual(
      [`tpm:ek-pubhash:${hashB}`, `tpm:pcr:sha256:0:${ZERO_SHA256}`, `tpm:pcr:sha256:16:${ZERO_SHA256}`].sort(),
    );
    const b = agentHalf(tpmB, "ecc");
    const again = await attest(await b.payload(), (ch) => b.answer!(ch));
    again.api.close();
    expect(again.spiffeId).toBe(agentIdFor(hashB));
    expect(tpmAgents().map((a) => a.spiffe_id).sort()).toEqual([agentIdFor(hashA), agentIdFor(hashB)].sort());
  }, 120_000);
});
