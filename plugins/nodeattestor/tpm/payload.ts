/**
 * The three messages the `tpm` node attestor's halves exchange, as UTF-8 JSON
 * objects whose byte fields are standard base64:
 *
 * 1. attestation payload (agent → server): `{"ekPublic", "ekCert"?, "akPublic"}`
 *    — the EK and AK as TPMT_PUBLIC bytes (no TPM2B size), the EK certificate
 *    as DER when the TPM holds one in NV;
 * 2. challenge (server → agent): `{"credentialBlob", "encryptedSecret", "nonce", "pcrs"}`
 *    — `credentialBlob` is the *contents* of a TPM2B_ID_OBJECT and
 *    `encryptedSecret` the contents of a TPM2B_ENCRYPTED_SECRET, both WITHOUT
 *    their 2-byte size: the agent adds the size when it marshals
 *    TPM2_ActivateCredential. `nonce` is 32 bytes, the quote's
 *    qualifyingData. `pcrs` lists the PCR banks and indices to quote;
 * 3. answer (agent → server): `{"secret", "attest", "signature", "pcrValues"}`
 *    — the activated credential, the TPMS_ATTEST bytes (the contents of the
 *    quote's TPM2B_ATTEST), the TPMT_SIGNATURE bytes, and the values of the
 *    quoted PCRs as `{"<bank>": {"<index>": "<hex>"}}`.
 *
 * Every message is size-capped and checked field by field; errors name the
 * field. Only the shape is checked here, never what the bytes mean.
 */
import { SigilError } from "../../../spiffe/errors.js";

/** The plugin name: the AttestationData type and the selector type. */
export const TPM_ATTESTOR = "tpm";

/** Largest attestation payload accepted (two public areas and a certificate of a few KiB). */
export const MAX_TPM_PAYLOAD_BYTES = 16 * 1024;
/** Largest challenge accepted. */
export const MAX_TPM_CHALLENGE_BYTES = 4 * 1024;
/** Largest answer accepted (a quote over every PCR of three banks fits well). */
export const MAX_TPM_ANSWER_BYTES = 16 * 1024;

/** Length of the server's nonce in bytes. */
export const TPM_NONCE_BYTES = 32;

/** PCR banks the attestor quotes. */
export type PcrBank = "sha1" | "sha256" | "sha384";
/** Digest length of each bank in bytes. */
export const PCR_DIGEST_BYTES: Readonly<Record<PcrBank, number>> = { sha1: 20, sha256: 32, sha384: 48 };
/** PCR indices a TPM has (a PC client TPM has 24). */
export const MAX_PCR_INDEX = 23;

/** The agent's attestation payload. */
export interface TpmAttestationPayload {
  /** The EK's TPMT_PUBLIC. */
  readonly ekPublic: Uint8Array;
  /** The EK certificate (DER), when the TPM holds one. */
  readonly ekCert?: Uint8Array | undefined;
  /** The AK's TPMT_PUBLIC. */
  readonly akPublic: Uint8Array;
}

/** PCRs of one bank to quote, indices ascending. */
export interface PcrSelectionRequest {
  readonly hash: PcrBank;
  readonly indices: readonly number[];
}

/** The server's challenge. */
export interface TpmChallenge {
  /** TPM2B_ID_OBJECT contents (TPM2B_DIGEST integrity HMAC || encrypted identity), without the outer size. */
  readonly credentialBlob: Uint8Array;
  /** TPM2B_ENCRYPTED_SECRET contents, without the outer size. */
  readonly encryptedSecret: Uint8Array;
  /** 32 fresh bytes; the quote's qualifyingData. */
  readonly nonce: Uint8Array;
  /** The PCRs to quote, banks in this order. */
  readonly pcrs: readonly PcrSelectionRequest[];
}

/** PCR values by bank, then index (decimal string), as lowercase hex. */
export type PcrValues = Readonly<Partial<Record<PcrBank, Readonly<Record<string, string>>>>>;

/** The agent's answer to a challenge. */
export interface TpmAnswer {
  /** The credential TPM2_ActivateCredential recovered. */
  readonly secret: Uint8Array;
  /** TPMS_ATTEST bytes of the quote. */
  readonly attest: Uint8Array;
  /** TPMT_SIGNATURE bytes of the quote. */
  readonly signature: Uint8Array;
  /** The quoted PCRs' values. */
  readonly pcrValues: PcrValues;
}

