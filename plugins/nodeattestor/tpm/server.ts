/**
 * Server half of the `tpm` node attestor. A node proves it holds a TPM whose
 * endorsement key (EK) the server trusts, and reports the TPM's PCR values:
 *
 * 1. the payload names the EK (its public area, and its certificate when the
 *    TPM holds one) and an attestation key (AK) the agent just made;
 * 2. the EK must be trusted: its certificate chains to a configured
 *    manufacturer CA, and/or its hash is in the allow-list (see
 *    {@link tpmServerConfigSchema} for how the two combine);
 * 3. the AK must be a restricted signing key bound to its TPM;
 * 4. the server seals a fresh secret to the EK for the AK's name
 *    (MakeCredential) and sends it with a fresh nonce and the PCRs to quote;
 *    only the TPM holding that EK, with that AK loaded, recovers the secret;
 * 5. the answer must give the secret back, and a quote signed by the AK over
 *    the requested PCRs qualified with the nonce; the PCR values must match
 *    the policy.
 *
 * The agent ID is `spiffe://<td>/spire/agent/tpm/<ek-pubhash>`; the same TPM
 * re-attests under the same ID.
 */
import { createHash, randomBytes as nodeRandomBytes, timingSafeEqual, type X509Certificate } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { z } from "zod";
import { formatConfigPath } from "../../../common/config/issues.js";
import { agentSpiffeId } from "../../../common/reserved-ids.js";
import { makeSelector, type Selector } from "../../../common/selector.js";
import { isSigilError, SigilError } from "../../../spiffe/errors.js";
import type { SpiffeId, TrustDomain } from "../../../spiffe/id.js";
import type { ChallengeFn, NodeAttestationResult, ServerNodeAttestor } from "../types.js";
import { makeCredential } from "./credential.js";
import { checkAkPublic, checkEkPublic, loadEkCaCertificates, publicAreaSpki, verifyEkCertificate, type EkCertificateFacts } from "./ek.js";
import { encodeTpmChallenge, MAX_PCR_INDEX, parseTpmAnswer, parseTpmPayload, PCR_DIGEST_BYTES, TPM_ATTESTOR, TPM_NONCE_BYTES, type PcrBank, type PcrSelectionRequest, type TpmAnswer } from "./payload.js";
import { verifyQuote, type PcrPolicy } from "./quote.js";
import { objectName, publicToKeyObject } from "./tpm2/structures.js";

/** PCRs quoted when no `pcr_policy` is configured: sha256 0-7, the firmware and boot loader measurements. */
export const DEFAULT_PCR_SELECTION: readonly PcrSelectionRequest[] = [{ hash: "sha256", indices: [0, 1, 2, 3, 4, 5, 6, 7] }];

const EK_HASH_RE = /^[0-9a-f]{64}$/;

const ekHash = z
  .string()
  .transform((s) => s.trim().toLowerCase())
  .refine((s) => EK_HASH_RE.test(s), { error: "is not 64 hex digits (the SHA-256 of the EK's DER public key)" });

function pcrBankSchema(bank: PcrBank) {
  const digits = PCR_DIGEST_BYTES[bank] * 2;
  return z
    .record(
      z.string(),
      z
        .string()
        .transform((s) => s.toLowerCase())
        .refine((s) => new RegExp(`^[0-9a-f]{${digits}}$`).test(s), { error: `is not ${digits} hex digits (a ${bank} PCR value)` }),
    )
    .superRefine((values, ctx) => {
      for (const index of Object.keys(values)) {
        if (!/^(?:[0-9]|1[0-9]|2[0-3])$/.test(index)) ctx.addIssue({ code: "custom", path: [index], message: `is not a PCR index 0-${MAX_PCR_INDEX}` });
      }
    })
    .optional()
    .describe(`Required ${bank} PCR values by index, e.g. \`{"7": "<${digits} hex digits>"}\`.`);
}

