/**
 * TPM node attestation.
 *
 * 1. `tpm-attest-server-cpu-{rsa,ecc}`: the server half's CPU time per
 *    attestation, in process (payload checks, MakeCredential, quote
 *    verification), against a software TPM answering in the same process;
 *    the time spent answering is measured and taken out. Baseline in the same
 *    run: one raw RSA-2048 OAEP encryption plus one P-256 ECDSA verification
 *    (`crypto.publicEncrypt` + `crypto.verify`). Ratio targets: at most 4
 *    baselines per attestation with an RSA EK (MakeCredential is one OAEP
 *    encryption, the quote one RSA verification: both cheaper than the
 *    baseline's P-256 verify, the rest is parsing, key import and hashing);
 *    at most 6 with an ECC EK, whose MakeCredential makes an ephemeral P-256
 *    key and an ECDH (together about two P-256 verifications) and whose AK
 *    import and ECDSA verification cost about as much again.
 * 2. `tpm-attest-swtpm-{rsa,ecc}`: whole attestations per second, the real
 *    agent half against swtpm and the server half in process (no gRPC),
 *    one at a time. swtpm runs the TPM's cryptography in software on the
 *    same cores, so this figure is dominated by the TPM (four primary key
 *    derivations, ActivateCredential, Quote, PCR_Read per attestation).
 *    Absolute target: at least 1 attestation per second.
 */
import { constants, generateKeyPairSync, publicEncrypt, randomBytes, sign, verify } from "node:crypto";
import { createTpmAgentAttestor, tpmAgentConfigSchema } from "../plugins/nodeattestor/tpm/agent.js";
import { ekPubHash } from "../plugins/nodeattestor/tpm/ek.js";
import { parseTpmPayload } from "../plugins/nodeattestor/tpm/payload.js";
import { createTpmServerAttestor, tpmServerConfigSchema } from "../plugins/nodeattestor/tpm/server.js";
import { decodePublic, publicToKeyObject } from "../plugins/nodeattestor/tpm/tpm2/structures.js";
import { parseTrustDomain } from "../spiffe/id.js";
import { createSoftTpm } from "../test/support/soft-tpm.js";
import { startSwtpm } from "../test/support/swtpm.js";
import { median, rateSync, report } from "./harness.js";

const PASSES = 3;
const CPU_TARGET: Record<"rsa" | "ecc", number> = { rsa: 4, ecc: 6 };
const SWTPM_TARGET = 1;
const td = parseTrustDomain("example.org");

// Baseline: one RSA-2048 OAEP encryption and one P-256 verification.
const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
const seed = randomBytes(32);
const message = randomBytes(120);
const ecSig = sign("sha256", message, ec.privateKey);
const raw = (): void => {
  publicEncrypt({ key: rsa.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256", oaepLabel: Buffer.from("IDENTITY\0") }, seed);
  if (!verify("sha256", message, ec.publicKey, ecSig)) throw new Error("baseline verify failed");
};

/** Server milliseconds per attestation, the soft TPM's answering time taken out. */
async function serverMs(type: "rsa" | "ecc", ms = 1000): Promise<number> {
  const tpm = createSoftTpm(type);
  const server = createTpmServerAttestor(tpmServerConfigSchema.parse({ ek_hashes: [ekPubHash(tpm.ekKey)] }), { trustDomain: td });
  const payload = tpm.payload();
  const once = async (): Promise<number> => {
    let answering = 0;
    const start = performance.now();
    await server.attest(payload, async (c) => {
      const t = performance.now();
      const a = tpm.answer(c);
      answering += performance.now() - t;
      return a;
    });
    return performance.now() - start - answering;
  };
  for (let i = 0; i < 20; i++) await once();
  const times: number[] = [];
  const end = performance.now() + ms;
  while (performance.now() < end) times.push(await once());
  return median(times);
}

const rawMs: number[] = [];
const cpu: Record<"rsa" | "ecc", number[]> = { rsa: [], ecc: [] };
for (let pass = 0; pass < PASSES; pass++) {
  rawMs.push(1000 / rateSync(raw));
  for (const type of ["rsa", "ecc"] as const) cpu[type].push(await serverMs(type));
}
const baseMs = median(rawMs);
for (const type of ["rsa", "ecc"] as const) {
  report({
    name: `tpm-attest-server-cpu-${type}`,
    value: median(cpu[type]),
    unit: "ms/attestation",
    baseline: { value: baseMs, unit: "ms", what: "one RSA-2048 OAEP encryption + one P-256 ECDSA verify" },
    target: { kind: "ratio", op: "<=", bound: CPU_TARGET[type] },
  });
}

// Whole attestations against swtpm.
for (const type of ["rsa", "ecc"] as const) {
  const swtpm = await startSwtpm();
  try {
    const agent = createTpmAgentAttestor(tpmAgentConfigSchema.parse({ simulator: { host: swtpm.host, port: swtpm.port }, ek_key_type: type }));
    const first = parseTpmPayload(await agent.payload());
    const hash = ekPubHash(publicToKeyObject(decodePublic(first.ekPublic)));
    const server = createTpmServerAttestor(tpmServerConfigSchema.parse({ ek_hashes: [hash] }), { trustDomain: td });
    const attestOnce = async (): Promise<void> => {
      await server.attest(await agent.payload(), (c) => (agent.answer as (c: Uint8Array) => Promise<Uint8Array>)(c));
    };
    await attestOnce();
    const rates: number[] = [];
    for (let pass = 0; pass < PASSES; pass++) {
      let n = 0;
      const start = performance.now();
      while (performance.now() - start < 3000 || n < 2) {
        await attestOnce();
        n++;
      }
      rates.push((n * 1000) / (performance.now() - start));
    }
    report({
      name: `tpm-attest-swtpm-${type}`,
      value: median(rates),
      unit: "attestations/s",
      baseline: { value: 1 / median(cpu[type]) * 1000, unit: "attestations/s", what: "the server half alone, in process" },
      target: { kind: "absolute", op: ">=", bound: SWTPM_TARGET },
    });
  } finally {
    await swtpm.stop();
  }
}
