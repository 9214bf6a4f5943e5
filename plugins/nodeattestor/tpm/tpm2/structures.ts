/**
 * TPM 2.0 structures that node attestation exchanges (TPM 2.0 Library, Part 2):
 * TPMT_PUBLIC (EK and AK public areas), object names, TPMS_ATTEST (quotes),
 * TPMT_SIGNATURE and TPML_PCR_SELECTION, with the constants they use.
 * Decoders read untrusted bytes: every size is bounded and every structure
 * must be consumed exactly.
 */
import { createHash, createPublicKey, type KeyObject } from "node:crypto";
import { SigilError } from "../../../../spiffe/errors.js";
import { TpmReader, TpmWriter } from "./marshal.js";

/** TPM_ALG_ID values (Part 2, table 9) used here. */
export const TPM_ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  KEYEDHASH: 0x0008,
  XOR: 0x000a,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  SM2: 0x001b,
  ECSCHNORR: 0x001c,
  ECMQV: 0x001d,
  KDF1_SP800_56A: 0x0020,
  KDF2: 0x0021,
  KDF1_SP800_108: 0x0022,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  CFB: 0x0043,
} as const;

/** TPM_ECC_CURVE values used here. */
export const TPM_ECC = {
  NIST_P256: 0x0003,
  NIST_P384: 0x0004,
} as const;

/** TPMA_OBJECT bits (Part 2, table 31). */
export const TPMA_OBJECT = {
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
} as const;

/** TPM_GENERATED_VALUE: the magic every TPM-produced TPMS_ATTEST starts with ("\xffTCG"). */
export const TPM_GENERATED_VALUE = 0xff544347;

/** TPM_ST values for attestation structures. */
export const TPM_ST = {
  ATTEST_CERTIFY: 0x8017,
  ATTEST_QUOTE: 0x8018,
  ATTEST_CREATION: 0x801a,
} as const;

/** Hash algorithms node attestation supports, by their Node.js / config name. */
export type TpmHashName = "sha1" | "sha256" | "sha384" | "sha512";

const HASHES: ReadonlyArray<readonly [TpmHashName, number, number]> = [
  ["sha1", TPM_ALG.SHA1, 20],
  ["sha256", TPM_ALG.SHA256, 32],
  ["sha384", TPM_ALG.SHA384, 48],
  ["sha512", TPM_ALG.SHA512, 64],
];

/** The name (`sha256`) of a TPM hash algorithm ID, or undefined for one not supported. */
export function hashAlgName(alg: number): TpmHashName | undefined {
  return HASHES.find((h) => h[1] === alg)?.[0];
}

/** The TPM_ALG_ID of a hash name. */
export function hashAlgId(name: TpmHashName): number {
  return (HASHES.find((h) => h[0] === name) as readonly [TpmHashName, number, number])[1];
}

/** The digest size in bytes of a TPM hash algorithm ID, or undefined for one not supported. */
export function hashAlgSize(alg: number): number | undefined {
  return HASHES.find((h) => h[1] === alg)?.[2];
}

/** TPMT_SYM_DEF_OBJECT: `algorithm` TPM_ALG.NULL has no key size or mode. */
export interface TpmSymDef {
  readonly algorithm: number;
  readonly keyBits?: number;
  readonly mode?: number;
}

/** An asymmetric scheme (TPMT_RSA_SCHEME, TPMT_ECC_SCHEME, TPMT_KDF_SCHEME): TPM_ALG.NULL has no hash. */
export interface TpmScheme {
  readonly scheme: number;
  readonly hashAlg?: number;
  /** ECDAA only: the commit count. */
  readonly count?: number;
}

/** A TPMT_PUBLIC for an RSA or ECC key, as sent to the TPM (a template) or read back. */
export interface TpmPublicArea {
  readonly type: "rsa" | "ecc";
  /** TPM_ALG_ID of the hash for the object's name. */
  readonly nameAlg: number;
  /** TPMA_OBJECT bits. */
  readonly objectAttributes: number;
  readonly authPolicy: Uint8Array;
  /** Symmetric algorithm for a storage (restricted decrypt) key; NULL otherwise. */
  readonly symmetric: TpmSymDef;
  /** Signing or decryption scheme; NULL lets the caller choose per command. */
  readonly scheme: TpmScheme;
  readonly rsa?: {
    readonly keyBits: number;
    /** As the TPM holds it: 0 means the default, 65537. */
    readonly exponent: number;
    readonly modulus: Uint8Array;
  };
  readonly ecc?: {
    /** TPM_ECC_CURVE. */
    readonly curve: number;
    readonly kdf: TpmScheme;
    readonly x: Uint8Array;
    readonly y: Uint8Array;
  };
}

