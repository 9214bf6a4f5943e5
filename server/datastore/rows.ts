/**
 * Row mapping shared by every SQL driver (SQLite, PostgreSQL, MySQL): the
 * stored columns have the same names and meanings on every engine (times as
 * Unix milliseconds, booleans as 0/1, lists as JSON text), so one set of
 * functions turns rows into the objects the `Datastore` returns, and applies
 * update field masks.
 */
import { Selector, compareSelectors } from "../../common/selector.js";
import { SigilError } from "../../spiffe/errors.js";
import type { AttestedAgent } from "./agent.js";
import type { BundleDeleteMode, StoredBundle } from "./bundle.js";
import type { CaJournalRecord, CaKeyKind } from "./ca-journal.js";
import type { RegistrationEntry } from "./entry.js";
import type { FederationRelationship } from "./federation-relationship.js";
import type { IssuanceKind, IssuanceRecord } from "./issuance.js";
import type { ConsumedJoinToken } from "./join-token.js";
import { invalid } from "./validate.js";

/** A `registration_entries` row (the columns every engine has). */
export interface EntryRowBase {
  row_id: number;
  id: string;
  spiffe_id: string;
  parent_id: string;
  x509_svid_ttl: number;
  jwt_svid_ttl: number;
  dns_names: string;
  admin: number;
  downstream: number;
  hint: string;
  expires_at: number | null;
  created_at: number;
  updated_at: number;
  revision: number;
}

/** An `attested_agents` row. */
export interface AgentRowBase {
  row_id: number;
  spiffe_id: string;
  attestation_type: string;
  cert_serial: string;
  cert_not_after: number;
  new_cert_serial: string | null;
  new_cert_not_after: number | null;
  can_reattest: number;
  banned: number;
  created_at: number;
  updated_at: number;
}

/** A `bundles` row. */
export interface BundleRow {
  trust_domain: string;
  document: string;
  sequence: string;
  created_at: number;
  updated_at: number;
}

/** A `federation_relationships` row. */
export interface FederationRelationshipRow {
  trust_domain: string;
  bundle_endpoint_url: string;
  profile: FederationRelationship["profile"];
  endpoint_spiffe_id: string;
  source: FederationRelationship["source"];
  created_at: number;
  updated_at: number;
}

/** A `ca_journal` row. */
export interface CaJournalRow {
  server_id: string;
  kind: CaKeyKind;
  slot_id: string;
  key_id: string;
  status: CaJournalRecord["status"];
  public_key: Uint8Array;
  certificate: Uint8Array | null;
  chain: string;
  roots: string;
  not_before: number;
  not_after: number;
  created_at: number;
  updated_at: number;
}

/** An issuance row joined with its context. */
export interface IssuanceRow {
  row_id: number;
  serial: string;
  kind: IssuanceKind;
  spiffe_id: string;
  /** "" when none. */
  entry_id: string;
  /** "" when none. */
  agent_id: string;
  ca_key_id: string;
  not_before: number;
  not_after: number;
  issued_at: number;
  selectors: string;
  requested_by: string;
  jwt_id: string | null;
  /** "" unless a jwt-svid. */
  audience: string;
}

/** A selector child row. */
export interface SelectorMemberRow {
  owner_row: number;
  type: string;
  value: string;
}

/** Groups child rows by owner row. */
export function groupByOwner<R extends { owner_row: number }>(rows: readonly R[]): Map<number, R[]> {
  const out = new Map<number, R[]>();
  for (const r of rows) {
    const owner = Number(r.owner_row);
    let list = out.get(owner);
    if (list === undefined) out.set(owner, (list = []));
    list.push(r);
  }
  return out;
}

/** Selectors of one owner, in canonical order. */
export function selectorsOf(members: readonly { type: string; value: string }[] | undefined): Selector[] {
  return (members ?? []).map((m) => Selector.fromValidated(m.type, m.value)).sort(compareSelectors);
}

