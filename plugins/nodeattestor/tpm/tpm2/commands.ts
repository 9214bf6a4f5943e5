/**
 * TPM 2.0 command framing (TPM 2.0 Library, Part 1 §18 and Part 3): the
 * command header, handle area, authorization area and parameters, the
 * response header, and TPM_RC decoding so that a failure names the command
 * and says what the TPM refused.
 */
import { SigilError } from "../../../../spiffe/errors.js";
import { TpmReader, TpmWriter } from "./marshal.js";

/** TPM_CC values of the commands the client sends. */
export const TPM_CC = {
  NV_Read: 0x0000014e,
  PolicySecret: 0x00000151,
  Create: 0x00000153,
  Load: 0x00000157,
  Quote: 0x00000158,
  ActivateCredential: 0x00000147,
  CreatePrimary: 0x00000131,
  FlushContext: 0x00000165,
  NV_ReadPublic: 0x00000169,
  ReadPublic: 0x00000173,
  StartAuthSession: 0x00000176,
  GetCapability: 0x0000017a,
  PCR_Read: 0x0000017e,
} as const;

/** The name of a command code, `TPM2_Quote` (or its hex value when unknown). */
export function commandName(cc: number): string {
  for (const [name, code] of Object.entries(TPM_CC)) if (code === cc) return `TPM2_${name}`;
  return `TPM2 command 0x${cc.toString(16).padStart(8, "0")}`;
}

/** TPM_ST command tags. */
export const TPM_ST_NO_SESSIONS = 0x8001;
/** Tag of a command or response with an authorization area. */
export const TPM_ST_SESSIONS = 0x8002;

/** Permanent handles (TPM_RH / TPM_RS) used here. */
export const TPM_RH = {
  OWNER: 0x40000001,
  NULL: 0x40000007,
  /** TPM_RS_PW: the password authorization pseudo-session. */
  PW: 0x40000009,
  ENDORSEMENT: 0x4000000b,
  PLATFORM: 0x4000000c,
} as const;

/** TPM_HT: the top byte of a handle. */
export const TPM_HT = {
  NV_INDEX: 0x01,
  HMAC_SESSION: 0x02,
  POLICY_SESSION: 0x03,
  TRANSIENT: 0x80,
  PERSISTENT: 0x81,
} as const;

/** Size of a command or response header: tag (2), size (4), code (4). */
export const TPM_HEADER_BYTES = 10;

/** One entry of a command's authorization area (TPMS_AUTH_COMMAND). */
export interface TpmAuth {
  readonly sessionHandle: number;
  readonly nonce: Uint8Array;
  /** TPMA_SESSION bits; 0x01 is continueSession. */
  readonly attributes: number;
  /** The HMAC, or the password for TPM_RS_PW. */
  readonly hmac: Uint8Array;
}

/** TPMA_SESSION continueSession: the session survives the command. */
export const TPMA_SESSION_CONTINUE = 0x01;

/** A password authorization (TPM_RS_PW); empty by default, as a fresh TPM's hierarchies and keys have. */
export function passwordAuth(password: Uint8Array = new Uint8Array(0)): TpmAuth {
  return { sessionHandle: TPM_RH.PW, nonce: new Uint8Array(0), attributes: 0, hmac: password };
}

/**
 * Authorization with a policy session whose policy is already satisfied
 * (unbound, unsalted, no PolicyAuthValue/PolicyPassword, so no HMAC). The
 * session is not continued: the TPM flushes it after the command.
 */
export function policyAuth(sessionHandle: number): TpmAuth {
  return { sessionHandle, nonce: new Uint8Array(0), attributes: 0, hmac: new Uint8Array(0) };
}

/** Marshals a command: header, handles, authorization area when `auths` is non-empty, parameters. */
export function buildCommand(cc: number, handles: readonly number[], auths: readonly TpmAuth[], params: Uint8Array): Uint8Array {
  const body = new TpmWriter();
  for (const h of handles) body.u32(h);
  if (auths.length > 0) {
    const area = new TpmWriter();
    for (const a of auths) area.u32(a.sessionHandle).tpm2b(a.nonce).u8(a.attributes).tpm2b(a.hmac);
    body.u32(area.length).bytes(area.finish());
  }
  body.bytes(params);
  const w = new TpmWriter()
    .u16(auths.length > 0 ? TPM_ST_SESSIONS : TPM_ST_NO_SESSIONS)
    .u32(TPM_HEADER_BYTES + body.length)
    .u32(cc)
    .bytes(body.finish());
  return w.finish();
}

/** What a successful response carries: its output handles and a reader positioned at its parameters. */
export interface TpmResponse {
  readonly handles: number[];
  /** Reads exactly the response parameters (the authorization area is cut off). */
  readonly params: TpmReader;
}