/** A decoded TPMT_PUBLIC together with the exact bytes it came from (what the name hashes). */
export interface TpmPublic extends TpmPublicArea {
  readonly raw: Uint8Array;
}

/** Largest RSA modulus / ECC coordinate / policy digest accepted when decoding. */
const MAX_RSA_BYTES = 512;
const MAX_ECC_BYTES = 128;
const MAX_DIGEST_BYTES = 64;

function writeSymDef(w: TpmWriter, s: TpmSymDef): void {
  w.u16(s.algorithm);
  if (s.algorithm === TPM_ALG.NULL) return;
  w.u16(s.keyBits ?? 0).u16(s.mode ?? TPM_ALG.NULL);
}

function readSymDef(r: TpmReader, field: string): TpmSymDef {
  const algorithm = r.u16(`${field}.algorithm`);
  if (algorithm === TPM_ALG.NULL) return { algorithm };
  return { algorithm, keyBits: r.u16(`${field}.keyBits`), mode: r.u16(`${field}.mode`) };
}

function writeScheme(w: TpmWriter, s: TpmScheme): void {
  w.u16(s.scheme);
  // RSAES carries no details; NULL carries nothing.
  if (s.scheme === TPM_ALG.NULL || s.scheme === TPM_ALG.RSAES) return;
  w.u16(s.hashAlg ?? TPM_ALG.NULL);
  if (s.scheme === TPM_ALG.ECDAA) w.u16(s.count ?? 0);
}

function readScheme(r: TpmReader, field: string): TpmScheme {
  const scheme = r.u16(`${field}.scheme`);
  if (scheme === TPM_ALG.NULL || scheme === TPM_ALG.RSAES) return { scheme };
  const hashAlg = r.u16(`${field}.hashAlg`);
  if (scheme === TPM_ALG.ECDAA) return { scheme, hashAlg, count: r.u16(`${field}.count`) };
  return { scheme, hashAlg };
}

/** Encodes a TPMT_PUBLIC (without the TPM2B_PUBLIC size). */
export function encodePublic(p: TpmPublicArea): Uint8Array {
  const w = new TpmWriter();
  writePublic(w, p);
  return w.finish();
}

/** Writes a TPMT_PUBLIC into `w`. */
export function writePublic(w: TpmWriter, p: TpmPublicArea): void {
  w.u16(p.type === "rsa" ? TPM_ALG.RSA : TPM_ALG.ECC)
    .u16(p.nameAlg)
    .u32(p.objectAttributes >>> 0)
    .tpm2b(p.authPolicy);
  writeSymDef(w, p.symmetric);
  writeScheme(w, p.scheme);
  if (p.type === "rsa") {
    if (p.rsa === undefined) throw new SigilError("ERR_INVALID_ARGUMENT", "tpm: an rsa TPMT_PUBLIC needs rsa parameters");
    w.u16(p.rsa.keyBits).u32(p.rsa.exponent).tpm2b(p.rsa.modulus);
  } else {
    if (p.ecc === undefined) throw new SigilError("ERR_INVALID_ARGUMENT", "tpm: an ecc TPMT_PUBLIC needs ecc parameters");
    w.u16(p.ecc.curve);
    writeScheme(w, p.ecc.kdf);
    w.tpm2b(p.ecc.x).tpm2b(p.ecc.y);
  }
}

/**
 * Decodes a TPMT_PUBLIC (without the TPM2B_PUBLIC size) of an RSA or ECC
 * key; other object types are refused. All of `raw` must be the structure.
 */
export function decodePublic(raw: Uint8Array): TpmPublic {
  const r = new TpmReader(raw, "TPMT_PUBLIC");
  const p = readPublic(r);
  r.end();
  return { ...p, raw: raw.slice() };
}

