/**
 * Sigil's transparency-log entries: one JSON object per logged credential or
 * authority event, encoded as RFC 8785 canonical JSON (UTF-8, keys sorted by
 * UTF-16 code units, no whitespace, integers in shortest decimal form). The
 * bytes are what the Merkle tree hashes, so the encoding is exact: a decoder
 * refuses anything that does not re-encode to the same bytes.
 *
 * It lives on the library side so `log verify` (and any auditor) can read
 * entries without server code; docs/transparency.md documents it byte for byte.
 */
import { SigilError } from "../errors.js";
import { MAX_ENTRY_SIZE } from "./tiles.js";

/** Kinds of credential entries. */
export type LogCredentialKind = "x509-svid" | "agent-svid" | "server-svid" | "jwt-svid" | "downstream-ca";
/** Every {@link LogCredentialKind}. */
export const LOG_CREDENTIAL_KINDS: readonly LogCredentialKind[] = ["x509-svid", "agent-svid", "server-svid", "jwt-svid", "downstream-ca"];
/** Kinds whose entries carry an X.509 `serial` (and usually `cert`). */
export const LOG_X509_KINDS: readonly LogCredentialKind[] = ["x509-svid", "agent-svid", "server-svid", "downstream-ca"];
/** What happened to a CA or JWT signing authority. */
export type LogAuthorityEvent = "prepared" | "activated" | "tainted" | "revoked";
/** Every {@link LogAuthorityEvent}. */
export const LOG_AUTHORITY_EVENTS: readonly LogAuthorityEvent[] = ["prepared", "activated", "tainted", "revoked"];

/** A credential the server issued (absent fields are omitted from the encoding). */
export interface LogCredentialEntry {
  readonly v: 1;
  readonly kind: LogCredentialKind;
  /** Certificate serial, lower-case hex without leading zeros (X.509 kinds). */
  readonly serial?: string;
  /** Hex SHA-256 of the compact JWT (jwt-svid). */
  readonly jwtSha256?: string;
  readonly spiffeId: string;
  readonly entryId?: string;
  readonly entryRevision?: number;
  /** Canonical `type:value` selectors. */
  readonly selectors?: readonly string[];
  readonly agentId?: string;
  /** Hex SHA-256 of the attestation evidence, when known. */
  readonly evidenceSha256?: string;
  /** Hex SHA-256 of the subject public key's SubjectPublicKeyInfo DER. */
  readonly publicKeySha256?: string;
  /** The signing CA or JWT key's key ID, as the CA journal names it. */
  readonly authorityKeyId?: string;
  /** Unix seconds. */
  readonly notBefore: number;
  /** Unix seconds. */
  readonly notAfter: number;
  /** Unix seconds. */
  readonly issuedAt: number;
  /** `<kind>:<principal>`, e.g. `agent:spiffe://…`, `admin:local`. */
  readonly requestedBy?: string;
  /** JWT audience (jwt-svid). */
  readonly audience?: readonly string[];
  /** Base64 DER of the leaf certificate (X.509 kinds). */
  readonly cert?: string;
}

/** A signing authority changing state. */
export interface LogAuthorityEntry {
  readonly v: 1;
  readonly kind: "authority";
  readonly event: LogAuthorityEvent;
  readonly authorityKind: "x509" | "jwt";
  readonly authorityKeyId: string;
  readonly serverId: string;
  /** Unix seconds. */
  readonly at: number;
  /** Base64 DER of the CA certificate (x509). */
  readonly cert?: string;
}

/**
 * A credential first handed to a workload, as its agent reported it in a
 * sync: exactly one of `serial` (X.509-SVID) and `jwtSha256` (JWT-SVID)
 * names it, and `issuanceIndex` is the log index of its own entry.
 */