type MessageName = "attestation payload" | "challenge" | "answer";

function invalid(what: MessageName, message: string): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `tpm: malformed ${what}: ${message}`);
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const HEX_RE = /^(?:[0-9a-f]{2})*$/;

function parseObject(what: MessageName, bytes: Uint8Array, max: number, keys: readonly string[]): Record<string, unknown> {
  if (bytes.byteLength === 0) throw invalid(what, "it is empty");
  if (bytes.byteLength > max) throw invalid(what, `it is larger than ${max} bytes (${bytes.byteLength})`);
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw invalid(what, "it is not a UTF-8 JSON object");
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw invalid(what, "it is not a JSON object");
  const obj = doc as Record<string, unknown>;
  for (const k of Object.keys(obj)) {
    if (!keys.includes(k)) throw invalid(what, `unknown field ${JSON.stringify(k)} (expected ${keys.join(", ")})`);
  }
  return obj;
}

function bytesField(what: MessageName, obj: Record<string, unknown>, key: string, opts: { min?: number; max?: number; exact?: number }): Uint8Array {
  const v = obj[key];
  if (typeof v !== "string") throw invalid(what, `"${key}" is missing or not a base64 string`);
  if (!BASE64_RE.test(v)) throw invalid(what, `"${key}" is not standard base64`);
  const out = new Uint8Array(Buffer.from(v, "base64"));
  if (opts.exact !== undefined && out.byteLength !== opts.exact) throw invalid(what, `"${key}" is ${out.byteLength} bytes, expected ${opts.exact}`);
  if (out.byteLength < (opts.min ?? 1)) throw invalid(what, `"${key}" is empty`);
  if (opts.max !== undefined && out.byteLength > opts.max) throw invalid(what, `"${key}" is longer than ${opts.max} bytes (${out.byteLength})`);
  return out;
}

function bank(what: MessageName, field: string, v: unknown): PcrBank {
  if (v === "sha1" || v === "sha256" || v === "sha384") return v;
  throw invalid(what, `${field} is ${JSON.stringify(v)}, expected "sha1", "sha256" or "sha384"`);
}

/** Encodes the agent's attestation payload. */
export function encodeTpmPayload(p: TpmAttestationPayload): Uint8Array {
  const doc: Record<string, string> = { ekPublic: b64(p.ekPublic) };
  if (p.ekCert !== undefined) doc.ekCert = b64(p.ekCert);
  doc.akPublic = b64(p.akPublic);
  return Buffer.from(JSON.stringify(doc), "utf8");
}

/**
 * Decodes an attestation payload and checks its shape.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the field
 */
export function parseTpmPayload(bytes: Uint8Array): TpmAttestationPayload {
  const what = "attestation payload";
  const obj = parseObject(what, bytes, MAX_TPM_PAYLOAD_BYTES, ["ekPublic", "ekCert", "akPublic"]);
  const ekPublic = bytesField(what, obj, "ekPublic", { max: 1024 });
  const akPublic = bytesField(what, obj, "akPublic", { max: 1024 });
  const ekCert = obj.ekCert === undefined || obj.ekCert === null ? undefined : bytesField(what, obj, "ekCert", { max: 8192 });
  return { ekPublic, ekCert, akPublic };
}

/** Encodes the server's challenge. */
export function encodeTpmChallenge(c: TpmChallenge): Uint8Array {
  return Buffer.from(
    JSON.stringify({
      credentialBlob: b64(c.credentialBlob),
      encryptedSecret: b64(c.encryptedSecret),
      nonce: b64(c.nonce),
      pcrs: c.pcrs.map((s) => ({ hash: s.hash, indices: [...s.indices] })),
    }),
    "utf8",
  );
}

/**
 * Decodes a challenge and checks its shape: banks known and not repeated,
 * indices integers 0-23 ascending without repeats.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the field
 */
