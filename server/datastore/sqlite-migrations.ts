/**
 * The SQLite schema, as an ordered list of versioned migrations. A released
 * migration is never edited: a schema change is a new migration at the end.
 *
 * Times are INTEGER Unix milliseconds. Child rows (selectors, federated trust
 * domains) reference their owner's INTEGER `row_id`, which also gives lists
 * their stable creation order for pagination.
 */
import type { Migration } from "./migrate.js";

/** Every SQLite migration, in version order. */
export const SQLITE_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "initial schema",
    sql: `
CREATE TABLE bundles (
  trust_domain TEXT PRIMARY KEY,
  document     TEXT NOT NULL,
  sequence     TEXT NOT NULL,
  created_at   INTEGER NOT NULL,
  updated_at   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE registration_entries (
  row_id               INTEGER PRIMARY KEY AUTOINCREMENT,
  id                   TEXT NOT NULL UNIQUE,
  spiffe_id            TEXT NOT NULL,
  parent_id            TEXT NOT NULL,
  selectors_hash       TEXT NOT NULL,
  selector_count       INTEGER NOT NULL CHECK (selector_count > 0),
  federates_with_count INTEGER NOT NULL CHECK (federates_with_count >= 0),
  x509_svid_ttl        INTEGER NOT NULL CHECK (x509_svid_ttl >= 0),
  jwt_svid_ttl         INTEGER NOT NULL CHECK (jwt_svid_ttl >= 0),
  dns_names            TEXT NOT NULL,
  admin                INTEGER NOT NULL CHECK (admin IN (0, 1)),
  downstream           INTEGER NOT NULL CHECK (downstream IN (0, 1)),
  hint                 TEXT NOT NULL,
  expires_at           INTEGER,
  created_at           INTEGER NOT NULL,
  updated_at           INTEGER NOT NULL,
  revision             INTEGER NOT NULL CHECK (revision >= 0)
) STRICT;
CREATE UNIQUE INDEX registration_entries_identity ON registration_entries (spiffe_id, parent_id, selectors_hash);
CREATE INDEX registration_entries_parent_id ON registration_entries (parent_id);
CREATE INDEX registration_entries_expires_at ON registration_entries (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE entry_selectors (
  owner_row INTEGER NOT NULL REFERENCES registration_entries (row_id) ON DELETE CASCADE,
  type      TEXT NOT NULL,
  value     TEXT NOT NULL,
  PRIMARY KEY (owner_row, type, value)
) STRICT, WITHOUT ROWID;
CREATE INDEX entry_selectors_type_value ON entry_selectors (type, value);

CREATE TABLE entry_federates_with (
  owner_row    INTEGER NOT NULL REFERENCES registration_entries (row_id) ON DELETE CASCADE,
  trust_domain TEXT NOT NULL REFERENCES bundles (trust_domain),
  PRIMARY KEY (owner_row, trust_domain)
) STRICT, WITHOUT ROWID;
CREATE INDEX entry_federates_with_trust_domain ON entry_federates_with (trust_domain);

CREATE TABLE attested_agents (
  row_id             INTEGER PRIMARY KEY AUTOINCREMENT,
  spiffe_id          TEXT NOT NULL UNIQUE,
  attestation_type   TEXT NOT NULL,
  selector_count     INTEGER NOT NULL CHECK (selector_count >= 0),
  cert_serial        TEXT NOT NULL,
  cert_not_after     INTEGER NOT NULL,
  new_cert_serial    TEXT,
  new_cert_not_after INTEGER,
  can_reattest       INTEGER NOT NULL CHECK (can_reattest IN (0, 1)),
  banned             INTEGER NOT NULL CHECK (banned IN (0, 1)),
  created_at         INTEGER NOT NULL,
  updated_at         INTEGER NOT NULL
) STRICT;
CREATE INDEX attested_agents_attestation_type ON attested_agents (attestation_type);
CREATE INDEX attested_agents_cert_not_after ON attested_agents (cert_not_after);

CREATE TABLE agent_selectors (
  owner_row INTEGER NOT NULL REFERENCES attested_agents (row_id) ON DELETE CASCADE,
  type      TEXT NOT NULL,
  value     TEXT NOT NULL,
  PRIMARY KEY (owner_row, type, value)
) STRICT, WITHOUT ROWID;
CREATE INDEX agent_selectors_type_value ON agent_selectors (type, value);

CREATE TABLE join_tokens (
  token_hash TEXT PRIMARY KEY,
  expires_at INTEGER NOT NULL,
  agent_id   TEXT,
  created_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);

CREATE TABLE ca_journal (
  kind        TEXT NOT NULL CHECK (kind IN ('x509', 'jwt')),
  slot_id     TEXT NOT NULL,
  key_id      TEXT NOT NULL,
  status      TEXT NOT NULL CHECK (status IN ('prepared', 'active', 'old')),
  public_key  BLOB NOT NULL,
  certificate BLOB,
  chain       TEXT NOT NULL,
  roots       TEXT NOT NULL,
  not_before  INTEGER NOT NULL,
  not_after   INTEGER NOT NULL,
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL,
  PRIMARY KEY (kind, slot_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE change_events (
  event_id  INTEGER PRIMARY KEY AUTOINCREMENT,
  kind      TEXT NOT NULL CHECK (kind IN ('entry', 'agent')),
  object_id TEXT NOT NULL,
  op        TEXT NOT NULL CHECK (op IN ('create', 'update', 'delete')),
  at        INTEGER NOT NULL
) STRICT;
CREATE INDEX change_events_at ON change_events (at);
`,
  },
  {
    version: 2,
    name: "issuance log",
    // No foreign keys: a record outlives the entry and agent it names.
    sql: `
CREATE TABLE issuances (
  row_id       INTEGER PRIMARY KEY AUTOINCREMENT,
  serial       TEXT NOT NULL CHECK (serial <> ''),
  kind         TEXT NOT NULL CHECK (kind IN ('x509-svid', 'jwt-svid', 'agent-svid')),
  spiffe_id    TEXT NOT NULL CHECK (spiffe_id <> ''),
  entry_id     TEXT,
  agent_id     TEXT,
  ca_key_id    TEXT NOT NULL CHECK (ca_key_id <> ''),
  not_before   INTEGER NOT NULL,
  not_after    INTEGER NOT NULL CHECK (not_after > not_before),
  issued_at    INTEGER NOT NULL,
  selectors    TEXT NOT NULL,
  requested_by TEXT NOT NULL CHECK (requested_by <> ''),
  jwt_id       TEXT,
  audience     TEXT
) STRICT;
CREATE INDEX issuances_spiffe_id ON issuances (spiffe_id);
CREATE INDEX issuances_entry_id ON issuances (entry_id);
CREATE INDEX issuances_agent_id ON issuances (agent_id);
CREATE INDEX issuances_serial ON issuances (serial);
CREATE INDEX issuances_not_after ON issuances (not_after);
`,
  },
  {
    version: 3,
    name: "issuance log: shared contexts",
    // What credentials of one batch share (kind, IDs, CA key, selectors,
    // requester, audience) is stored once; each credential keeps a small row.
    // "" stands for an absent entry, agent or audience so the UNIQUE key holds.
    // Context IDs are AUTOINCREMENT: writers remember them, so a pruned ID must never come back.
    sql: `
CREATE TABLE issuance_contexts (
  context_id   INTEGER PRIMARY KEY AUTOINCREMENT,
  kind         TEXT NOT NULL CHECK (kind IN ('x509-svid', 'jwt-svid', 'agent-svid')),
  spiffe_id    TEXT NOT NULL CHECK (spiffe_id <> ''),
  entry_id     TEXT NOT NULL,
  agent_id     TEXT NOT NULL,
  ca_key_id    TEXT NOT NULL CHECK (ca_key_id <> ''),
  selectors    TEXT NOT NULL,
  requested_by TEXT NOT NULL CHECK (requested_by <> ''),
  audience     TEXT NOT NULL,
  UNIQUE (spiffe_id, entry_id, agent_id, ca_key_id, kind, selectors, requested_by, audience)
) STRICT;
CREATE INDEX issuance_contexts_entry_id ON issuance_contexts (entry_id);
CREATE INDEX issuance_contexts_agent_id ON issuance_contexts (agent_id);
INSERT INTO issuance_contexts (kind, spiffe_id, entry_id, agent_id, ca_key_id, selectors, requested_by, audience)
  SELECT DISTINCT kind, spiffe_id, COALESCE(entry_id, ''), COALESCE(agent_id, ''), ca_key_id, selectors, requested_by, COALESCE(audience, '')
  FROM issuances;
CREATE TABLE issuances_v3 (
  row_id     INTEGER PRIMARY KEY AUTOINCREMENT,
  context_id INTEGER NOT NULL REFERENCES issuance_contexts (context_id),
  serial     TEXT NOT NULL CHECK (serial <> ''),
  not_before INTEGER NOT NULL,
  not_after  INTEGER NOT NULL CHECK (not_after > not_before),
  issued_at  INTEGER NOT NULL,
  jwt_id     TEXT
) STRICT;
INSERT INTO issuances_v3 (row_id, context_id, serial, not_before, not_after, issued_at, jwt_id)
  SELECT i.row_id, c.context_id, i.serial, i.not_before, i.not_after, i.issued_at, i.jwt_id
  FROM issuances i JOIN issuance_contexts c
    ON c.spiffe_id = i.spiffe_id AND c.entry_id = COALESCE(i.entry_id, '') AND c.agent_id = COALESCE(i.agent_id, '')
   AND c.ca_key_id = i.ca_key_id AND c.kind = i.kind AND c.selectors = i.selectors AND c.requested_by = i.requested_by
   AND c.audience = COALESCE(i.audience, '');
CREATE TEMP TABLE issuances_seq AS SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'issuances'), 0) AS seq;
DROP TABLE issuances;
ALTER TABLE issuances_v3 RENAME TO issuances;
-- Row IDs (page tokens) are never reused: keep the old table's high-water mark.
DELETE FROM sqlite_sequence WHERE name = 'issuances';
INSERT INTO sqlite_sequence (name, seq) SELECT 'issuances', MAX(seq, COALESCE((SELECT MAX(row_id) FROM issuances), 0)) FROM temp.issuances_seq;
DROP TABLE temp.issuances_seq;
CREATE INDEX issuances_serial ON issuances (serial);
CREATE INDEX issuances_context_id ON issuances (context_id);
CREATE INDEX issuances_not_after ON issuances (not_after);
`,
  },
  {
    version: 4,
    name: "federation relationships",
    // The fetched bundle lives in `bundles` under the same name; no foreign key,
    // so a relationship can exist before its first bundle is fetched.
    sql: `
CREATE TABLE federation_relationships (
  trust_domain        TEXT PRIMARY KEY,
  bundle_endpoint_url TEXT NOT NULL CHECK (bundle_endpoint_url LIKE 'https://%'),
  profile             TEXT NOT NULL CHECK (profile IN ('https_web', 'https_spiffe')),
  endpoint_spiffe_id  TEXT NOT NULL CHECK ((profile = 'https_spiffe') = (endpoint_spiffe_id <> '')),
  source              TEXT NOT NULL CHECK (source IN ('api', 'config')),
  created_at          INTEGER NOT NULL,
  updated_at          INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
`,
  },
  {
    version: 5,
    name: "ca journal per server",
    // Several servers on one database each keep their own slots; rows written before have server_id ''.
    sql: `
CREATE TABLE ca_journal_v5 (
  server_id   TEXT NOT NULL DEFAULT '',
  kind        TEXT NOT NULL CHECK (kind IN ('x509', 'jwt')),
  slot_id     TEXT NOT NULL,
  key_id      TEXT NOT NULL,
  status      TEXT NOT NULL CHECK (status IN ('prepared', 'active', 'old')),
  public_key  BLOB NOT NULL,
  certificate BLOB,
  chain       TEXT NOT NULL,
  roots       TEXT NOT NULL,
  not_before  INTEGER NOT NULL,
  not_after   INTEGER NOT NULL,
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL,
  PRIMARY KEY (server_id, kind, slot_id)
) STRICT, WITHOUT ROWID;
INSERT INTO ca_journal_v5 (server_id, kind, slot_id, key_id, status, public_key, certificate, chain, roots, not_before, not_after, created_at, updated_at)
  SELECT '', kind, slot_id, key_id, status, public_key, certificate, chain, roots, not_before, not_after, created_at, updated_at FROM ca_journal;
DROP TABLE ca_journal;
ALTER TABLE ca_journal_v5 RENAME TO ca_journal;
`,
  },
  {
    version: 6,
    name: "authority taint and revoke; issuance inventory indexes",
    // The journal's status gains 'tainted' and 'revoked' (SQLite cannot alter a CHECK: the table is rebuilt).
    // The inventory ("what still chains to key K") reads contexts by CA key, then their unexpired credentials,
    // and looks for a later credential of the same entry and agent (by entry first: an agent has many entries).
    sql: `
CREATE TABLE ca_journal_v6 (
  server_id   TEXT NOT NULL DEFAULT '',
  kind        TEXT NOT NULL CHECK (kind IN ('x509', 'jwt')),
  slot_id     TEXT NOT NULL,
  key_id      TEXT NOT NULL,
  status      TEXT NOT NULL CHECK (status IN ('prepared', 'active', 'old', 'tainted', 'revoked')),
  public_key  BLOB NOT NULL,
  certificate BLOB,
  chain       TEXT NOT NULL,
  roots       TEXT NOT NULL,
  not_before  INTEGER NOT NULL,
  not_after   INTEGER NOT NULL,
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL,
  PRIMARY KEY (server_id, kind, slot_id)
) STRICT, WITHOUT ROWID;
INSERT INTO ca_journal_v6 SELECT server_id, kind, slot_id, key_id, status, public_key, certificate, chain, roots, not_before, not_after, created_at, updated_at FROM ca_journal;
DROP TABLE ca_journal;
ALTER TABLE ca_journal_v6 RENAME TO ca_journal;
CREATE INDEX issuance_contexts_ca_key_id ON issuance_contexts (ca_key_id);
CREATE INDEX issuance_contexts_entry_agent ON issuance_contexts (entry_id, agent_id, kind);
CREATE INDEX issuances_context_not_after ON issuances (context_id, not_after);
`,
  },
  {
    version: 7,
    name: "transparency log",
    // Entries take contiguous indices from the one-row counter, in the issuance records' transaction.
    sql: `
CREATE TABLE tlog_entries (
  idx        INTEGER PRIMARY KEY,
  lookup_key TEXT NOT NULL,
  entry      BLOB NOT NULL
) STRICT;
CREATE INDEX tlog_entries_lookup_key ON tlog_entries (lookup_key);
CREATE TABLE tlog_counter (
  id       INTEGER PRIMARY KEY CHECK (id = 0),
  next_idx INTEGER NOT NULL
) STRICT;
INSERT INTO tlog_counter (id, next_idx) VALUES (0, 0);
CREATE TABLE tlog_checkpoints (
  server_id  TEXT NOT NULL,
  tree_size  INTEGER NOT NULL,
  root_hash  BLOB NOT NULL,
  note       TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (server_id, tree_size)
) STRICT, WITHOUT ROWID;
CREATE TABLE tlog_keys (
  server_id  TEXT NOT NULL,
  key_id     TEXT NOT NULL,
  vkey       TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  retired_at INTEGER,
  PRIMARY KEY (server_id, key_id)
) STRICT, WITHOUT ROWID;
`,
  },
  {
    version: 8,
    name: "bundle change events",
    // Bundle writes append change events too (the agent API's bundle cache follows them); SQLite cannot
    // alter a CHECK, so the table is rebuilt, keeping its events and the highest event ID ever given.
    sql: `
CREATE TABLE change_events_v8 (
  event_id  INTEGER PRIMARY KEY AUTOINCREMENT,
  kind      TEXT NOT NULL CHECK (kind IN ('entry', 'agent', 'bundle')),
  object_id TEXT NOT NULL,
  op        TEXT NOT NULL CHECK (op IN ('create', 'update', 'delete')),
  at        INTEGER NOT NULL
) STRICT;
INSERT INTO change_events_v8 (event_id, kind, object_id, op, at) SELECT event_id, kind, object_id, op, at FROM change_events;
CREATE TEMP TABLE change_events_seq AS SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'change_events'), 0) AS seq;
DROP TABLE change_events;
ALTER TABLE change_events_v8 RENAME TO change_events;
-- Event IDs are never reused: a follower's position stays meaningful.
DELETE FROM sqlite_sequence WHERE name = 'change_events';
INSERT INTO sqlite_sequence (name, seq) SELECT 'change_events', MAX(seq, COALESCE((SELECT MAX(event_id) FROM change_events), 0)) FROM temp.change_events_seq;
DROP TABLE temp.change_events_seq;
CREATE INDEX change_events_at ON change_events (at);
`,
  },
  {
    version: 9,
    name: "transparency log witness",
    // A witness keeps only the latest checkpoint it cosigned of each log (C2SP tlog-witness).
    sql: `
CREATE TABLE tlog_witness_checkpoints (
  origin     TEXT PRIMARY KEY,
  tree_size  INTEGER NOT NULL,
  root_hash  BLOB NOT NULL,
  note       TEXT NOT NULL,
  updated_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
`,
  },
];
