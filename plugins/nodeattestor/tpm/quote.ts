/**
 * Checks a TPM2_Quote the agent returns: it is a TPM-made quote
 * (TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE) signed by the AK, over exactly
 * the PCRs the server asked for, qualified with this attempt's nonce, and the
 * PCR values the agent reports are the ones the TPM digested. Then the
 * values are held against the PCR policy.
 */
import { createHash, timingSafeEqual, verify, type KeyObject } from "node:crypto";
import { SigilError } from "../../../spiffe/errors.js";
import type { PcrBank, PcrSelectionRequest, PcrValues } from "./payload.js";
import { decodeAttest, decodeSignature, hashAlgId, TPM_ALG, TPM_GENERATED_VALUE, TPM_ST, type TpmAttest, type TpmPublic, type TpmSignature } from "./tpm2/structures.js";

/** Required PCR values: bank → index (decimal string) → lowercase hex. */
export type PcrPolicy = { readonly [B in PcrBank]?: Readonly<Record<string, string>> | undefined };

/** One quoted PCR, verified. */
export interface QuotedPcr {
  readonly bank: PcrBank;
  readonly index: number;
  /** Lowercase hex. */
  readonly value: string;
}

/** What {@link verifyQuote} checks. */
export interface QuoteInput {
  /** The AK's public area (already checked by checkAkPublic). */
  readonly ak: TpmPublic;
  readonly akKey: KeyObject;
  /** TPMS_ATTEST bytes. */
  readonly attest: Uint8Array;
  /** TPMT_SIGNATURE bytes. */
  readonly signature: Uint8Array;
  /** This attempt's nonce. */
  readonly nonce: Uint8Array;
  /** The PCRs the challenge asked for. */
  readonly requested: readonly PcrSelectionRequest[];
  /** The values the agent reports. */
  readonly pcrValues: PcrValues;
  readonly policy: PcrPolicy;
}

function denied(message: string): SigilError {
  return new SigilError("ERR_PERMISSION_DENIED", `tpm: ${message}`);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && timingSafeEqual(a, b);
}

function checkSignature(input: QuoteInput): void {
  let sig: TpmSignature;
  try {
    sig = decodeSignature(input.signature);
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: answer "signature": ${(e as Error).message}`, { cause: e });
  }
  if (sig.hash !== TPM_ALG.SHA256) throw denied("the quote signature's hash is not SHA-256");
  let ok: boolean;
  if (input.ak.type === "rsa") {
    if (sig.sigAlg !== TPM_ALG.RSASSA || sig.rsa === undefined) throw denied("the quote signature is not RSASSA, the AK's scheme");
    ok = verify("sha256", input.attest, input.akKey, sig.rsa);
  } else {
    if (sig.sigAlg !== TPM_ALG.ECDSA || sig.ecc === undefined) throw denied("the quote signature is not ECDSA, the AK's scheme");
    const { r, s } = sig.ecc;
    if (r.byteLength > 32 || s.byteLength > 32) throw denied("the quote signature's ECDSA r or s is longer than 32 bytes");
    const p1363 = Buffer.alloc(64);
    p1363.set(r, 32 - r.byteLength);
    p1363.set(s, 64 - s.byteLength);
    ok = verify("sha256", input.attest, { key: input.akKey, dsaEncoding: "ieee-p1363" }, p1363);
  }
  if (!ok) throw denied("the quote signature does not verify with the AK");
}

/**
 * Verifies the quote and returns the quoted PCRs in selection order.
 *
 * @throws SigilError `ERR_PERMISSION_DENIED` naming the check that failed
 *   (`ERR_INVALID_ARGUMENT` for undecodable bytes)
 */
export function verifyQuote(input: QuoteInput): QuotedPcr[] {
  // The signature first: nothing in the attest structure is believed before it.
  checkSignature(input);
  let attest: TpmAttest;
  try {
    attest = decodeAttest(input.attest);
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: answer "attest": ${(e as Error).message}`, { cause: e });
  }
  if (attest.magic !== TPM_GENERATED_VALUE) throw denied("the quote's magic is not TPM_GENERATED_VALUE (not made by a TPM)");
  if (attest.type !== TPM_ST.ATTEST_QUOTE || attest.quote === undefined) throw denied(`the attestation is of type 0x${attest.type.toString(16)}, not a quote`);
  if (!sameBytes(attest.extraData, input.nonce)) throw denied("the quote is not qualified with this attempt's nonce (a replayed or stale quote)");

  const sel = attest.quote.pcrSelect.filter((s) => s.indices.length > 0);
  const want = input.requested;
  const sameSelection =
    sel.length === want.length &&
    want.every((w, i) => {
      const s = sel[i];
      return s !== undefined && s.hash === hashAlgId(w.hash) && s.indices.length === w.indices.length && s.indices.every((n, j) => n === w.indices[j]);
    });
  if (!sameSelection) throw denied("the quote covers other PCRs than the ones asked for");

  const quoted: QuotedPcr[] = [];
  const digest = createHash("sha256"); // the AK's signing hash, which TPM2_Quote digests the PCRs with
  for (const w of want) {
    const reported = input.pcrValues[w.hash] ?? {};
    const extra = Object.keys(reported).filter((k) => !w.indices.includes(Number(k)));
    if (extra.length > 0) throw denied(`the answer reports ${w.hash} PCRs ${extra.join(", ")}, which were not quoted`);
    for (const index of w.indices) {
      const value = reported[String(index)];
      if (value === undefined) throw denied(`the answer does not report the value of ${w.hash} PCR ${index}`);
      digest.update(Buffer.from(value, "hex"));
      quoted.push({ bank: w.hash, index, value });
    }
  }
  for (const bank of Object.keys(input.pcrValues)) {
    if (!want.some((w) => w.hash === bank)) throw denied(`the answer reports ${bank} PCRs, which were not quoted`);
  }
  if (!sameBytes(digest.digest(), attest.quote.pcrDigest)) throw denied("the reported PCR values do not match the quote's PCR digest");

  for (const [bank, values] of Object.entries(input.policy) as [PcrBank, Record<string, string> | undefined][]) {
    for (const [index, expected] of Object.entries(values ?? {})) {
      const got = quoted.find((q) => q.bank === bank && q.index === Number(index));
      if (got === undefined) throw denied(`${bank} PCR ${index} of the PCR policy was not quoted`);
      if (got.value !== expected.toLowerCase()) throw denied(`${bank} PCR ${index} is ${got.value}, but the PCR policy requires ${expected.toLowerCase()}`);
    }
  }
  return quoted;
}
