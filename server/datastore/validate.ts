/**
 * Input validation at the datastore boundary. The API layer validates too;
 * this is the second line, so that no driver ever stores a malformed SPIFFE
 * ID, selector, TTL or name whatever the caller. Every check runs before the
 * first write, so a refused call leaves the store unchanged.
 *
 * The functions return normalised values (canonical order, duplicates
 * dropped, times as Unix milliseconds) that every driver stores as they are.
 */
import { createHash } from "node:crypto";
import { formatSelector, normalizeSelectors, parseSelector, type Selector } from "../../common/selector.js";
import { SigilError } from "../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../spiffe/id.js";
import type { AgentInput } from "./agent.js";
import type { BundleInput } from "./bundle.js";
import type { CaJournalInput, CaKeyKind, CaSlotStatus } from "./ca-journal.js";
import type { EntryInput } from "./entry.js";
import { BUNDLE_ENDPOINT_PROFILES, type BundleEndpointProfileName, type FederationRelationshipInput, type RelationshipSource } from "./federation-relationship.js";
import { ISSUANCE_KINDS, type IssuanceInput, type IssuanceKind } from "./issuance.js";
import type { JoinTokenInput } from "./join-token.js";
import { canonicalSerialHex } from "../../spiffe/x509/serial.js";

/** Largest TTL accepted, in seconds (a signed 32-bit integer, as in SPIRE's API). */
export const MAX_TTL_SECONDS = 2_147_483_647;
/** Longest entry hint, in UTF-8 bytes. */
export const MAX_HINT_BYTES = 1024;
/** Longest DNS name, in bytes (RFC 1035). */
export const MAX_DNS_NAME_BYTES = 253;
/** Longest operator-chosen entry ID. */
export const MAX_ENTRY_ID_LENGTH = 255;
/** Longest join token. */
export const MAX_JOIN_TOKEN_LENGTH = 256;
/** Largest bundle document, in UTF-8 bytes. */
export const MAX_BUNDLE_DOCUMENT_BYTES = 4 * 1024 * 1024;

const ENTRY_ID_RE = /^[A-Za-z0-9._~-]+$/;
const JOIN_TOKEN_RE = /^[A-Za-z0-9._-]+$/;
const DNS_LABEL_RE = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
const SHORT_NAME_RE = /^[A-Za-z0-9._-]{1,128}$/;
const SERIAL_RE = /^[A-Za-z0-9:]{1,128}$/;
const UINT64_RE = /^(0|[1-9][0-9]{0,19})$/;
const UINT64_MAX = (1n << 64n) - 1n;
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;

/** An `ERR_INVALID_ARGUMENT` datastore error, keeping `cause`. */
export function invalid(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `datastore: ${message}`, cause === undefined ? undefined : { cause });
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Parses a SPIFFE ID field, returning its canonical string. */
export function checkSpiffeId(what: string, value: unknown): string {
  if (typeof value !== "string") throw invalid(`${what} must be a string`);
  try {
    return parseSpiffeId(value).toString();
  } catch (e) {
    throw invalid(`${what}: ${describe(e)}`, e);
  }
}

/** Parses a bare trust-domain name. */
export function checkTrustDomainName(what: string, value: unknown): string {
  if (typeof value !== "string") throw invalid(`${what} must be a string`);
  try {
    return parseTrustDomain(value).name;
  } catch (e) {
    throw invalid(`${what}: ${describe(e)}`, e);
  }
}

/** Re-validates selectors (whatever built them) and returns them canonical and de-duplicated. */
export function checkSelectors(what: string, value: unknown, allowEmpty: boolean): Selector[] {
  if (!Array.isArray(value)) throw invalid(`${what} must be an array of selectors`);
  const parsed: Selector[] = [];
  for (const s of value as unknown[]) {
    const obj = s as { type?: unknown; value?: unknown } | null;
    if (obj === null || typeof obj !== "object" || typeof obj.type !== "string" || typeof obj.value !== "string") {
      throw invalid(`${what} must contain selectors made by parseSelector`);
    }
    try {
      parsed.push(parseSelector(formatSelector(obj as Selector)));
    } catch (e) {
      throw invalid(`${what}: ${describe(e)}`, e);
    }
  }
  if (parsed.length === 0 && !allowEmpty) throw invalid(`${what} must not be empty`);
  return normalizeSelectors(parsed);
}