export interface LogDeliveredEntry {
  readonly v: 1;
  readonly kind: "delivered";
  /** The X.509-SVID's serial, lower-case hex without leading zeros. */
  readonly serial?: string;
  /** Hex SHA-256 of the compact JWT-SVID. */
  readonly jwtSha256?: string;
  /** The SPIFFE ID of the credential (from its issuance entry). */
  readonly spiffeId: string;
  /** The agent that handed it out (the one it was issued to). */
  readonly agentId: string;
  /** Unix seconds. */
  readonly deliveredAt: number;
  /** Log index of the credential's own entry. */
  readonly issuanceIndex: number;
}

/** Any Sigil log entry. */
export type SigilLogEntry = LogCredentialEntry | LogAuthorityEntry | LogDeliveredEntry;

type FieldType = "string" | "int" | "strings" | "serial" | "sha256" | "base64";

const CREDENTIAL_FIELDS: Readonly<Record<string, FieldType>> = {
  serial: "serial",
  jwtSha256: "sha256",
  spiffeId: "string",
  entryId: "string",
  entryRevision: "int",
  selectors: "strings",
  agentId: "string",
  evidenceSha256: "sha256",
  publicKeySha256: "sha256",
  authorityKeyId: "string",
  notBefore: "int",
  notAfter: "int",
  issuedAt: "int",
  requestedBy: "string",
  audience: "strings",
  cert: "base64",
};
const CREDENTIAL_REQUIRED = ["spiffeId", "notBefore", "notAfter", "issuedAt"];
const AUTHORITY_FIELDS: Readonly<Record<string, FieldType>> = { event: "string", authorityKind: "string", authorityKeyId: "string", serverId: "string", at: "int", cert: "base64" };
const AUTHORITY_REQUIRED = ["event", "authorityKind", "authorityKeyId", "serverId", "at"];
const DELIVERED_FIELDS: Readonly<Record<string, FieldType>> = { serial: "serial", jwtSha256: "sha256", spiffeId: "string", agentId: "string", deliveredAt: "int", issuanceIndex: "int" };
const DELIVERED_REQUIRED = ["spiffeId", "agentId", "deliveredAt", "issuanceIndex"];

/**
 * Most audiences a jwt-svid entry written now holds; Sigil's JWT-SVID minting
 * accepts no more. Entries are held to it when encoded, never when decoded:
 * a log written before the cap (or by an older server) still verifies.
 */
export const MAX_LOG_AUDIENCES = 32;
/** Longest audience (UTF-8 bytes) a jwt-svid entry written now holds; see {@link MAX_LOG_AUDIENCES}. */
export const MAX_LOG_AUDIENCE_BYTES = 256;
/** C0 and C1 control characters and DEL: refused in audiences (JSON escapes each to 6 bytes). */
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;

/** A broken audience cap: the field (`audience` or `audience[<i>]`) and what is wrong with it. */
export interface AudienceProblem {
  readonly field: string;
  readonly message: string;
}

/**
 * How an audience list breaks the caps ({@link MAX_LOG_AUDIENCES} audiences
 * of {@link MAX_LOG_AUDIENCE_BYTES} bytes, no control characters), naming the
 * first bad audience by index; undefined when it keeps them. Minting and
 * {@link encodeLogEntry} share it.
 *
 * The worst case of a jwt-svid entry under these caps: an audience takes at
 * most 515 bytes (only `"` and backslash are escaped, each to 2 bytes), 32 of
 * them about 16.5 KB; the SPIFFE ID, agent ID and `requestedBy` at most about
 * 2 KiB each; each selector up to about 2.1 KB escaped (a 1,024-byte value of
 * quotes), and selectors are not bounded in number: about 20 of the longest
 * fill the rest of 64 KiB. Such an entry can still pass 64 KiB, and
 * {@link encodeLogEntry} refuses it (the issuer then refuses the credential
 * as InvalidArgument).
 */