/**
 * Parses a response to `cc`: checks the header, throws a {@link TpmCommandError}
 * for a non-zero TPM_RC, and splits off `outHandles` handles and (for a
 * command sent with sessions) the authorization area.
 */
export function parseResponse(cc: number, bytes: Uint8Array, outHandles: number, withSessions: boolean): TpmResponse {
  const what = `${commandName(cc)} response`;
  const r = new TpmReader(bytes, what);
  const tag = r.u16("tag");
  const size = r.u32("responseSize");
  const rc = r.u32("responseCode");
  if (size !== bytes.length) throw new SigilError("ERR_INTERNAL", `tpm: ${what}: header says ${size} bytes, got ${bytes.length}`);
  if (rc !== 0) throw new TpmCommandError(cc, rc);
  if (tag !== (withSessions ? TPM_ST_SESSIONS : TPM_ST_NO_SESSIONS)) {
    throw new SigilError("ERR_INTERNAL", `tpm: ${what}: unexpected tag 0x${tag.toString(16)}`);
  }
  const handles: number[] = [];
  for (let i = 0; i < outHandles; i++) handles.push(r.u32(`handle ${i}`));
  if (!withSessions) return { handles, params: new TpmReader(r.bytes(r.remaining, "parameters"), what) };
  const paramSize = r.u32("parameterSize");
  // The authorization area (nonces, attributes, HMACs) follows; it is not needed for password and policy sessions.
  return { handles, params: new TpmReader(r.bytes(paramSize, "parameters"), what) };
}

const FMT1_ERRORS: Readonly<Record<number, string>> = {
  0x01: "TPM_RC_ASYMMETRIC",
  0x02: "TPM_RC_ATTRIBUTES",
  0x03: "TPM_RC_HASH",
  0x04: "TPM_RC_VALUE",
  0x05: "TPM_RC_HIERARCHY",
  0x07: "TPM_RC_KEY_SIZE",
  0x08: "TPM_RC_MGF",
  0x09: "TPM_RC_MODE",
  0x0a: "TPM_RC_TYPE",
  0x0b: "TPM_RC_HANDLE",
  0x0c: "TPM_RC_KDF",
  0x0d: "TPM_RC_RANGE",
  0x0e: "TPM_RC_AUTH_FAIL",
  0x0f: "TPM_RC_NONCE",
  0x10: "TPM_RC_PP",
  0x12: "TPM_RC_SCHEME",
  0x15: "TPM_RC_SIZE",
  0x16: "TPM_RC_SYMMETRIC",
  0x17: "TPM_RC_TAG",
  0x18: "TPM_RC_SELECTOR",
  0x1a: "TPM_RC_INSUFFICIENT",
  0x1b: "TPM_RC_SIGNATURE",
  0x1c: "TPM_RC_KEY",
  0x1d: "TPM_RC_POLICY_FAIL",
  0x1f: "TPM_RC_INTEGRITY",
  0x20: "TPM_RC_TICKET",
  0x21: "TPM_RC_RESERVED_BITS",
  0x22: "TPM_RC_BAD_AUTH",
  0x23: "TPM_RC_EXPIRED",
  0x24: "TPM_RC_POLICY_CC",
  0x25: "TPM_RC_BINDING",
  0x26: "TPM_RC_CURVE",
  0x27: "TPM_RC_ECC_POINT",
};

const VER1_ERRORS: Readonly<Record<number, string>> = {
  0x00: "TPM_RC_INITIALIZE",
  0x01: "TPM_RC_FAILURE",
  0x03: "TPM_RC_SEQUENCE",
  0x0b: "TPM_RC_PRIVATE",
  0x19: "TPM_RC_HMAC",
  0x20: "TPM_RC_DISABLED",
  0x21: "TPM_RC_EXCLUSIVE",
  0x24: "TPM_RC_AUTH_TYPE",
  0x25: "TPM_RC_AUTH_MISSING",
  0x26: "TPM_RC_POLICY",
  0x27: "TPM_RC_PCR",
  0x28: "TPM_RC_PCR_CHANGED",
  0x2d: "TPM_RC_UPGRADE",
  0x2e: "TPM_RC_TOO_MANY_CONTEXTS",
  0x2f: "TPM_RC_AUTH_UNAVAILABLE",
  0x30: "TPM_RC_REBOOT",
  0x31: "TPM_RC_UNBALANCED",
  0x42: "TPM_RC_COMMAND_SIZE",
  0x43: "TPM_RC_COMMAND_CODE",
  0x44: "TPM_RC_AUTHSIZE",
  0x45: "TPM_RC_AUTH_CONTEXT",
  0x46: "TPM_RC_NV_RANGE",
  0x47: "TPM_RC_NV_SIZE",
  0x48: "TPM_RC_NV_LOCKED",
  0x49: "TPM_RC_NV_AUTHORIZATION",
  0x4a: "TPM_RC_NV_UNINITIALIZED",
  0x4b: "TPM_RC_NV_SPACE",
  0x4c: "TPM_RC_NV_DEFINED",
  0x50: "TPM_RC_BAD_CONTEXT",
  0x51: "TPM_RC_CPHASH",
  0x52: "TPM_RC_PARENT",
  0x53: "TPM_RC_NEEDS_TEST",
  0x54: "TPM_RC_NO_RESULT",
  0x55: "TPM_RC_SENSITIVE",
};