/** An entry from its row and its child rows. */
export function toEntry(r: EntryRowBase, selectors: readonly { type: string; value: string }[] | undefined, federatesWith: readonly string[] | undefined): RegistrationEntry {
  return {
    id: r.id,
    spiffeId: r.spiffe_id,
    parentId: r.parent_id,
    selectors: selectorsOf(selectors),
    x509SvidTtl: Number(r.x509_svid_ttl),
    jwtSvidTtl: Number(r.jwt_svid_ttl),
    dnsNames: JSON.parse(r.dns_names) as string[],
    federatesWith: [...(federatesWith ?? [])].sort(),
    admin: Number(r.admin) === 1,
    downstream: Number(r.downstream) === 1,
    hint: r.hint,
    expiresAt: r.expires_at === null ? null : new Date(Number(r.expires_at)),
    createdAt: new Date(Number(r.created_at)),
    updatedAt: new Date(Number(r.updated_at)),
    revision: Number(r.revision),
  };
}

/** An agent from its row and its selector rows. */
export function toAgent(r: AgentRowBase, selectors: readonly { type: string; value: string }[] | undefined): AttestedAgent {
  return {
    spiffeId: r.spiffe_id,
    attestationType: r.attestation_type,
    selectors: selectorsOf(selectors),
    certSerial: r.cert_serial,
    certNotAfter: new Date(Number(r.cert_not_after)),
    newCertSerial: r.new_cert_serial,
    newCertNotAfter: r.new_cert_not_after === null ? null : new Date(Number(r.new_cert_not_after)),
    canReattest: Number(r.can_reattest) === 1,
    banned: Number(r.banned) === 1,
    createdAt: new Date(Number(r.created_at)),
    updatedAt: new Date(Number(r.updated_at)),
  };
}

/** A stored bundle from its row. */
export function toBundle(r: BundleRow): StoredBundle {
  return { trustDomain: r.trust_domain, document: r.document, sequence: String(r.sequence), createdAt: new Date(Number(r.created_at)), updatedAt: new Date(Number(r.updated_at)) };
}

/** A federation relationship from its row. */
export function toRelationship(r: FederationRelationshipRow): FederationRelationship {
  return {
    trustDomain: r.trust_domain,
    bundleEndpointUrl: r.bundle_endpoint_url,
    profile: r.profile,
    ...(r.endpoint_spiffe_id === "" ? {} : { endpointSpiffeId: r.endpoint_spiffe_id }),
    source: r.source,
    createdAt: new Date(Number(r.created_at)),
    updatedAt: new Date(Number(r.updated_at)),
  };
}

/** A CA journal record from its row. */
export function toJournal(r: CaJournalRow): CaJournalRecord {
  const ders = (json: string): Uint8Array[] => (JSON.parse(json) as string[]).map((b) => new Uint8Array(Buffer.from(b, "base64")));
  const common = {
    serverId: r.server_id,
    kind: r.kind,
    slotId: r.slot_id,
    keyId: r.key_id,
    status: r.status,
    publicKeyDer: new Uint8Array(r.public_key),
    chainDers: ders(r.chain),
    rootDers: ders(r.roots),
    notBefore: new Date(Number(r.not_before)),
    notAfter: new Date(Number(r.not_after)),
    createdAt: new Date(Number(r.created_at)),
    updatedAt: new Date(Number(r.updated_at)),
  };
  return r.certificate === null ? common : { ...common, certDer: new Uint8Array(r.certificate) };
}

/** An issuance record from its joined row. */
export function toIssuance(r: IssuanceRow): IssuanceRecord {
  const record: IssuanceRecord = {
    serial: r.serial,
    kind: r.kind,
    spiffeId: r.spiffe_id,
    entryId: r.entry_id || null,
    agentId: r.agent_id || null,
    caKeyId: r.ca_key_id,
    notBefore: new Date(Number(r.not_before)),
    notAfter: new Date(Number(r.not_after)),
    issuedAt: new Date(Number(r.issued_at)),
    selectors: JSON.parse(r.selectors) as string[],
    requestedBy: r.requested_by,
  };
  return r.kind === "jwt-svid" ? { ...record, jwtId: r.jwt_id, audience: JSON.parse(r.audience || "[]") as string[] } : record;
}