export function audienceProblem(audience: readonly string[]): AudienceProblem | undefined {
  if (audience.length > MAX_LOG_AUDIENCES) return { field: "audience", message: `has ${audience.length} audiences, more than the maximum ${MAX_LOG_AUDIENCES}` };
  for (const [i, a] of audience.entries()) {
    const bytes = Buffer.byteLength(a, "utf8");
    if (bytes > MAX_LOG_AUDIENCE_BYTES) return { field: `audience[${i}]`, message: `is longer than the maximum ${MAX_LOG_AUDIENCE_BYTES} bytes (${bytes})` };
    const ctl = CONTROL_RE.exec(a);
    if (ctl) return { field: `audience[${i}]`, message: `contains control character U+${(ctl[0].codePointAt(0) ?? 0).toString(16).padStart(4, "0")} at offset ${ctl.index}` };
  }
  return undefined;
}

const SERIAL_RE = /^(0|[1-9a-f][0-9a-f]*)$/;
const SHA256_RE = /^[0-9a-f]{64}$/;
// With the length a multiple of 4, this is padded standard base64 (one simple class: linear and fast on a certificate).
const BASE64_RE = /^[A-Za-z0-9+/]+={0,2}$/;
// Lone surrogates have no UTF-8 form, so RFC 8785 has no encoding for them.
const LONE_SURROGATE_RE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function invalid(message: string): SigilError {
  return new SigilError("ERR_TLOG_MALFORMED", `tlog entry: ${message}`);
}

const ANY_SURROGATE_RE = /[\uD800-\uDFFF]/;

function checkString(v: unknown, path: string): void {
  if (typeof v !== "string") throw invalid(`${path} must be a string`);
  // The cheap test first: almost no string holds a surrogate at all.
  if (ANY_SURROGATE_RE.test(v) && LONE_SURROGATE_RE.test(v)) throw invalid(`${path} holds a lone UTF-16 surrogate`);
}