/** Configuration of the server half. */
export const tpmServerConfigSchema = z
  .strictObject({
    ek_ca_certificates_path: z
      .string()
      .min(1, { error: "is empty" })
      .optional()
      .describe("PEM file, or folder of .pem/.crt/.cer/.der files, of TPM manufacturer CA certificates (roots and intermediates) that EK certificates must chain to."),
    ek_hashes: z.array(ekHash).optional().describe("EK public key hashes (lowercase hex SHA-256 of the DER SubjectPublicKeyInfo) of enrolled TPMs."),
    ek_hashes_path: z
      .string()
      .min(1, { error: "is empty" })
      .optional()
      .describe("File of enrolled EK hashes, one a line (`#` starts a comment); read again when it changes, so nodes are enrolled without a restart."),
    require_ek_certificate: z
      .boolean()
      .optional()
      .describe(
        "Refuse TPMs without an EK certificate that chains to `ek_ca_certificates_path`; with EK hashes also configured, the hash must be listed too. Default true when `ek_ca_certificates_path` is set. When false, a TPM is accepted by a verified certificate or by a listed hash.",
      ),
    pcr_policy: z
      .strictObject({ sha1: pcrBankSchema("sha1"), sha256: pcrBankSchema("sha256"), sha384: pcrBankSchema("sha384") })
      .optional()
      .describe("PCR values a node must quote. The PCRs listed are the ones quoted; without a policy, sha256 PCRs 0-7 are quoted and only reported as selectors."),
  })
  .superRefine((c, ctx) => {
    if (c.ek_ca_certificates_path === undefined && c.ek_hashes === undefined && c.ek_hashes_path === undefined) {
      ctx.addIssue({ code: "custom", message: "set ek_ca_certificates_path (manufacturer CAs) and/or ek_hashes or ek_hashes_path (enrolled EKs)" });
    }
    if (c.require_ek_certificate === true && c.ek_ca_certificates_path === undefined) {
      ctx.addIssue({ code: "custom", path: ["require_ek_certificate"], message: "is true but ek_ca_certificates_path is not set: no certificate could be verified" });
    }
    if (c.pcr_policy !== undefined && Object.values(c.pcr_policy).every((v) => v === undefined || Object.keys(v).length === 0)) {
      ctx.addIssue({ code: "custom", path: ["pcr_policy"], message: "lists no PCR (leave pcr_policy out to quote sha256 PCRs 0-7 without a policy)" });
    }
  });

/** Parsed configuration of the server half. */
export type TpmServerConfig = z.output<typeof tpmServerConfigSchema>;

/** What the server half needs. */
export interface TpmServerDeps {
  readonly trustDomain: TrustDomain;
  /** Current time, for certificate validity (default `new Date()`). */
  readonly now?: () => Date;
  /** Randomness for secrets and nonces (default `crypto.randomBytes`). */
  readonly randomBytes?: (n: number) => Buffer;
}

function denied(message: string): SigilError {
  return new SigilError("ERR_PERMISSION_DENIED", `tpm: ${message}`);
}

const configKey = (key: string) => formatConfigPath(["plugins", "NodeAttestor", TPM_ATTESTOR, key]);