/** The refusal of a join token that is unknown or already used. */
export function joinTokenNotFound(): SigilError {
  return new SigilError("ERR_NOT_FOUND", "datastore: join token not found or already used");
}

/** The columns of a `join_tokens` row a token's use reads. */
export interface JoinTokenRow {
  expires_at: number;
  agent_id: string | null;
}

/**
 * The token a `join_tokens` row holds, if it is usable at `at` (Unix ms); the
 * one refusal every engine and every use (peek, consume, spend on agent
 * create) gives otherwise.
 *
 * @throws `ERR_NOT_FOUND` for no row; `ERR_PERMISSION_DENIED` when expired
 */
export function usableJoinToken(row: JoinTokenRow | undefined, at: number): ConsumedJoinToken {
  if (row === undefined) throw joinTokenNotFound();
  // Expiry is exclusive: at expiresAt the token is expired.
  if (Number(row.expires_at) <= at) throw new SigilError("ERR_PERMISSION_DENIED", "datastore: join token expired");
  const expiresAt = new Date(Number(row.expires_at));
  return row.agent_id === null ? { expiresAt } : { expiresAt, agentId: row.agent_id };
}

/** Refuses a bundle delete mode other than `restrict` or `dissociate`. */
export function checkDeleteMode(mode: BundleDeleteMode): void {
  if (mode !== "restrict" && mode !== "dissociate") throw invalid('bundle delete mode must be "restrict" or "dissociate"');
}

/** An `ERR_NOT_FOUND` datastore error. */
export function notFound(what: string): SigilError {
  return new SigilError("ERR_NOT_FOUND", `datastore: ${what} not found`);
}

/** `setBundle` with `relationshipUpdatedAt`: the relationship the bundle was fetched for is gone or was edited. */
export function relationshipChanged(trustDomain: string): SigilError {
  return new SigilError("ERR_FAILED_PRECONDITION", `datastore: the federation relationship with ${trustDomain} was deleted or changed since its bundle was fetched; bundle not stored`);
}

/** Resolves a field mask: explicit, or the known fields present in `changes`. */
export function resolveMask<F extends string>(what: string, known: readonly F[], changes: object, mask: readonly F[] | undefined): F[] {
  if (changes === null || typeof changes !== "object") throw invalid(`${what} changes must be an object`);
  for (const key of Object.keys(changes)) {
    if (!known.includes(key as F)) throw invalid(`${what} update: unknown field ${JSON.stringify(key)}`);
  }
  let fields: F[];
  if (mask === undefined) {
    fields = (Object.keys(changes) as F[]).filter((k) => (changes as Record<string, unknown>)[k] !== undefined);
  } else {
    if (!Array.isArray(mask)) throw invalid(`${what} update mask must be an array`);
    for (const f of mask) if (!known.includes(f)) throw invalid(`${what} update mask: unknown field ${JSON.stringify(f)}`);
    fields = [...new Set(mask)];
  }
  if (fields.length === 0) throw invalid(`${what} update changes nothing (empty field mask)`);
  return fields;
}

/**
 * Applies masked fields of `changes` onto `current`. A masked field absent
 * from `changes` is removed (its zero value applies), except `required` ones.
 */
export function applyMask<T extends object>(what: string, current: T, changes: object, fields: readonly string[], required: readonly string[]): T {
  const merged: Record<string, unknown> = { ...(current as Record<string, unknown>) };
  const src = changes as Record<string, unknown>;
  for (const f of fields) {
    if (src[f] !== undefined) merged[f] = src[f];
    else if (required.includes(f)) throw invalid(`${what} update masks ${f} but gives no value for it`);
    else delete merged[f];
  }
  return merged as T;
}