function readPublic(r: TpmReader): TpmPublicArea {
  const typeId = r.u16("type");
  if (typeId !== TPM_ALG.RSA && typeId !== TPM_ALG.ECC) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: TPMT_PUBLIC type 0x${typeId.toString(16)} is not an RSA or ECC key`);
  }
  const nameAlg = r.u16("nameAlg");
  const objectAttributes = r.u32("objectAttributes");
  const authPolicy = r.tpm2b("authPolicy", MAX_DIGEST_BYTES);
  const symmetric = readSymDef(r, "parameters.symmetric");
  const scheme = readScheme(r, "parameters.scheme");
  if (typeId === TPM_ALG.RSA) {
    const keyBits = r.u16("parameters.keyBits");
    const exponent = r.u32("parameters.exponent");
    const modulus = r.tpm2b("unique.rsa", MAX_RSA_BYTES);
    return { type: "rsa", nameAlg, objectAttributes, authPolicy, symmetric, scheme, rsa: { keyBits, exponent, modulus } };
  }
  const curve = r.u16("parameters.curveID");
  const kdf = readScheme(r, "parameters.kdf");
  const x = r.tpm2b("unique.ecc.x", MAX_ECC_BYTES);
  const y = r.tpm2b("unique.ecc.y", MAX_ECC_BYTES);
  return { type: "ecc", nameAlg, objectAttributes, authPolicy, symmetric, scheme, ecc: { curve, kdf, x, y } };
}

/** Reads a TPM2B_PUBLIC from `r` (as in command responses) and decodes it. */
export function readPublic2b(r: TpmReader, field: string): TpmPublic {
  const raw = r.tpm2b(field);
  return decodePublic(raw);
}

const CURVES: ReadonlyArray<readonly [number, string, number]> = [
  [TPM_ECC.NIST_P256, "P-256", 32],
  [TPM_ECC.NIST_P384, "P-384", 48],
];

/** The coordinate size in bytes of a TPM_ECC_CURVE, or undefined for a curve not supported. */
export function eccCurveSize(curve: number): number | undefined {
  return CURVES.find((c) => c[0] === curve)?.[2];
}

/**
 * The public key of an RSA or ECC (P-256, P-384) public area as a KeyObject.
 * Throws ERR_KEY_UNSUPPORTED for other curves and malformed keys.
 */
export function publicToKeyObject(p: TpmPublicArea): KeyObject {
  try {
    if (p.type === "rsa") {
      if (p.rsa === undefined || p.rsa.modulus.length === 0) throw new Error("no RSA modulus");
      const e = p.rsa.exponent === 0 ? 65537 : p.rsa.exponent;
      const eBytes = Buffer.alloc(4);
      eBytes.writeUInt32BE(e);
      let i = 0;
      while (i < 3 && eBytes[i] === 0) i++;
      return createPublicKey({
        key: { kty: "RSA", n: Buffer.from(p.rsa.modulus).toString("base64url"), e: eBytes.subarray(i).toString("base64url") },
        format: "jwk",
      });
    }
    if (p.ecc === undefined) throw new Error("no ECC point");
    const curve = CURVES.find((c) => c[0] === p.ecc?.curve);
    if (curve === undefined) throw new Error(`ECC curve 0x${p.ecc.curve.toString(16)} is not supported (P-256 and P-384 are)`);
    const [, crv, size] = curve;
    return createPublicKey({
      key: { kty: "EC", crv, x: leftPad(p.ecc.x, size).toString("base64url"), y: leftPad(p.ecc.y, size).toString("base64url") },
      format: "jwk",
    });
  } catch (e) {
    throw new SigilError("ERR_KEY_UNSUPPORTED", `tpm: the ${p.type} public area is not a usable public key: ${(e as Error).message}`, { cause: e });
  }
}

function leftPad(b: Uint8Array, size: number): Buffer {
  if (b.length > size) throw new Error(`coordinate of ${b.length} bytes is longer than ${size}`);
  const out = Buffer.alloc(size);
  out.set(b, size - b.length);
  return out;
}

/**
 * The TPM name of an object: nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC), from
 * the exact TPMT_PUBLIC bytes. Throws for an unsupported nameAlg.
 */
export function objectName(rawPublic: Uint8Array): Uint8Array {
  if (rawPublic.length < 4) throw new SigilError("ERR_INVALID_ARGUMENT", "tpm: TPMT_PUBLIC is too short to have a nameAlg");
  const nameAlg = (rawPublic[2] as number) * 256 + (rawPublic[3] as number);
  const hash = hashAlgName(nameAlg);
  if (hash === undefined) throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: TPMT_PUBLIC nameAlg 0x${nameAlg.toString(16)} is not a supported hash`);
  const digest = createHash(hash).update(rawPublic).digest();
  const out = new Uint8Array(2 + digest.length);
  out[0] = nameAlg >>> 8;
  out[1] = nameAlg & 0xff;
  out.set(digest, 2);
  return out;
}

