/**
 * Log entries of what the server issues and of authority events, built from
 * the same facts as the issuance records (server/issuance/records.ts) plus
 * what a record does not keep: the leaf certificate, the subject key's digest,
 * the token's digest. The encoding itself is the library's
 * (spiffe/tlog/sigil-entry.ts), so an auditor decodes entries without server code.
 */
import { hash } from "node:crypto";
import { encodeCredentialEntries, encodeLogEntry, type CredentialEntryToEncode, logLookupKey, type LogAuthorityEntry, type LogCredentialEntry, type LogCredentialFields, type LogCredentialKind, type SigilLogEntry } from "../../spiffe/tlog/sigil-entry.js";
import type { IssuanceInput, TlogEntryInput } from "../datastore/index.js";

export { decodeLogEntry, encodeLogEntry } from "../../spiffe/tlog/sigil-entry.js";

/** What is logged of one issued credential. */
export interface LoggedCredential {
  /** The credential's issuance record (kind, serial, IDs, selectors, key ID, times, requester). */
  readonly record: IssuanceInput;
  /** The entry kind when it differs from the record's (`server-svid`, `downstream-ca`). */
  readonly kind?: LogCredentialKind | undefined;
  /** Leaf certificate DER (X.509 kinds). */
  readonly certDer?: Uint8Array | undefined;
  /** SubjectPublicKeyInfo DER of the subject key. */
  readonly publicKeyDer?: Uint8Array | undefined;
  /** The compact JWT (jwt-svid). */
  readonly jwt?: string | undefined;
  /** Revision of the registration entry it was issued for. */
  readonly entryRevision?: number | undefined;
  /** Hex SHA-256 of the attestation evidence, when known. */
  readonly evidenceSha256?: string | undefined;
}

/** A state change of a CA or JWT signing authority. */
export interface LoggedAuthorityEvent {
  readonly event: LogAuthorityEntry["event"];
  readonly kind: "x509" | "jwt";
  readonly keyId: string;
  readonly serverId: string;
  readonly at: Date;
  /** The CA certificate DER (x509). */
  readonly certDer?: Uint8Array | undefined;
}

const seconds = (d: Date): number => Math.floor(d.getTime() / 1000);
// One-shot: about half the cost of a Hash object, and this runs for every SVID while the log is on.
const sha256Hex = (data: Uint8Array | string): string => hash("sha256", data, "hex");
const base64 = (der: Uint8Array): string => Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString("base64");

/** The log entry of an issued credential (fields the record leaves empty are omitted). */
export function credentialEntry(c: LoggedCredential): LogCredentialEntry {
  const fields = credentialFields(c);
  return withCert(c) ? { ...fields, cert: base64(c.certDer) } : fields;
}

const withCert = (c: LoggedCredential): c is LoggedCredential & { certDer: Uint8Array } => (c.kind ?? c.record.kind) !== "jwt-svid" && c.certDer !== undefined;

/** {@link credentialEntry} without its `cert` (which is encoded from the DER). */
function credentialFields(c: LoggedCredential): LogCredentialFields {
  const r = c.record;
  const kind = c.kind ?? r.kind;
  const isJwt = kind === "jwt-svid";
  // Members set one by one (not spread): this runs for every SVID while the log is on.
  const e: { -readonly [K in keyof LogCredentialFields]: LogCredentialFields[K] } = { v: 1, kind, spiffeId: r.spiffeId, notBefore: seconds(r.notBefore), notAfter: seconds(r.notAfter), issuedAt: seconds(r.issuedAt) };
  if (isJwt) e.jwtSha256 = sha256Hex(c.jwt ?? "");
  else e.serial = r.serial;
  if (r.entryId !== null) e.entryId = r.entryId;
  if (c.entryRevision !== undefined) e.entryRevision = c.entryRevision;
  if (r.selectors.length > 0) e.selectors = r.selectors;
  if (r.agentId !== null) e.agentId = r.agentId;
  if (c.evidenceSha256 !== undefined) e.evidenceSha256 = c.evidenceSha256;
  if (c.publicKeyDer !== undefined) e.publicKeySha256 = sha256Hex(c.publicKeyDer);
  e.authorityKeyId = r.caKeyId;
  e.requestedBy = r.requestedBy;
  if (isJwt && r.audience !== undefined) e.audience = r.audience;
  return e;
}

/**
 * Issued credentials' entries as the datastore appends them, in order: the
 * same bytes as `toTlogInput(credentialEntry(c))`, by the fast encoder for
 * X.509 kinds ({@link encodeCredentialEntries}, which takes the certificates
 * as DER and lays the entries end to end in a few shared buffers).
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` for an entry that is not valid or too large.
 */
export function credentialLogInputs(credentials: readonly LoggedCredential[]): TlogEntryInput[] {
  const out = new Array<TlogEntryInput>(credentials.length);
  const x509: CredentialEntryToEncode[] = [];
  const at: number[] = [];
  for (let i = 0; i < credentials.length; i++) {
    const c = credentials[i] as LoggedCredential;
    const fields = credentialFields(c);
    if (fields.kind === "jwt-svid") {
      out[i] = toTlogInput(fields);
      continue;
    }
    x509.push({ fields, certDer: withCert(c) ? c.certDer : undefined });
    at.push(i);
  }
  const bytes = encodeCredentialEntries(x509);
  for (let j = 0; j < x509.length; j++) {
    out[at[j] as number] = { lookupKey: logLookupKey((x509[j] as CredentialEntryToEncode).fields), entry: bytes[j] as Buffer };
  }
  return out;
}

/** The log entry of an authority event. */
export function authorityEntry(e: LoggedAuthorityEvent): LogAuthorityEntry {
  return {
    v: 1,
    kind: "authority",
    event: e.event,
    authorityKind: e.kind,
    authorityKeyId: e.keyId,
    serverId: e.serverId,
    at: seconds(e.at),
    ...(e.kind === "x509" && e.certDer !== undefined ? { cert: base64(e.certDer) } : {}),
  };
}

/**
 * An entry as the datastore appends it: canonical bytes and lookup key.
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` for an entry that is not valid (a bug in the caller).
 */
export function toTlogInput(entry: SigilLogEntry): TlogEntryInput {
  return { lookupKey: logLookupKey(entry), entry: encodeLogEntry(entry) };
}