/** A TTL in seconds: a non-negative integer. */
export function checkTtl(what: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > MAX_TTL_SECONDS) {
    throw invalid(`${what} must be an integer number of seconds from 0 to ${MAX_TTL_SECONDS}, got ${String(value)}`);
  }
  return value;
}

/** A valid `Date`, as Unix milliseconds. */
export function checkTime(what: string, value: unknown): number {
  if (!(value instanceof Date) || Number.isNaN(value.getTime())) throw invalid(`${what} must be a valid Date`);
  return value.getTime();
}

function checkBool(what: string, value: unknown): boolean {
  if (typeof value !== "boolean") throw invalid(`${what} must be a boolean`);
  return value;
}

function checkText(what: string, value: unknown, maxBytes: number): string {
  if (typeof value !== "string") throw invalid(`${what} must be a string`);
  const bytes = Buffer.byteLength(value, "utf8");
  if (bytes > maxBytes) throw invalid(`${what} is longer than ${maxBytes} bytes (${bytes})`);
  const ctl = CONTROL_RE.exec(value);
  if (ctl) throw invalid(`${what} contains a control character at offset ${ctl.index}`);
  return value;
}

/** A DNS SAN: LDH labels, an optional leading `*.` wildcard, ≤ 253 bytes, no trailing dot. */
export function checkDnsName(what: string, value: unknown): string {
  if (typeof value !== "string") throw invalid(`${what} must be a string`);
  if (value.length === 0) throw invalid(`${what} is empty`);
  if (value.length > MAX_DNS_NAME_BYTES) throw invalid(`${what} is longer than ${MAX_DNS_NAME_BYTES} bytes`);
  const labels = value.split(".");
  for (let i = 0; i < labels.length; i++) {
    const label = labels[i] as string;
    if (i === 0 && label === "*" && labels.length > 1) continue;
    if (!DNS_LABEL_RE.test(label)) {
      throw invalid(`${what} ${JSON.stringify(value.slice(0, 80))} is not a DNS name (label ${i + 1} ${JSON.stringify(label.slice(0, 70))})`);
    }
  }
  return value;
}

function checkList<T>(what: string, value: unknown, each: (what: string, v: unknown) => T): T[] {
  if (!Array.isArray(value)) throw invalid(`${what} must be an array`);
  const out: T[] = [];
  const seen = new Set<T>();
  (value as unknown[]).forEach((v, i) => {
    const item = each(`${what}[${i}]`, v);
    if (!seen.has(item)) {
      seen.add(item);
      out.push(item);
    }
  });
  return out;
}

/** Checks an operator-chosen entry ID. */
export function checkEntryId(value: unknown): string {
  if (typeof value !== "string") throw invalid("entry id must be a string");
  if (value.length === 0 || value.length > MAX_ENTRY_ID_LENGTH || !ENTRY_ID_RE.test(value)) {
    throw invalid(`entry id must be 1-${MAX_ENTRY_ID_LENGTH} characters of A-Z a-z 0-9 . _ ~ -`);
  }
  return value;
}

/** A registration entry's stored values, validated and normalised. */
export interface NormalizedEntry {
  readonly spiffeId: string;
  readonly parentId: string;
  readonly selectors: readonly Selector[];
  /** Hex SHA-256 of the canonical selector set: the uniqueness key, index-friendly on every SQL engine. */
  readonly selectorsHash: string;
  readonly x509SvidTtl: number;
  readonly jwtSvidTtl: number;
  readonly dnsNames: readonly string[];
  readonly federatesWith: readonly string[];
  readonly admin: boolean;
  readonly downstream: boolean;
  readonly hint: string;
  readonly expiresAt: number | null;
}

/** Hex SHA-256 over canonical selectors joined by newlines (selectors cannot contain one). */
export function selectorSetHash(selectors: readonly Selector[]): string {
  return createHash("sha256").update(selectors.map(formatSelector).join("\n")).digest("hex");
}

