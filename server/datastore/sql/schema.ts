/**
 * The tables of the network SQL datastores (PostgreSQL, MySQL/MariaDB) as
 * Kysely sees them. Times are BIGINT Unix milliseconds and booleans SMALLINT
 * 0/1, as in the SQLite schema, so rows map to objects the same way on every
 * engine. Driver options make BIGINT arrive as a JavaScript number and the
 * DECIMAL bundle sequence as decimal text.
 */
import type { Generated } from "kysely";
import type { ChangeKind } from "../change-event.js";

/** `registration_entries`. */
export interface EntryTable {
  row_id: Generated<number>;
  id: string;
  spiffe_id: string;
  parent_id: string;
  selectors_hash: string;
  /** SHA-256 of (spiffe_id, parent_id, selectors_hash): the UNIQUE key (an index key short enough for MySQL). */
  identity_hash: string;
  selector_count: number;
  federates_with_count: number;
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

/** `entry_selectors` and `agent_selectors`: one row per selector of the owner. */
export interface SelectorTable {
  owner_row: number;
  type: string;
  value: string;
}

/** `entry_federates_with`. */
export interface FederatesWithTable {
  owner_row: number;
  trust_domain: string;
}

/** `attested_agents`. */
export interface AgentTable {
  row_id: Generated<number>;
  spiffe_id: string;
  attestation_type: string;
  selector_count: number;
  cert_serial: string;
  cert_not_after: number;
  new_cert_serial: string | null;
  new_cert_not_after: number | null;
  can_reattest: number;
  banned: number;
  created_at: number;
  updated_at: number;
}

/** `join_tokens`, keyed by the token's SHA-256. */
export interface JoinTokenTable {
  token_hash: string;
  expires_at: number;
  agent_id: string | null;
  created_at: number;
}

/** `bundles`. */
export interface BundleTable {
  trust_domain: string;
  document: string;
  /** DECIMAL(20, 0): written and read as decimal text. */
  sequence: string;
  created_at: number;
  updated_at: number;
}

/** `federation_relationships`. */
export interface FederationRelationshipTable {
  trust_domain: string;
  bundle_endpoint_url: string;
  profile: "https_web" | "https_spiffe";
  endpoint_spiffe_id: string;
  source: "api" | "config";
  created_at: number;
  updated_at: number;
}

/** `ca_journal`: one row per (server instance, kind, slot). */
export interface CaJournalTable {
  /** Empty for rows written before migration 2. */
  server_id: string;
  kind: "x509" | "jwt";
  slot_id: string;
  key_id: string;
  status: "prepared" | "active" | "old" | "tainted" | "revoked";
  public_key: Buffer;
  certificate: Buffer | null;
  chain: string;
  roots: string;
  not_before: number;
  not_after: number;
  created_at: number;
  updated_at: number;
}

/** `change_events`. */
export interface ChangeEventTable {
  event_id: Generated<number>;
  kind: ChangeKind;
  object_id: string;
  op: "create" | "update" | "delete";
  at: number;
}

/** `issuance_contexts`: what credentials share, stored once. */
export interface IssuanceContextTable {
  context_id: Generated<number>;
  /** SHA-256 of the context's fields: the UNIQUE key. */
  context_hash: string;
  kind: "x509-svid" | "jwt-svid" | "agent-svid";
  spiffe_id: string;
  entry_id: string;
  agent_id: string;
  ca_key_id: string;
  selectors: string;
  requested_by: string;
  audience: string;
}

/** `issuances`: one small row per credential. */
export interface IssuanceTable {
  row_id: Generated<number>;
  context_id: number;
  serial: string;
  not_before: number;
  not_after: number;
  issued_at: number;
  jwt_id: string | null;
}

/** `schema_migrations`. */
export interface SchemaMigrationTable {
  version: number;
  name: string;
  applied_at: number;
}

/** `tlog_entries`: transparency-log entries by contiguous index. */
export interface TlogEntryTable {
  idx: number;
  lookup_key: string;
  entry: Buffer;
}

/** `tlog_counter`: one row (`id` 0) holding the next log index. */
export interface TlogCounterTable {
  id: number;
  next_idx: number;
}

/** `tlog_checkpoints`: checkpoints each server signed. */
export interface TlogCheckpointTable {
  server_id: string;
  tree_size: number;
  root_hash: Buffer;
  note: string;
  created_at: number;
}

/** `tlog_keys`: each server's log keys. */
export interface TlogKeyTable {
  server_id: string;
  key_id: string;
  vkey: string;
  created_at: number;
  retired_at: number | null;
}

/** `tlog_witness_checkpoints`: the latest checkpoint of each log this server witnesses. */
export interface WitnessCheckpointTable {
  origin: string;
  tree_size: number;
  root_hash: Buffer;
  note: string;
  updated_at: number;
}

/** Every table, by name. */
export interface SqlSchema {
  registration_entries: EntryTable;
  entry_selectors: SelectorTable;
  entry_federates_with: FederatesWithTable;
  attested_agents: AgentTable;
  agent_selectors: SelectorTable;
  join_tokens: JoinTokenTable;
  bundles: BundleTable;
  federation_relationships: FederationRelationshipTable;
  ca_journal: CaJournalTable;
  change_events: ChangeEventTable;
  issuance_contexts: IssuanceContextTable;
  issuances: IssuanceTable;
  schema_migrations: SchemaMigrationTable;
  tlog_entries: TlogEntryTable;
  tlog_counter: TlogCounterTable;
  tlog_checkpoints: TlogCheckpointTable;
  tlog_keys: TlogKeyTable;
  tlog_witness_checkpoints: WitnessCheckpointTable;
}