export function parseTpmChallenge(bytes: Uint8Array): TpmChallenge {
  const what = "challenge";
  const obj = parseObject(what, bytes, MAX_TPM_CHALLENGE_BYTES, ["credentialBlob", "encryptedSecret", "nonce", "pcrs"]);
  const credentialBlob = bytesField(what, obj, "credentialBlob", { max: 1024 });
  const encryptedSecret = bytesField(what, obj, "encryptedSecret", { max: 1024 });
  const nonce = bytesField(what, obj, "nonce", { exact: TPM_NONCE_BYTES });
  const rawPcrs = obj.pcrs;
  if (!Array.isArray(rawPcrs)) throw invalid(what, '"pcrs" is missing or not an array');
  if (rawPcrs.length > 3) throw invalid(what, `"pcrs" lists ${rawPcrs.length} banks, at most 3`);
  const seen = new Set<PcrBank>();
  const pcrs = rawPcrs.map((entry: unknown, i): PcrSelectionRequest => {
    const field = `"pcrs[${i}]"`;
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) throw invalid(what, `${field} is not an object {"hash", "indices"}`);
    const e = entry as Record<string, unknown>;
    for (const k of Object.keys(e)) if (k !== "hash" && k !== "indices") throw invalid(what, `${field} has unknown field ${JSON.stringify(k)}`);
    const hash = bank(what, `${field}.hash`, e.hash);
    if (seen.has(hash)) throw invalid(what, `${field}.hash ${hash} is listed twice`);
    seen.add(hash);
    const indices = pcrIndices(what, `${field}.indices`, e.indices);
    return { hash, indices };
  });
  return { credentialBlob, encryptedSecret, nonce, pcrs };
}

function pcrIndices(what: MessageName, field: string, v: unknown): number[] {
  if (!Array.isArray(v) || v.length === 0) throw invalid(what, `${field} is missing or not a non-empty array`);
  let last = -1;
  for (const [j, n] of v.entries()) {
    if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > MAX_PCR_INDEX) throw invalid(what, `${field}[${j}] is not a PCR index 0-${MAX_PCR_INDEX}`);
    if (n <= last) throw invalid(what, `${field} is not ascending without repeats`);
    last = n;
  }
  return v as number[];
}

/** Encodes the agent's answer. */
export function encodeTpmAnswer(a: TpmAnswer): Uint8Array {
  return Buffer.from(
    JSON.stringify({ secret: b64(a.secret), attest: b64(a.attest), signature: b64(a.signature), pcrValues: a.pcrValues }),
    "utf8",
  );
}

/**
 * Decodes an answer and checks its shape: PCR values are lowercase hex of
 * their bank's digest length, indices 0-23.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the field
 */
export function parseTpmAnswer(bytes: Uint8Array): TpmAnswer {
  const what = "answer";
  const obj = parseObject(what, bytes, MAX_TPM_ANSWER_BYTES, ["secret", "attest", "signature", "pcrValues"]);
  const secret = bytesField(what, obj, "secret", { max: 64 });
  const attest = bytesField(what, obj, "attest", { max: 1024 });
  const signature = bytesField(what, obj, "signature", { max: 1024 });
  const raw = obj.pcrValues;
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw invalid(what, '"pcrValues" is missing or not an object');
  const pcrValues: Partial<Record<PcrBank, Record<string, string>>> = {};
  for (const [bankName, values] of Object.entries(raw as Record<string, unknown>)) {
    const b = bank(what, `"pcrValues" key ${JSON.stringify(bankName)}`, bankName);
    const field = `"pcrValues.${b}"`;
    if (typeof values !== "object" || values === null || Array.isArray(values)) throw invalid(what, `${field} is not an object {"<index>": "<hex>"}`);
    const out: Record<string, string> = {};
    for (const [index, hex] of Object.entries(values as Record<string, unknown>)) {
      if (!/^(?:[0-9]|1[0-9]|2[0-3])$/.test(index)) throw invalid(what, `${field} key ${JSON.stringify(index)} is not a PCR index 0-${MAX_PCR_INDEX}`);
      if (typeof hex !== "string" || !HEX_RE.test(hex) || hex.length !== PCR_DIGEST_BYTES[b] * 2) {
        throw invalid(what, `${field}.${index} is not ${PCR_DIGEST_BYTES[b] * 2} lowercase hex digits`);
      }
      out[index] = hex;
    }
    pcrValues[b] = out;
  }
  return { secret, attest, signature, pcrValues };
}