/** One bank of a TPML_PCR_SELECTION: a hash algorithm and the PCR indices selected in it, ascending. */
export interface PcrSelection {
  /** TPM_ALG_ID of the bank. */
  readonly hash: number;
  readonly indices: readonly number[];
}

/** PCR indices above this are refused (TPMs have 24; the select bitmap allows 8 × 255). */
const MAX_PCR_INDEX = 255;

/** Writes a TPML_PCR_SELECTION (at least 3 select bytes per bank, as TPMs expect). */
export function writePcrSelection(w: TpmWriter, sel: readonly PcrSelection[]): void {
  w.u32(sel.length);
  for (const s of sel) {
    let max = 23;
    for (const i of s.indices) {
      if (!Number.isInteger(i) || i < 0 || i > MAX_PCR_INDEX) throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: PCR index ${i} is out of range`);
      if (i > max) max = i;
    }
    const bitmap = new Uint8Array(Math.ceil((max + 1) / 8));
    for (const i of s.indices) bitmap[i >>> 3] = (bitmap[i >>> 3] as number) | (1 << (i & 7));
    w.u16(s.hash).u8(bitmap.length).bytes(bitmap);
  }
}

/** Encodes a TPML_PCR_SELECTION. */
export function encodePcrSelection(sel: readonly PcrSelection[]): Uint8Array {
  const w = new TpmWriter();
  writePcrSelection(w, sel);
  return w.finish();
}

/** Banks above this in one TPML_PCR_SELECTION are refused (HASH_COUNT on real TPMs is small). */
const MAX_PCR_BANKS = 16;

/** Reads a TPML_PCR_SELECTION. */
export function readPcrSelection(r: TpmReader, field: string): PcrSelection[] {
  const count = r.u32(`${field}.count`);
  if (count > MAX_PCR_BANKS) throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: ${field} has ${count} banks, more than ${MAX_PCR_BANKS}`);
  const out: PcrSelection[] = [];
  for (let b = 0; b < count; b++) {
    const hash = r.u16(`${field}[${b}].hash`);
    const size = r.u8(`${field}[${b}].sizeofSelect`);
    const bitmap = r.bytes(size, `${field}[${b}].pcrSelect`);
    const indices: number[] = [];
    bitmap.forEach((byte, i) => {
      for (let bit = 0; bit < 8; bit++) if (byte & (1 << bit)) indices.push(i * 8 + bit);
    });
    out.push({ hash, indices });
  }
  return out;
}

/** Decodes a TPML_PCR_SELECTION. */
export function decodePcrSelection(bytes: Uint8Array): PcrSelection[] {
  const r = new TpmReader(bytes, "TPML_PCR_SELECTION");
  const v = readPcrSelection(r, "pcrSelections");
  r.end();
  return v;
}

/** A decoded TPMS_ATTEST. `quote` is present when `type` is TPM_ST.ATTEST_QUOTE. */
export interface TpmAttest {
  readonly magic: number;
  /** TPM_ST_ATTEST_* value. */
  readonly type: number;
  readonly qualifiedSigner: Uint8Array;
  /** The caller's qualifyingData (the server's nonce for a quote). */
  readonly extraData: Uint8Array;
  readonly clockInfo: { readonly clock: bigint; readonly resetCount: number; readonly restartCount: number; readonly safe: boolean };
  readonly firmwareVersion: bigint;
  readonly quote?: { readonly pcrSelect: PcrSelection[]; readonly pcrDigest: Uint8Array };
}

/**
 * Decodes a TPMS_ATTEST (the content of a TPM2B_ATTEST). For a quote the
 * TPMS_QUOTE_INFO is decoded and nothing may follow it; other attestation
 * types keep their `attested` part undecoded.
 */
export function decodeAttest(bytes: Uint8Array): TpmAttest {
  const r = new TpmReader(bytes, "TPMS_ATTEST");
  const magic = r.u32("magic");
  const type = r.u16("type");
  const qualifiedSigner = r.tpm2b("qualifiedSigner", 2 + MAX_DIGEST_BYTES);
  const extraData = r.tpm2b("extraData", MAX_DIGEST_BYTES);
  const clock = r.u64("clockInfo.clock");
  const resetCount = r.u32("clockInfo.resetCount");
  const restartCount = r.u32("clockInfo.restartCount");
  const safe = r.u8("clockInfo.safe") !== 0;
  const firmwareVersion = r.u64("firmwareVersion");
  const base = { magic, type, qualifiedSigner, extraData, clockInfo: { clock, resetCount, restartCount, safe }, firmwareVersion };
  if (type !== TPM_ST.ATTEST_QUOTE) return base;
  const pcrSelect = readPcrSelection(r, "attested.quote.pcrSelect");
  const pcrDigest = r.tpm2b("attested.quote.pcrDigest", MAX_DIGEST_BYTES);
  r.end();
  return { ...base, quote: { pcrSelect, pcrDigest } };
}

/** Encodes a TPMS_ATTEST quote (tests and tools; a TPM makes the real ones). */
export function encodeQuoteAttest(a: TpmAttest & { quote: NonNullable<TpmAttest["quote"]> }): Uint8Array {
  const w = new TpmWriter()
    .u32(a.magic)
    .u16(a.type)
    .tpm2b(a.qualifiedSigner)
    .tpm2b(a.extraData)
    .u64(a.clockInfo.clock)
    .u32(a.clockInfo.resetCount)
    .u32(a.clockInfo.restartCount)
    .u8(a.clockInfo.safe ? 1 : 0)
    .u64(a.firmwareVersion);
  writePcrSelection(w, a.quote.pcrSelect);
  w.tpm2b(a.quote.pcrDigest);
  return w.finish();
}

/** A decoded TPMT_SIGNATURE: RSASSA / RSAPSS carry `rsa`, ECDSA carries `ecc` (r and s as the TPM sent them). */
export interface TpmSignature {
  /** TPM_ALG.RSASSA, RSAPSS or ECDSA. */
  readonly sigAlg: number;
  /** TPM_ALG_ID of the digest signed. */
  readonly hash: number;
  readonly rsa?: Uint8Array;
  readonly ecc?: { readonly r: Uint8Array; readonly s: Uint8Array };
}

/** Decodes a TPMT_SIGNATURE; only RSASSA, RSAPSS and ECDSA signatures are accepted. */
export function decodeSignature(bytes: Uint8Array): TpmSignature {
  const r = new TpmReader(bytes, "TPMT_SIGNATURE");
  const sig = readSignature(r);
  r.end();
  return sig;
}

/** Reads a TPMT_SIGNATURE from `r`. */
export function readSignature(r: TpmReader): TpmSignature {
  const sigAlg = r.u16("sigAlg");
  if (sigAlg === TPM_ALG.RSASSA || sigAlg === TPM_ALG.RSAPSS) {
    const hash = r.u16("signature.hash");
    return { sigAlg, hash, rsa: r.tpm2b("signature.sig", MAX_RSA_BYTES) };
  }
  if (sigAlg === TPM_ALG.ECDSA) {
    const hash = r.u16("signature.hash");
    const sr = r.tpm2b("signature.signatureR", MAX_ECC_BYTES);
    const ss = r.tpm2b("signature.signatureS", MAX_ECC_BYTES);
    return { sigAlg, hash, ecc: { r: sr, s: ss } };
  }
  throw new SigilError("ERR_INVALID_ARGUMENT", `tpm: TPMT_SIGNATURE sigAlg 0x${sigAlg.toString(16)} is not RSASSA, RSAPSS or ECDSA`);
}

/** Encodes a TPMT_SIGNATURE (tests and tools). */
export function encodeSignature(s: TpmSignature): Uint8Array {
  const w = new TpmWriter().u16(s.sigAlg).u16(s.hash);
  if (s.sigAlg === TPM_ALG.ECDSA) {
    if (s.ecc === undefined) throw new SigilError("ERR_INVALID_ARGUMENT", "tpm: an ECDSA signature needs r and s");
    w.tpm2b(s.ecc.r).tpm2b(s.ecc.s);
  } else {
    if (s.rsa === undefined) throw new SigilError("ERR_INVALID_ARGUMENT", "tpm: an RSA signature needs its bytes");
    w.tpm2b(s.rsa);
  }
  return w.finish();
}