function checkField(name: string, type: FieldType, v: unknown): void {
  switch (type) {
    case "string":
      checkString(v, name);
      return;
    case "int":
      if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw invalid(`${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
      return;
    case "strings":
      if (!Array.isArray(v)) throw invalid(`${name} must be an array of strings`);
      v.forEach((s, i) => checkString(s, `${name}[${i}]`));
      return;
    case "serial":
      if (typeof v !== "string" || !SERIAL_RE.test(v)) throw invalid(`${name} must be lower-case hex without leading zeros, got ${JSON.stringify(v)}`);
      return;
    case "sha256":
      if (typeof v !== "string" || !SHA256_RE.test(v)) throw invalid(`${name} must be 64 lower-case hex digits, got ${JSON.stringify(v)}`);
      return;
    case "base64":
      if (typeof v !== "string" || v.length % 4 !== 0 || !BASE64_RE.test(v)) throw invalid(`${name} must be padded standard base64`);
      return;
  }
}

function checkShape(o: Record<string, unknown>, fields: Readonly<Record<string, FieldType>>, required: readonly string[]): void {
  for (const [k, v] of Object.entries(o)) {
    if (k === "v" || k === "kind") continue;
    const type = fields[k];
    if (type === undefined) throw invalid(`unknown field ${JSON.stringify(k)} in a ${String(o["kind"])} entry`);
    if (v === undefined) continue;
    checkField(k, type, v);
  }
  for (const k of required) if (o[k] === undefined) throw invalid(`${String(o["kind"])} entry: ${k} is required`);
}

/**
 * Checks that `o` is a valid Sigil log entry and returns it typed.
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` naming the bad field.
 */
export function validateLogEntry(o: unknown): SigilLogEntry {
  if (typeof o !== "object" || o === null || Array.isArray(o)) throw invalid("an entry is a JSON object");
  const r = o as Record<string, unknown>;
  if (r["v"] !== 1) throw invalid(`v must be 1, got ${JSON.stringify(r["v"])}`);
  const kind = r["kind"];
  if (kind === "authority") {
    checkShape(r, AUTHORITY_FIELDS, AUTHORITY_REQUIRED);
    if (!LOG_AUTHORITY_EVENTS.includes(r["event"] as LogAuthorityEvent)) throw invalid(`event must be one of ${LOG_AUTHORITY_EVENTS.join(", ")}, got ${JSON.stringify(r["event"])}`);
    if (r["authorityKind"] !== "x509" && r["authorityKind"] !== "jwt") throw invalid(`authorityKind must be x509 or jwt, got ${JSON.stringify(r["authorityKind"])}`);
    return r as unknown as LogAuthorityEntry;
  }
  if (kind === "delivered") {
    checkShape(r, DELIVERED_FIELDS, DELIVERED_REQUIRED);
    if ((r["serial"] === undefined) === (r["jwtSha256"] === undefined)) throw invalid("delivered entry: exactly one of serial and jwtSha256 is required");
    return r as unknown as LogDeliveredEntry;
  }
  if (!LOG_CREDENTIAL_KINDS.includes(kind as LogCredentialKind)) throw invalid(`kind must be one of ${[...LOG_CREDENTIAL_KINDS, "authority", "delivered"].join(", ")}, got ${JSON.stringify(kind)}`);
  checkShape(r, CREDENTIAL_FIELDS, CREDENTIAL_REQUIRED);
  if (kind === "jwt-svid") {
    if (r["jwtSha256"] === undefined) throw invalid("jwt-svid entry: jwtSha256 is required");
    if (r["serial"] !== undefined || r["cert"] !== undefined) throw invalid("jwt-svid entry: serial and cert belong to X.509 kinds");
  } else {
    if (r["serial"] === undefined) throw invalid(`${String(kind)} entry: serial is required`);
    if (r["jwtSha256"] !== undefined || r["audience"] !== undefined) throw invalid(`${String(kind)} entry: jwtSha256 and audience belong to jwt-svid`);
  }
  return r as unknown as LogCredentialEntry;
}

/**
 * RFC 8785 canonical JSON of a value made of strings, safe integers, arrays
 * and plain objects (all an entry holds). `JSON.stringify` already writes
 * strings and integers the RFC 8785 way; what it leaves is the key order,
 * sorted here by UTF-16 code units (the default `sort`). Undefined object
 * members are omitted.
 */
export function canonicalJson(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog entry: only safe integers are encoded, got ${value}`);
    return JSON.stringify(value);
  }
  if (typeof value === "boolean" || value === null) return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object") {
    const o = value as Record<string, unknown>;
    const flat = flatCanonical(o);
    if (flat !== undefined) return flat;
    const parts: string[] = [];
    for (const k of Object.keys(o).sort()) {
      const v = o[k];
      if (v === undefined) continue;
      parts.push(`${JSON.stringify(k)}:${canonicalJson(v)}`);
    }
    return `{${parts.join(",")}}`;
  }
  throw new SigilError("ERR_INVALID_ARGUMENT", `tlog entry: cannot encode a ${typeof value}`);
}

const ARRAY_INDEX_RE = /^(0|[1-9][0-9]*)$/;

/**
 * The fast path of {@link canonicalJson} for an object whose members are
 * strings, safe integers or arrays of strings (every entry): the members
 * copied in sorted order and written by one `JSON.stringify`, which keeps the
 * insertion order of keys that are not array indices. Undefined otherwise.
 */
function flatCanonical(o: Record<string, unknown>): string | undefined {
  const keys = Object.keys(o).sort();
  const sorted: Record<string, unknown> = {};
  for (const k of keys) {
    const v = o[k];
    if (v === undefined) continue;
    if (ARRAY_INDEX_RE.test(k)) return undefined;
    if (typeof v === "number") {
      if (!Number.isSafeInteger(v)) return undefined;
    } else if (typeof v !== "string" && !(Array.isArray(v) && v.every((x) => typeof x === "string"))) {
      return undefined;
    }
    sorted[k] = v;
  }
  return JSON.stringify(sorted);
}

/**
 * The log bytes of an entry: validated, canonical JSON, UTF-8. A jwt-svid
 * entry's audiences are held to {@link audienceProblem}'s caps here (decoding
 * does not hold old entries to them).
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` for an invalid entry, audiences over the caps, or an entry over 65,535 bytes.
 */
export function encodeLogEntry(entry: SigilLogEntry): Buffer {
  validateLogEntry(entry);
  if (entry.kind === "jwt-svid") {
    const problem = audienceProblem(entry.audience ?? []);
    if (problem !== undefined) throw invalid(`jwt-svid entry: ${problem.field} ${problem.message}`);
  }
  const bytes = Buffer.from(canonicalJson(entry), "utf8");
  if (bytes.length > MAX_ENTRY_SIZE) throw invalid(`an entry has at most ${MAX_ENTRY_SIZE} bytes, this one ${bytes.length}`);
  return bytes;
}

/** A credential entry whose certificate is given as DER (it is logged as its base64). */
export type LogCredentialFields = Omit<LogCredentialEntry, "cert">;

// Members of an X.509 credential entry in RFC 8785 order, each with its `"name":` prefix (ASCII, as bytes).
const X509_MEMBERS: readonly (readonly [string, FieldType | "kind" | "v", Buffer])[] = [...Object.keys(CREDENTIAL_FIELDS), "kind", "v"]
  .sort()
  .map((k) => [k, k === "kind" || k === "v" ? k : (CREDENTIAL_FIELDS[k] as FieldType), Buffer.from(`${JSON.stringify(k)}:`, "latin1")] as const);
const X509_MEMBER_NAMES: ReadonlySet<string> = new Set(X509_MEMBERS.map(([k]) => k));
/**
 * The values of an entry's members in {@link X509_MEMBERS} order, read by
 * name: reading `o[k]` with `k` changing is a slow generic lookup, and this
 * runs on every SVID. The list is checked against X509_MEMBERS below.
 */
function x509MemberValues(e: LogCredentialFields, certDer: Uint8Array | undefined): unknown[] {
  return [e.agentId, e.audience, e.authorityKeyId, certDer, e.entryId, e.entryRevision, e.evidenceSha256, e.issuedAt, e.jwtSha256, e.kind, e.notAfter, e.notBefore, e.publicKeySha256, e.requestedBy, e.selectors, e.serial, e.spiffeId, e.v];
}
{
  const order = ["agentId", "audience", "authorityKeyId", "cert", "entryId", "entryRevision", "evidenceSha256", "issuedAt", "jwtSha256", "kind", "notAfter", "notBefore", "publicKeySha256", "requestedBy", "selectors", "serial", "spiffeId", "v"];
  if (order.join() !== X509_MEMBERS.map(([k]) => k).join()) throw new Error("tlog entry: x509MemberValues is out of step with the credential entry's members");
}
// The `kind` member's value of each X.509 kind, as bytes.
const X509_KIND_BYTES: ReadonlyMap<string, Buffer> = new Map(LOG_X509_KINDS.map((k) => [k, Buffer.from(JSON.stringify(k), "latin1")]));

/**
 * The log bytes of an X.509 credential entry (`x509-svid`, `agent-svid`,
 * `server-svid`, `downstream-ca`), byte for byte what {@link encodeLogEntry}
 * writes for the same entry with `cert` the base64 of `certDer`, but several
 * times faster: the members are written as bytes, in their fixed canonical
 * order, into a scratch buffer (no intermediate object, no JSON string to
 * convert to UTF-8), and the certificate is not checked as base64 because it
 * is encoded here. It runs on every SVID the server issues while the log is
 * on; {@link encodeCredentialEntries} encodes many at once.
 *
 * Only cheap checks are made on the way; any entry they do not pass (a
 * `jwt-svid`, an unknown or missing member, a bad value, a lone surrogate, an
 * entry over the size limit) is handed to {@link encodeLogEntry}, so errors
 * read the same either way.
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` for an invalid entry (from {@link encodeLogEntry}).
 */
export function encodeCredentialEntry(entry: LogCredentialFields, certDer?: Uint8Array): Buffer {
  return encodeCredentialEntries([{ fields: entry, certDer }])[0] as Buffer;
}

/** One credential entry for {@link encodeCredentialEntries}: its fields and its certificate as DER. */
export interface CredentialEntryToEncode {
  readonly fields: LogCredentialFields;
  readonly certDer?: Uint8Array | undefined;
}

/**
 * {@link encodeCredentialEntry} of each entry, in order. The results are
 * views laid end to end in buffers of about 32 KiB (allocating a buffer per
 * entry costs about as much as encoding it; one for a whole batch of 100,
 * over glibc's 128 KiB mmap threshold, costs fresh pages every time).
 * Entries the fast path does not take get buffers of their own.
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` for the first invalid entry (from {@link encodeLogEntry}).
 */
export function encodeCredentialEntries(entries: readonly CredentialEntryToEncode[]): Buffer[] {
  // Taken while in use, so a nested call (from a getter on an entry) gets a scratch of its own.
  const buf = scratch ?? Buffer.allocUnsafe(SCRATCH_SIZE);
  scratch = undefined;
  try {
    return encodeInto(buf, entries);
  } finally {
    scratch = buf;
  }
}

/** {@link encodeCredentialEntries} through the scratch `buf`. */
function encodeInto(buf: Buffer, entries: readonly CredentialEntryToEncode[]): Buffer[] {
  const out = new Array<Buffer>(entries.length);
  const ends = new Array<number>(entries.length).fill(-1);
  let first = 0;
  let at = 0;
  // Copies entries [first, upTo) from the scratch into one buffer of their own.
  const flush = (upTo: number): void => {
    if (at === 0) return;
    const bytes = Buffer.allocUnsafe(at);
    buf.copy(bytes, 0, 0, at);
    let start = 0;
    for (let i = first; i < upTo; i++) {
      const end = ends[i] as number;
      if (end < 0) continue;
      out[i] = start === 0 && end === at ? bytes : bytes.subarray(start, end);
      start = end;
    }
    at = 0;
  };
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i] as CredentialEntryToEncode;
    if (at >= FLUSH_AT) {
      flush(i);
      first = i;
    }
    const end = fastCredentialBytes(buf, at, e.fields, e.certDer);
    if (end >= 0) {
      ends[i] = end;
      at = end;
      continue;
    }
    const cert = e.certDer === undefined ? undefined : Buffer.from(e.certDer.buffer, e.certDer.byteOffset, e.certDer.byteLength).toString("base64");
    out[i] = encodeLogEntry((cert === undefined ? e.fields : { ...e.fields, cert }) as LogCredentialEntry);
  }
  flush(entries.length);
  return out;
}

// UTF-8 JSON string literals of the strings most recently quoted: most members of a
// credential entry (SPIFFE ID, agent, requester, selectors) repeat from one SVID to the next.
const quotedCache = new Map<string, Buffer>();
const MAX_QUOTED_CACHE = 10_000;

/** `v` as a UTF-8 JSON string literal, or undefined when it is not a string or holds any surrogate (the full checks decide). */
function quoted(v: unknown): Buffer | undefined {
  if (typeof v !== "string") return undefined;
  let q = quotedCache.get(v);
  if (q === undefined) {
    if (ANY_SURROGATE_RE.test(v)) return undefined;
    const json = JSON.stringify(v);
    // A cached literal gets its own memory (not a slice of Node's shared pool, which a long-kept
    // slice would pin whole, 8 KiB at a time); one used once may share the pool.
    q = v.length <= 1024 ? copyOut(json) : Buffer.from(json, "utf8");
    if (v.length <= 1024) {
      if (quotedCache.size >= MAX_QUOTED_CACHE) quotedCache.clear();
      quotedCache.set(v, q);
    }
  }
  return q;
}

/** `json` as UTF-8 in a Buffer of its own (see {@link quoted}). */
function copyOut(json: string): Buffer {
  const n = Buffer.byteLength(json, "utf8");
  const b = Buffer.allocUnsafeSlow(n);
  b.write(json, 0, "utf8");
  return b;
}

// Where the fast encoder writes entries before they are copied out (made on first
// use): entries are copied out once FLUSH_AT bytes are written, so it always has room for one of the largest.
const FLUSH_AT = 32 * 1024;
const SCRATCH_SIZE = FLUSH_AT + MAX_ENTRY_SIZE;
let scratch: Buffer | undefined;
const COMMA = 0x2c;
const QUOTE = 0x22;

/** Copies `b` into `out` at `at` and returns the end (a loop: faster than `set` for the short pieces an entry is made of). */
function put(out: Buffer, b: Uint8Array, at: number): number {
  const n = b.length;
  if (n > 16) {
    out.set(b, at);
    return at + n;
  }
  for (let i = 0; i < n; i++) out[at + i] = b[i] as number;
  return at + n;
}

/** Writes the decimal digits of a safe non-negative integer at `at` (from `String(n)`, as the generic encoder spells it); returns the end. */
function putUint(out: Buffer, n: number, at: number): number {
  const digits = String(n);
  for (let i = 0; i < digits.length; i++) out[at + i] = digits.charCodeAt(i);
  return at + digits.length;
}

/**
 * Writes the bytes of {@link encodeCredentialEntry} into `out` from `start`
 * and returns where they end, or -1 when the entry needs the full checks or
 * is over the size limit ({@link MAX_ENTRY_SIZE} bytes; `out` has that much room from `start`).
 */
function fastCredentialBytes(out: Buffer, start: number, entry: LogCredentialFields, certDer: Uint8Array | undefined): number {
  if (typeof entry !== "object" || entry === null || entry.v !== 1) return -1;
  const kind = entry.kind;
  if (kind === "jwt-svid" || !LOG_X509_KINDS.includes(kind)) return -1;
  const o = entry as unknown as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!X509_MEMBER_NAMES.has(k) || k === "cert") return -1;
  if (certDer !== undefined && !(certDer instanceof Uint8Array)) return -1;
  if (o["serial"] === undefined || o["jwtSha256"] !== undefined || o["audience"] !== undefined) return -1;
  if (o["spiffeId"] === undefined || o["notBefore"] === undefined || o["notAfter"] === undefined || o["issuedAt"] === undefined) return -1;
  const room = start + MAX_ENTRY_SIZE;
  out[start] = 0x7b; // {
  let at = start + 1;
  const values = x509MemberValues(entry, certDer);
  for (let m = 0; m < X509_MEMBERS.length; m++) {
    // Indexed, not destructured: destructuring goes through the array iterator.
    const member = X509_MEMBERS[m] as (typeof X509_MEMBERS)[number];
    const type = member[1];
    const prefix = member[2];
    const v = values[m];
    if (v === undefined) continue;
    // Separator and name, and room for a value of up to 16 bytes (an integer, the kind); longer ones are checked below.
    if (at + 1 + prefix.length + 16 > room) return -1;
    if (at > start + 1) out[at++] = COMMA;
    at = put(out, prefix, at);
    switch (type) {
      case "base64": {
        const der = v as Uint8Array;
        // An empty certificate is not valid base64 for the generic encoder; it decides (and refuses).
        if (der.byteLength === 0) return -1;
        const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString("base64");
        if (at + b64.length + 2 > room) return -1;
        out[at++] = QUOTE;
        at += out.write(b64, at, "latin1");
        out[at++] = QUOTE;
        break;
      }
      case "kind":
        at = put(out, X509_KIND_BYTES.get(kind) as Buffer, at);
        break;
      case "v":
      case "int":
        if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) return -1;
        at = putUint(out, v, at);
        break;
      case "string": {
        const q = quoted(v);
        if (q === undefined || at + q.length > room) return -1;
        at = put(out, q, at);
        break;
      }
      case "strings": {
        if (!Array.isArray(v)) return -1;
        out[at++] = 0x5b; // [
        for (let i = 0; i < v.length; i++) {
          const q = quoted(v[i]);
          if (q === undefined || at + q.length + 2 > room) return -1;
          if (i > 0) out[at++] = COMMA;
          at = put(out, q, at);
        }
        out[at++] = 0x5d; // ]
        break;
      }
      case "serial":
      case "sha256":
        // Checked as lower-case hex: ASCII, one byte per character.
        if (typeof v !== "string" || !(type === "serial" ? SERIAL_RE : SHA256_RE).test(v) || at + v.length + 2 > room) return -1;
        out[at++] = QUOTE;
        at += out.write(v, at, "latin1");
        out[at++] = QUOTE;
        break;
      default:
        return -1;
    }
  }
  if (at + 1 > room) return -1;
  out[at++] = 0x7d; // }
  return at;
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Parses log bytes back into an entry, refusing anything that is not the
 * canonical encoding of a valid entry (so two different byte strings never
 * decode to the same entry).
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` saying what is wrong.
 */
export function decodeLogEntry(bytes: Uint8Array): SigilLogEntry {
  if (bytes.length > MAX_ENTRY_SIZE) throw invalid(`an entry has at most ${MAX_ENTRY_SIZE} bytes, got ${bytes.length}`);
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch (err) {
    throw new SigilError("ERR_TLOG_MALFORMED", "tlog entry: not valid UTF-8", { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new SigilError("ERR_TLOG_MALFORMED", `tlog entry: not JSON (${(err as Error).message})`, { cause: err });
  }
  const entry = validateLogEntry(parsed);
  if (canonicalJson(entry) !== text) throw invalid("not in RFC 8785 canonical form (key order, whitespace or number spelling)");
  return entry;
}

/**
 * The key an entry is found by: `serial:<hex>` (X.509 kinds), `jwt:<sha256>`
 * (jwt-svid), `delivered:<serial>` or `delivered:jwt:<sha256>`,
 * `authority:<kind>:<key ID>:<event>`. The server indexes entries by it;
 * `prove` looks them up with it, and a credential's delivery is found by
 * {@link deliveredLookupKey}.
 */
export function logLookupKey(entry: SigilLogEntry): string {
  switch (entry.kind) {
    case "authority":
      return `authority:${entry.authorityKind}:${entry.authorityKeyId}:${entry.event}`;
    case "delivered":
      return entry.serial !== undefined ? `delivered:${entry.serial}` : `delivered:jwt:${entry.jwtSha256 ?? ""}`;
    case "jwt-svid":
      return `jwt:${entry.jwtSha256 ?? ""}`;
    default:
      return `serial:${entry.serial ?? ""}`;
  }
}

/** The lookup key of a credential by serial (any hex spelling) or by JWT SHA-256. */
export function credentialLookupKey(lookup: { readonly serial: string } | { readonly jwtSha256: string }): string {
  if ("serial" in lookup) {
    const s = lookup.serial.toLowerCase().replace(/^0+(?=.)/, "");
    if (!SERIAL_RE.test(s)) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: serial must be hex, got ${JSON.stringify(lookup.serial)}`);
    return `serial:${s}`;
  }
  const h = lookup.jwtSha256.toLowerCase();
  if (!SHA256_RE.test(h)) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: jwtSha256 must be 64 hex digits, got ${JSON.stringify(lookup.jwtSha256)}`);
  return `jwt:${h}`;
}

/** The lookup key of a credential's `delivered` entry: `delivered:<serial>` or `delivered:jwt:<sha256>`. */
export function deliveredLookupKey(lookup: { readonly serial: string } | { readonly jwtSha256: string }): string {
  const key = credentialLookupKey(lookup);
  return key.startsWith("serial:") ? `delivered:${key.slice("serial:".length)}` : `delivered:${key}`;
}