function parseHashFile(text: string, path: string): Set<string> {
  const out = new Set<string>();
  for (const [i, line] of text.split(/\r?\n/).entries()) {
    const s = line.replace(/#.*/, "").trim().toLowerCase();
    if (s === "") continue;
    if (!EK_HASH_RE.test(s)) throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: ${configKey("ek_hashes_path")}: ${path} line ${i + 1} is not 64 hex digits`);
    out.add(s);
  }
  return out;
}

/** The EK hashes of `ek_hashes_path`, read again when the file's modification time or size changes. */
function hashFileReader(path: string): () => ReadonlySet<string> {
  let stamp = "";
  let hashes: ReadonlySet<string> = new Set();
  const read = (): ReadonlySet<string> => {
    let text: string;
    let now: string;
    try {
      const st = statSync(path);
      now = `${st.mtimeMs}:${st.size}:${st.ino}`;
      if (now === stamp) return hashes;
      text = readFileSync(path, "utf8");
    } catch (e) {
      throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: ${configKey("ek_hashes_path")}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { cause: e });
    }
    hashes = parseHashFile(text, path);
    stamp = now;
    return hashes;
  };
  read();
  return read;
}

/**
 * Creates the server half. Reads the CA certificates and the EK hash file
 * now, so a bad path or file fails the server's start naming the key.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the config key
 */
export function createTpmServerAttestor(config: TpmServerConfig, deps: TpmServerDeps): ServerNodeAttestor {
  const now = deps.now ?? (() => new Date());
  const rand = deps.randomBytes ?? nodeRandomBytes;
  let cas: X509Certificate[] | undefined;
  if (config.ek_ca_certificates_path !== undefined) {
    try {
      cas = loadEkCaCertificates(config.ek_ca_certificates_path);
    } catch (e) {
      throw new SigilError("ERR_INVALID_ARGUMENT", `${configKey("ek_ca_certificates_path")}: ${(e as Error).message}`, { cause: e });
    }
  }
  const listed = new Set(config.ek_hashes ?? []);
  const fileHashes = config.ek_hashes_path === undefined ? undefined : hashFileReader(config.ek_hashes_path);
  const hashesConfigured = config.ek_hashes !== undefined || fileHashes !== undefined;
  const requireCert = config.require_ek_certificate ?? cas !== undefined;
  const policy: PcrPolicy = config.pcr_policy ?? {};
  const selection: PcrSelectionRequest[] =
    config.pcr_policy === undefined
      ? [...DEFAULT_PCR_SELECTION]
      : (["sha1", "sha256", "sha384"] as const)
          .map((hash) => ({ hash, indices: Object.keys(policy[hash] ?? {}).map(Number).sort((a, b) => a - b) }))
          .filter((s) => s.indices.length > 0);

  // A hash file broken after the start is the server's problem (logged), never the agent's invalid argument.
  const fileHas = (hash: string): boolean => {
    if (fileHashes === undefined) return false;
    try {
      return fileHashes().has(hash);
    } catch (e) {
      throw new SigilError("ERR_INTERNAL", (e as Error).message, { cause: e });
    }
  };
  const isListed = (hash: string): boolean => listed.has(hash) || fileHas(hash);
  const agentPathPrefix = `/spire/agent/${TPM_ATTESTOR}/`;

  return {
    name: TPM_ATTESTOR,
    async attest(payloadBytes: Uint8Array, challenge: ChallengeFn): Promise<NodeAttestationResult> {
      const payload = parseTpmPayload(payloadBytes);

      // The EK: a standard endorsement key, and one this server trusts.
      const ek = checkEkPublic(payload.ekPublic);
      const ekSpki = publicAreaSpki(ek);
      const hash = createHash("sha256").update(ekSpki).digest("hex");
      let cert: EkCertificateFacts | undefined;
      if (payload.ekCert !== undefined && cas !== undefined) cert = verifyEkCertificate(payload.ekCert, ekSpki, cas, now());
      if (requireCert) {
        if (cert === undefined) throw denied(`the TPM with EK ${hash} sent no EK certificate, and ${configKey("require_ek_certificate")} is true`);
        if (hashesConfigured && !isListed(hash)) throw denied(`EK ${hash} is not in the EK hash allow-list`);
      } else if (cert === undefined && !isListed(hash)) {
        throw denied(`EK ${hash} is not in the EK hash allow-list${cas !== undefined ? " and sent no EK certificate" : ""}`);
      }

      // The AK, and the credential only the TPM holding both can activate.
      const ak = checkAkPublic(payload.akPublic, ek.type);
      const akKey = publicToKeyObject(ak);
      const made = makeCredential(ek, objectName(ak.raw), { randomBytes: rand });
      const nonce = rand(TPM_NONCE_BYTES);
      const answerBytes = await challenge(encodeTpmChallenge({ credentialBlob: made.credentialBlob, encryptedSecret: made.encryptedSecret, nonce, pcrs: selection }));
      const answer: TpmAnswer = parseTpmAnswer(answerBytes);
      if (answer.secret.byteLength !== made.secret.byteLength || !timingSafeEqual(answer.secret, made.secret)) {
        throw denied(`the TPM did not activate the credential sealed to EK ${hash} (another TPM answered, or the AK is not in that TPM)`);
      }
      const quoted = verifyQuote({ ak, akKey, attest: answer.attest, signature: answer.signature, nonce, requested: selection, pcrValues: answer.pcrValues, policy });

      const values = [`ek-pubhash:${hash}`];
      if (cert !== undefined) values.push(`ek-cert-issuer:${cert.issuer}`, `ek-cert-serial:${cert.serial}`);
      for (const q of quoted) values.push(`pcr:${q.bank}:${q.index}:${q.value}`);
      let selectors: Selector[];
      try {
        selectors = values.map((v) => makeSelector(TPM_ATTESTOR, v));
      } catch (e) {
        if (!isSigilError(e)) throw e;
        throw denied(`the EK certificate has an issuer that cannot be a selector: ${e.message}`);
      }
      return { agentId: agentSpiffeId(deps.trustDomain, `${TPM_ATTESTOR}/${hash}`), selectors, canReattest: true };
    },
    // spiffe://<td>/spire/agent/tpm/<64 hex>: the ID of an EK this configuration can accept.
    issuesAgentId(id: SpiffeId): boolean {
      if (!id.memberOf(deps.trustDomain) || !id.path.startsWith(agentPathPrefix)) return false;
      const rest = id.path.slice(agentPathPrefix.length);
      if (!EK_HASH_RE.test(rest)) return false;
      // Any EK a manufacturer CA certifies may attest, unless the hash list must also name it.
      if (cas !== undefined && !(requireCert && hashesConfigured)) return true;
      try {
        return isListed(rest);
      } catch {
        return false;
      }
    },
  };
}