const WARNINGS: Readonly<Record<number, string>> = {
  0x01: "TPM_RC_CONTEXT_GAP",
  0x02: "TPM_RC_OBJECT_MEMORY",
  0x03: "TPM_RC_SESSION_MEMORY",
  0x04: "TPM_RC_MEMORY",
  0x05: "TPM_RC_SESSION_HANDLES",
  0x06: "TPM_RC_OBJECT_HANDLES",
  0x07: "TPM_RC_LOCALITY",
  0x08: "TPM_RC_YIELDED",
  0x09: "TPM_RC_CANCELED",
  0x0a: "TPM_RC_TESTING",
  0x20: "TPM_RC_NV_RATE",
  0x21: "TPM_RC_LOCKOUT",
  0x22: "TPM_RC_RETRY",
  0x23: "TPM_RC_NV_UNAVAILABLE",
};

/** A TPM_RC broken into its parts. */
export interface DecodedRc {
  /** The base code's name, `TPM_RC_HANDLE` (or `TPM_RC_0x…` when unknown). */
  readonly name: string;
  /** Format-one codes: which handle, session or parameter (1-based) the error is about. */
  readonly subject?: { readonly kind: "handle" | "session" | "parameter"; readonly index: number };
  readonly warning: boolean;
  /** The code with the subject bits cleared (format one) — compare against e.g. 0x08b for TPM_RC_HANDLE. */
  readonly base: number;
}

/**
 * Decodes a TPM_RC (Part 2, §6.6): format-one codes (bit 7 set) carry an error
 * number and the handle, session or parameter it concerns; format-zero codes
 * are TPM 2.0 errors (bit 8), warnings (bit 11) or vendor / TPM 1.2 codes.
 */
export function decodeRc(rc: number): DecodedRc {
  if (rc & 0x80) {
    const num = rc & 0x3f;
    const n = (rc >>> 8) & 0xf;
    const base = 0x80 | num;
    const name = FMT1_ERRORS[num] ?? `TPM_RC_0x${base.toString(16)}`;
    let subject: DecodedRc["subject"];
    if (rc & 0x40) subject = { kind: "parameter", index: n };
    else if (n & 0x8) subject = { kind: "session", index: n & 0x7 };
    else if (n !== 0) subject = { kind: "handle", index: n };
    return subject === undefined ? { name, warning: false, base } : { name, subject, warning: false, base };
  }
  if (!(rc & 0x100)) return { name: `TPM 1.2 response code 0x${rc.toString(16)}`, warning: false, base: rc };
  if (rc & 0x400) return { name: `vendor response code 0x${rc.toString(16)}`, warning: false, base: rc };
  const num = rc & 0x7f;
  if (rc & 0x800) {
    let name = WARNINGS[num];
    if (name === undefined && num >= 0x10 && num <= 0x16) name = `TPM_RC_REFERENCE_H${num - 0x10}`;
    if (name === undefined && num >= 0x18 && num <= 0x1e) name = `TPM_RC_REFERENCE_S${num - 0x18}`;
    return { name: name ?? `TPM_RC_0x${rc.toString(16)}`, warning: true, base: rc };
  }
  return { name: VER1_ERRORS[num] ?? `TPM_RC_0x${rc.toString(16)}`, warning: false, base: rc };
}

/** Human-readable TPM_RC: `TPM_RC_HANDLE (handle 1), 0x18b`. */
export function describeRc(rc: number): string {
  const d = decodeRc(rc);
  const about = d.subject === undefined ? "" : ` (${d.subject.kind} ${d.subject.index})`;
  return `${d.name}${about}${d.warning ? " [warning]" : ""}, 0x${rc.toString(16)}`;
}

/** A TPM answered a command with a non-zero TPM_RC. */
export class TpmCommandError extends SigilError {
  /** The raw response code. */
  readonly rc: number;
  /** The decoded response code. */
  readonly decoded: DecodedRc;
  /** The command code. */
  readonly cc: number;

  constructor(cc: number, rc: number) {
    super("ERR_FAILED_PRECONDITION", `tpm: ${commandName(cc)} failed: ${describeRc(rc)}`);
    this.name = "TpmCommandError";
    this.rc = rc;
    this.cc = cc;
    this.decoded = decodeRc(rc);
  }
}