/** Validates and normalises an entry's fields (not its ID). */
export function normalizeEntry(input: EntryInput): NormalizedEntry {
  if (input === null || typeof input !== "object") throw invalid("entry must be an object");
  const selectors = checkSelectors("entry selectors", input.selectors, false);
  const expiresAt = input.expiresAt === undefined || input.expiresAt === null ? null : checkTime("entry expiresAt", input.expiresAt);
  return {
    spiffeId: checkSpiffeId("entry spiffeId", input.spiffeId),
    parentId: checkSpiffeId("entry parentId", input.parentId),
    selectors,
    selectorsHash: selectorSetHash(selectors),
    x509SvidTtl: checkTtl("entry x509SvidTtl", input.x509SvidTtl ?? 0),
    jwtSvidTtl: checkTtl("entry jwtSvidTtl", input.jwtSvidTtl ?? 0),
    dnsNames: checkList("entry dnsNames", input.dnsNames ?? [], checkDnsName),
    federatesWith: checkList("entry federatesWith", input.federatesWith ?? [], checkTrustDomainName).sort(),
    admin: checkBool("entry admin", input.admin ?? false),
    downstream: checkBool("entry downstream", input.downstream ?? false),
    hint: checkText("entry hint", input.hint ?? "", MAX_HINT_BYTES),
    expiresAt,
  };
}

/** An attested agent's stored values, validated and normalised. */
export interface NormalizedAgent {
  readonly spiffeId: string;
  readonly attestationType: string;
  readonly selectors: readonly Selector[];
  readonly certSerial: string;
  readonly certNotAfter: number;
  readonly newCertSerial: string | null;
  readonly newCertNotAfter: number | null;
  readonly canReattest: boolean;
  readonly banned: boolean;
}

/** Validates and normalises an agent's fields. `certSerial` may be `""` only for a banned agent. */
export function normalizeAgent(input: AgentInput & { readonly banned?: boolean }): NormalizedAgent {
  if (input === null || typeof input !== "object") throw invalid("agent must be an object");
  const banned = checkBool("agent banned", input.banned ?? false);
  const attestationType = input.attestationType;
  if (typeof attestationType !== "string" || !SHORT_NAME_RE.test(attestationType)) {
    throw invalid("agent attestationType must be 1-128 characters of A-Z a-z 0-9 . _ -");
  }
  const serial = (what: string, v: unknown, allowEmpty: boolean): string => {
    if (typeof v !== "string" || !(SERIAL_RE.test(v) || (allowEmpty && v === ""))) {
      throw invalid(`${what} must be 1-128 characters of A-Z a-z 0-9 :`);
    }
    return v;
  };
  const newSerial = input.newCertSerial ?? null;
  const newNotAfter = input.newCertNotAfter ?? null;
  return {
    spiffeId: checkSpiffeId("agent spiffeId", input.spiffeId),
    attestationType,
    selectors: checkSelectors("agent selectors", input.selectors ?? [], true),
    certSerial: serial("agent certSerial", input.certSerial, banned),
    certNotAfter: checkTime("agent certNotAfter", input.certNotAfter),
    newCertSerial: newSerial === null ? null : serial("agent newCertSerial", newSerial, false),
    newCertNotAfter: newNotAfter === null ? null : checkTime("agent newCertNotAfter", newNotAfter),
    canReattest: checkBool("agent canReattest", input.canReattest ?? false),
    banned,
  };
}

/** Checks a join token's syntax. */
export function checkJoinToken(token: unknown): string {
  if (typeof token !== "string" || token.length === 0 || token.length > MAX_JOIN_TOKEN_LENGTH || !JOIN_TOKEN_RE.test(token)) {
    throw invalid(`join token must be 1-${MAX_JOIN_TOKEN_LENGTH} characters of A-Z a-z 0-9 . _ -`);
  }
  return token;
}

/**
 * The stored key of a join token: its SHA-256. The database never holds a
 * usable token, and lookups by hash do not depend on the secret's bytes.
 */
export function joinTokenKey(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/** A join token's stored values. */
export interface NormalizedJoinToken {
  readonly key: string;
  readonly expiresAt: number;
  readonly agentId: string | null;
}

/** Validates a join token for storage. */
export function normalizeJoinToken(input: JoinTokenInput): NormalizedJoinToken {
  if (input === null || typeof input !== "object") throw invalid("join token must be an object");
  return {
    key: joinTokenKey(checkJoinToken(input.token)),
    expiresAt: checkTime("join token expiresAt", input.expiresAt),
    agentId: input.agentId === undefined ? null : checkSpiffeId("join token agentId", input.agentId),
  };
}

/** Checks a bundle sequence (a decimal string or a bigint): an unsigned 64-bit integer, returned as decimal text. */
export function checkSequence(what: string, value: unknown): string {
  if (typeof value === "bigint" && value >= 0n && value <= UINT64_MAX) return value.toString();
  if (typeof value !== "string" || !UINT64_RE.test(value) || BigInt(value) > UINT64_MAX) {
    throw invalid(`${what} must be a decimal unsigned 64-bit integer, got ${JSON.stringify(String(value).slice(0, 40))}`);
  }
  return value;
}

/** Validates a bundle for storage: a bare trust-domain name and a JSON object with a `keys` array. */
export function normalizeBundle(input: BundleInput): { readonly trustDomain: string; readonly document: string; readonly sequence: string } {
  if (input === null || typeof input !== "object") throw invalid("bundle must be an object");
  const trustDomain = checkTrustDomainName("bundle trustDomain", input.trustDomain);
  const doc: unknown = input.document;
  if (typeof doc !== "string") throw invalid("bundle document must be a string");
  if (Buffer.byteLength(doc, "utf8") > MAX_BUNDLE_DOCUMENT_BYTES) {
    throw invalid(`bundle document is larger than ${MAX_BUNDLE_DOCUMENT_BYTES} bytes`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(doc);
  } catch (e) {
    throw invalid(`bundle document for ${trustDomain} is not JSON: ${describe(e)}`, e);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed) || !Array.isArray((parsed as { keys?: unknown }).keys)) {
    throw invalid(`bundle document for ${trustDomain} must be a JSON object with a "keys" array`);
  }
  return { trustDomain, document: doc, sequence: checkSequence("bundle sequence", input.sequence) };
}

/** Longest bundle endpoint URL, in bytes. */
export const MAX_BUNDLE_ENDPOINT_URL_BYTES = 2048;

/** A federation relationship's stored values. */
export interface NormalizedFederationRelationship {
  readonly trustDomain: string;
  readonly bundleEndpointUrl: string;
  readonly profile: BundleEndpointProfileName;
  /** "" for `https_web`. */
  readonly endpointSpiffeId: string;
  readonly source: RelationshipSource;
}

/**
 * Validates a federation relationship for storage: a bare trust-domain name,
 * an `https` URL without userinfo (FED-11), a known profile, and an endpoint
 * SPIFFE ID exactly when the profile is `https_spiffe` (FED-20).
 */
export function normalizeFederationRelationship(input: FederationRelationshipInput): NormalizedFederationRelationship {
  if (input === null || typeof input !== "object") throw invalid("federation relationship must be an object");
  const trustDomain = checkTrustDomainName("federation relationship trustDomain", input.trustDomain);
  const url: unknown = input.bundleEndpointUrl;
  if (typeof url !== "string" || url.length === 0) throw invalid("federation relationship bundleEndpointUrl must be a non-empty string");
  if (Buffer.byteLength(url, "utf8") > MAX_BUNDLE_ENDPOINT_URL_BYTES) throw invalid(`federation relationship bundleEndpointUrl is longer than ${MAX_BUNDLE_ENDPOINT_URL_BYTES} bytes`);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (e) {
    throw invalid(`federation relationship bundleEndpointUrl ${JSON.stringify(url.slice(0, 100))} is not a URL`, e);
  }
  if (parsed.protocol !== "https:") throw invalid(`federation relationship bundleEndpointUrl must use https, got ${parsed.protocol.replace(/:$/, "")}`);
  if (parsed.username !== "" || parsed.password !== "") throw invalid("federation relationship bundleEndpointUrl must not contain userinfo");
  const profile: unknown = input.profile;
  if (!BUNDLE_ENDPOINT_PROFILES.includes(profile as BundleEndpointProfileName)) {
    throw invalid(`federation relationship profile must be one of ${BUNDLE_ENDPOINT_PROFILES.join(", ")}, got ${JSON.stringify(String(profile).slice(0, 40))}`);
  }
  let endpointSpiffeId = "";
  if (profile === "https_spiffe") {
    if (input.endpointSpiffeId === undefined) throw invalid("federation relationship endpointSpiffeId is required for https_spiffe");
    endpointSpiffeId = checkSpiffeId("federation relationship endpointSpiffeId", input.endpointSpiffeId);
  } else if (input.endpointSpiffeId !== undefined) {
    throw invalid("federation relationship endpointSpiffeId is only for https_spiffe");
  }
  const source: unknown = input.source ?? "api";
  if (source !== "api" && source !== "config") throw invalid('federation relationship source must be "api" or "config"');
  return { trustDomain, bundleEndpointUrl: url, profile: profile as BundleEndpointProfileName, endpointSpiffeId, source };
}

const CA_KINDS: readonly CaKeyKind[] = ["x509", "jwt"];
const CA_STATUSES: readonly CaSlotStatus[] = ["prepared", "active", "old", "tainted", "revoked"];

/** A CA journal record's stored values. */
export interface NormalizedCaJournal {
  readonly serverId: string;
  readonly kind: CaKeyKind;
  readonly slotId: string;
  readonly keyId: string;
  readonly status: CaSlotStatus;
  readonly publicKeyDer: Buffer;
  readonly certDer: Buffer | null;
  /** JSON array of base64 DER. */
  readonly chainDers: string;
  /** JSON array of base64 DER. */
  readonly rootDers: string;
  readonly notBefore: number;
  readonly notAfter: number;
}

function checkDer(what: string, v: unknown): Buffer {
  if (!(v instanceof Uint8Array) || v.length === 0) throw invalid(`${what} must be non-empty DER bytes`);
  return Buffer.from(v);
}

function checkDerList(what: string, v: unknown): string {
  if (v === undefined) return "[]";
  if (!Array.isArray(v)) throw invalid(`${what} must be an array of DER byte arrays`);
  return JSON.stringify((v as unknown[]).map((d, i) => checkDer(`${what}[${i}]`, d).toString("base64")));
}

/** Validates a CA journal record. */
export function normalizeCaJournal(input: CaJournalInput): NormalizedCaJournal {
  if (input === null || typeof input !== "object") throw invalid("ca journal record must be an object");
  if (!CA_KINDS.includes(input.kind)) throw invalid(`ca journal kind must be one of ${CA_KINDS.join(", ")}`);
  if (!CA_STATUSES.includes(input.status)) throw invalid(`ca journal status must be one of ${CA_STATUSES.join(", ")}`);
  const serverId = input.serverId ?? "";
  if (typeof serverId !== "string" || !/^[A-Za-z0-9._-]{0,64}$/.test(serverId)) throw invalid("ca journal serverId must be 0-64 characters of A-Z a-z 0-9 . _ -");
  if (typeof input.slotId !== "string" || !/^[A-Za-z0-9_-]{1,32}$/.test(input.slotId)) {
    throw invalid("ca journal slotId must be 1-32 characters of A-Z a-z 0-9 _ -");
  }
  const keyId = checkText("ca journal keyId", input.keyId, 256);
  if (keyId.length === 0) throw invalid("ca journal keyId is empty");
  const cert = input.certDer ?? null;
  if (input.kind === "x509" && cert === null) throw invalid("ca journal x509 slot needs its CA certificate (certDer)");
  if (input.kind === "jwt" && (cert !== null || (input.chainDers ?? []).length > 0 || (input.rootDers ?? []).length > 0)) {
    throw invalid("ca journal jwt slot has no certificates");
  }
  const notBefore = checkTime("ca journal notBefore", input.notBefore);
  const notAfter = checkTime("ca journal notAfter", input.notAfter);
  if (notAfter <= notBefore) throw invalid("ca journal notAfter must be after notBefore");
  return {
    serverId,
    kind: input.kind,
    slotId: input.slotId,
    keyId,
    status: input.status,
    publicKeyDer: checkDer("ca journal publicKeyDer", input.publicKeyDer),
    certDer: cert === null ? null : checkDer("ca journal certDer", cert),
    chainDers: checkDerList("ca journal chainDers", input.chainDers),
    rootDers: checkDerList("ca journal rootDers", input.rootDers),
    notBefore,
    notAfter,
  };
}

const HEX_SERIAL_RE = /^[0-9A-Fa-f]{1,64}$/;
const REQUESTED_BY_RE = /^[a-z][a-z0-9_-]{0,31}:./;
/** Longest canonical serial, in hex digits (20 octets, RFC 5280 §4.1.2.2). */
const MAX_SERIAL_HEX_DIGITS = 40;

/**
 * A serial number as canonical hex: lowercase, no leading zeros (`"0"` for
 * zero). Accepts either case and leading zeros (e.g. a DER sign octet).
 */
export function checkSerialHex(what: string, value: unknown): string {
  if (typeof value !== "string" || !HEX_SERIAL_RE.test(value)) throw invalid(`${what} must be 1-64 hex digits`);
  const canonical = canonicalSerialHex(value);
  if (canonical.length > MAX_SERIAL_HEX_DIGITS) throw invalid(`${what} is longer than 20 octets (${MAX_SERIAL_HEX_DIGITS} hex digits)`);
  return canonical;
}

/** Text of at most `maxBytes` UTF-8 bytes, without control characters, not empty. */
export function checkNonEmptyText(what: string, value: unknown, maxBytes: number): string {
  const text = checkText(what, value, maxBytes);
  if (text.length === 0) throw invalid(`${what} is empty`);
  return text;
}

/** An issuance record's stored values. */
export interface NormalizedIssuance {
  readonly serial: string;
  readonly kind: IssuanceKind;
  readonly spiffeId: string;
  readonly entryId: string | null;
  readonly agentId: string | null;
  readonly caKeyId: string;
  readonly notBefore: number;
  readonly notAfter: number;
  readonly issuedAt: number;
  /** JSON array of canonical `type:value`, sorted and de-duplicated. */
  readonly selectors: string;
  readonly requestedBy: string;
  readonly jwtId: string | null;
  /** JSON array, or `null` for non-JWT kinds. */
  readonly audience: string | null;
}

/** Validates an issuance record; `index` (its place in a batch) is named in messages. */
export function normalizeIssuance(input: IssuanceInput, index: number): NormalizedIssuance {
  const at = `issuance[${index}]`;
  if (input === null || typeof input !== "object") throw invalid(`${at} must be an object`);
  if (!ISSUANCE_KINDS.includes(input.kind)) throw invalid(`${at} kind must be one of ${ISSUANCE_KINDS.join(", ")}`);
  const notBefore = checkTime(`${at} notBefore`, input.notBefore);
  const notAfter = checkTime(`${at} notAfter`, input.notAfter);
  if (notAfter <= notBefore) throw invalid(`${at} notAfter must be after notBefore`);
  if (!Array.isArray(input.selectors)) throw invalid(`${at} selectors must be an array of type:value strings`);
  const selectors = normalizeSelectors(
    (input.selectors as unknown[]).map((s, i) => {
      if (typeof s !== "string") throw invalid(`${at} selectors[${i}] must be a type:value string`);
      try {
        return parseSelector(s);
      } catch (e) {
        throw invalid(`${at} selectors[${i}]: ${describe(e)}`, e);
      }
    }),
  ).map(formatSelector);
  const requestedBy = checkText(`${at} requestedBy`, input.requestedBy, 2048);
  if (!REQUESTED_BY_RE.test(requestedBy)) throw invalid(`${at} requestedBy must be <kind>:<principal>, e.g. "admin:local"`);
  let jwtId: string | null = null;
  let audience: string | null = null;
  if (input.kind === "jwt-svid") {
    jwtId = input.jwtId === undefined || input.jwtId === null ? null : checkNonEmptyText(`${at} jwtId`, input.jwtId, 256);
    const aud = checkList(`${at} audience`, input.audience ?? [], (w, v) => checkNonEmptyText(w, v, 1024));
    if (aud.length === 0) throw invalid(`${at} jwt-svid needs a non-empty audience`);
    audience = JSON.stringify(aud);
  } else if ((input.jwtId !== undefined && input.jwtId !== null) || input.audience !== undefined) {
    throw invalid(`${at} jwtId and audience apply to jwt-svid records only (kind is ${input.kind})`);
  }
  return {
    serial: checkSerialHex(`${at} serial`, input.serial),
    kind: input.kind,
    spiffeId: checkSpiffeId(`${at} spiffeId`, input.spiffeId),
    entryId: input.entryId === null ? null : checkEntryIdAt(`${at} entryId`, input.entryId),
    agentId: input.agentId === null ? null : checkSpiffeId(`${at} agentId`, input.agentId),
    caKeyId: checkNonEmptyText(`${at} caKeyId`, input.caKeyId, 256),
    notBefore,
    notAfter,
    issuedAt: checkTime(`${at} issuedAt`, input.issuedAt),
    selectors: JSON.stringify(selectors),
    requestedBy,
    jwtId,
    audience,
  };
}

function checkEntryIdAt(what: string, value: unknown): string {
  try {
    return checkEntryId(value);
  } catch (e) {
    throw invalid(`${what}: ${describe(e).replace(/^datastore: /, "")}`, e);
  }
}
