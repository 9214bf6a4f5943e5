/**
 * The load harness's database side: a fresh database per run (and, on
 * MariaDB, a user of its own so its statements can be counted apart from
 * other clients of the shared server), migrated by the real datastore, then
 * bulk-loaded with join tokens and entries by multi-row INSERTs of the rows
 * the SQL datastore itself writes (`entryValues`), and the database's own
 * statistics read before and after a measurement window.
 */
import { randomBytes } from "node:crypto";
import mysql from "mysql2/promise";
import pg from "pg";
import { systemClock } from "../../common/clock.js";
import { parseSelector } from "../../common/selector.js";
import { createMysqlDatastore } from "../../server/datastore/mysql/mysql-datastore.js";
import { createPostgresDatastore } from "../../server/datastore/postgres/postgres-datastore.js";
import { entryValues } from "../../server/datastore/sql/sql-datastore.js";
import { normalizeEntry, normalizeJoinToken } from "../../server/datastore/validate.js";
import { TEST_DATABASE_URLS } from "../../test/support/datastore.js";

/** A SQL engine the harness runs on. */
export type ScaleEngine = "postgres" | "mysql";

/** Counters read from the database's own statistics at one moment. */
export interface DbCounters {
  /** Statements (MariaDB: the bench user's SELECT/UPDATE/OTHER commands) or transactions (PostgreSQL: xact_commit + xact_rollback of the bench database). */
  readonly queries: number;
  /** PostgreSQL: index plus sequential scans on the bench database's tables (each statement touching a table scans it once or more); MariaDB: the server-wide `Questions`, other clients included. */
  readonly secondary: number;
  /** PostgreSQL: `secondary` per table (relname → scans), to see which reads a window's load is; MariaDB: empty. */
  readonly perTable: Readonly<Record<string, number>>;
}

/** A database made for one run. */
export interface BenchDatabase {
  readonly engine: ScaleEngine;
  readonly name: string;
  /** Connection string for the servers (the bench user on MariaDB). */
  readonly url: string;
  /** What {@link BenchDatabase.counters} `queries` counts, for the report. */
  readonly queriesMeasure: string;
  /** What `secondary` counts. */
  readonly secondaryMeasure: string;
  /** Reads the counters (through an administrative connection that is not itself counted). */
  counters(): Promise<DbCounters>;
  /** Runs the migrations (through the real datastore) and bulk-loads tokens and entries. */
  load(plan: LoadPlan): Promise<void>;
  /** Drops the database (and the MariaDB user); restores settings it changed. */
  drop(): Promise<void>;
}

/** What to bulk-load. */
export interface LoadPlan {
  /** Join tokens, one per simulated agent; entries are spread over their agent IDs. */
  readonly tokens: readonly string[];
  /** Total registration entries. */
  readonly entries: number;
  /** X509-SVID TTL of every entry (seconds). */
  readonly svidTtlSeconds: number;
  /** Trust domain of the agent IDs and SPIFFE IDs. */
  readonly trustDomain: string;
  /** Called after each batch with the rows written so far. */
  readonly progress?: (written: number) => void;
}

/** The SPIFFE ID an agent attested with `token` gets (no chosen agent ID). */
export function joinTokenAgentId(trustDomain: string, token: string): string {
  return `spiffe://${trustDomain}/spire/agent/join_token/${token}`;
}

/** Rows per INSERT statement: large enough to amortise round trips, small enough for MariaDB's max_allowed_packet. */
const BATCH = 1000;

/** The entry rows of `plan`, `BATCH` at a time: entry k belongs to agent k mod agents. */
function* entryBatches(plan: LoadPlan, firstRowId: number): Generator<{ entries: unknown[][]; selectors: unknown[][] }> {
  const now = Date.now();
  const agents = plan.tokens.map((t) => joinTokenAgentId(plan.trustDomain, t));
  for (let start = 0; start < plan.entries; start += BATCH) {
    const entries: unknown[][] = [];
    const selectors: unknown[][] = [];
    for (let k = start; k < Math.min(plan.entries, start + BATCH); k++) {
      const parentId = agents.length > 0 ? (agents[k % agents.length] as string) : `spiffe://${plan.trustDomain}/node/${k % 1000}`;
      const selector = parseSelector(`unix:uid:${10_000 + k}`);
      const n = normalizeEntry({ spiffeId: `spiffe://${plan.trustDomain}/scale/w${k}`, parentId, selectors: [selector], x509SvidTtl: plan.svidTtlSeconds });
      const v = entryValues(n);
      const rowId = firstRowId + k;
      entries.push([
        rowId,
        `scale-${k}-${randomBytes(4).toString("hex")}`,
        v.spiffe_id,
        v.parent_id,
        v.selectors_hash,
        v.identity_hash,
        v.selector_count,
        v.federates_with_count,
        v.x509_svid_ttl,
        v.jwt_svid_ttl,
        v.dns_names,
        v.admin,
        v.downstream,
        v.hint,
        v.expires_at,
        now,
        now,
        0,
      ]);
      selectors.push([rowId, selector.type, selector.value]);
    }
    yield { entries, selectors };
  }
}

const ENTRY_COLUMNS =
  "row_id, id, spiffe_id, parent_id, selectors_hash, identity_hash, selector_count, federates_with_count, x509_svid_ttl, jwt_svid_ttl, dns_names, admin, downstream, hint, expires_at, created_at, updated_at, revision";

/** `(…), (…)` with `$1…` (PostgreSQL) or `?` placeholders for `rows`. */
function valuesClause(rows: readonly unknown[][], engine: ScaleEngine): { text: string; params: unknown[] } {
  const params: unknown[] = [];
  const groups = rows.map((r) => `(${r.map((v) => (params.push(v), engine === "postgres" ? `$${params.length}` : "?")).join(", ")})`);
  return { text: groups.join(", "), params };
}

function tokenRows(plan: LoadPlan): unknown[][] {
  const expiresAt = new Date(Date.now() + 24 * 3600_000);
  return plan.tokens.map((token) => {
    const t = normalizeJoinToken({ token, expiresAt });
    return [t.key, t.expiresAt, t.agentId, Date.now()];
  });
}

/** Creates `sigil_scale_<random>` on `engine`. */
export async function createBenchDatabase(engine: ScaleEngine): Promise<BenchDatabase> {
  const name = `sigil_scale_${randomBytes(5).toString("hex")}`;
  return engine === "postgres" ? createPostgres(name) : createMysql(name);
}

async function createPostgres(name: string): Promise<BenchDatabase> {
  const base = TEST_DATABASE_URLS.postgres;
  // Statistics are read from the `postgres` database, so reading them does not count against the bench database.
  const admin = new pg.Client({ connectionString: `${base}/postgres` });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } catch (e) {
    await admin.end();
    throw e;
  }
  const url = `${base}/${name}`;
  return {
    engine: "postgres",
    name,
    url,
    queriesMeasure: "transactions (pg_stat_database xact_commit + xact_rollback of the bench database; pg_stat_statements is not preloaded on this server)",
    secondaryMeasure: "table scans (pg_stat_database is per database; sum of idx_scan + seq_scan in pg_stat_user_tables)",
    async counters() {
      // Backends flush their statistics at most once a second (and idle ones within 10 s): windows are longer than that.
      const r = await admin.query<{ q: string }>("SELECT xact_commit + xact_rollback AS q FROM pg_stat_database WHERE datname = $1", [name]);
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      try {
        const s = await c.query<{ relname: string; s: string | null }>("SELECT relname, coalesce(idx_scan, 0) + coalesce(seq_scan, 0) AS s FROM pg_stat_user_tables");
        const perTable = Object.fromEntries(s.rows.map((row) => [row.relname, Number(row.s ?? 0)]));
        return { queries: Number(r.rows[0]?.q ?? NaN), secondary: Object.values(perTable).reduce((a, b) => a + b, 0), perTable };
      } finally {
        await c.end();
      }
    },
    async load(plan) {
      const ds = await createPostgresDatastore({ connectionString: url, clock: systemClock, maxOpenConns: 2 });
      await ds.close();
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      try {
        const tokens = tokenRows(plan);
        for (let i = 0; i < tokens.length; i += BATCH) {
          const v = valuesClause(tokens.slice(i, i + BATCH), "postgres");
          await c.query(`INSERT INTO join_tokens (token_hash, expires_at, agent_id, created_at) VALUES ${v.text}`, v.params);
        }
        let written = 0;
        for (const b of entryBatches(plan, 1)) {
          await c.query("BEGIN");
          const e = valuesClause(b.entries, "postgres");
          await c.query(`INSERT INTO registration_entries (${ENTRY_COLUMNS}) VALUES ${e.text}`, e.params);
          const s = valuesClause(b.selectors, "postgres");
          await c.query(`INSERT INTO entry_selectors (owner_row, type, value) VALUES ${s.text}`, s.params);
          await c.query("COMMIT");
          written += b.entries.length;
          plan.progress?.(written);
        }
        // Row IDs were given explicitly: move the sequence past them.
        await c.query("SELECT setval(pg_get_serial_sequence('registration_entries', 'row_id'), (SELECT coalesce(max(row_id), 1) FROM registration_entries))");
        await c.query("ANALYZE");
      } finally {
        await c.end();
      }
    },
    async drop() {
      try {
        await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await admin.end();
      }
    },
  };
}

async function createMysql(name: string): Promise<BenchDatabase> {
  const base = TEST_DATABASE_URLS.mysql;
  const admin = await mysql.createConnection({ uri: base });
  // A user of its own: MariaDB's user statistics count its statements apart from other clients'.
  const user = name;
  const password = randomBytes(12).toString("hex");
  const [prior] = (await admin.query("SELECT @@GLOBAL.userstat AS v")) as unknown as [Array<{ v: number }>];
  const userstatBefore = Number(prior[0]?.v ?? 0);
  const drop = async (): Promise<void> => {
    try {
      await admin.query(`DROP DATABASE IF EXISTS ${name}`);
      await admin.query(`DROP USER IF EXISTS '${user}'@'127.0.0.1', '${user}'@'localhost'`);
      if (userstatBefore === 0) await admin.query("SET GLOBAL userstat = 0");
    } finally {
      await admin.end();
    }
  };
  try {
    await admin.query(`CREATE DATABASE ${name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`);
    for (const host of ["127.0.0.1", "localhost"]) {
      await admin.query(`CREATE USER '${user}'@'${host}' IDENTIFIED BY '${password}'`);
      await admin.query(`GRANT ALL ON ${name}.* TO '${user}'@'${host}'`);
    }
    await admin.query("SET GLOBAL userstat = 1");
  } catch (e) {
    await drop();
    throw e;
  }
  const hostPort = new URL(base).host;
  const url = `mysql://${user}:${password}@${hostPort}/${name}`;
  return {
    engine: "mysql",
    name,
    url,
    queriesMeasure: "statements of the bench's own database user (information_schema.USER_STATISTICS select + update + other commands, userstat switched on for the run)",
    secondaryMeasure: "server-wide Questions (SHOW GLOBAL STATUS; counts every client of the shared server, this harness's readings included)",
    async counters() {
      const [u] = (await admin.query("SELECT SELECT_COMMANDS + UPDATE_COMMANDS + OTHER_COMMANDS AS q FROM information_schema.USER_STATISTICS WHERE USER = ?", [user])) as unknown as [Array<{ q: number | string }>];
      const [g] = (await admin.query("SHOW GLOBAL STATUS LIKE 'Questions'")) as unknown as [Array<{ Value: string }>];
      return { queries: Number(u[0]?.q ?? 0), secondary: Number(g[0]?.Value ?? NaN), perTable: {} };
    },
    async load(plan) {
      const ds = await createMysqlDatastore({ connectionString: url, clock: systemClock, maxOpenConns: 2 });
      await ds.close();
      const c = await mysql.createConnection({ uri: `${base}/${name}` });
      try {
        const tokens = tokenRows(plan);
        for (let i = 0; i < tokens.length; i += BATCH) {
          const v = valuesClause(tokens.slice(i, i + BATCH), "mysql");
          await c.query(`INSERT INTO join_tokens (token_hash, expires_at, agent_id, created_at) VALUES ${v.text}`, v.params);
        }
        let written = 0;
        for (const b of entryBatches(plan, 1)) {
          await c.beginTransaction();
          const e = valuesClause(b.entries, "mysql");
          await c.query(`INSERT INTO registration_entries (${ENTRY_COLUMNS}) VALUES ${e.text}`, e.params);
          const s = valuesClause(b.selectors, "mysql");
          await c.query(`INSERT INTO entry_selectors (owner_row, type, value) VALUES ${s.text}`, s.params);
          await c.commit();
          written += b.entries.length;
          plan.progress?.(written);
        }
      } finally {
        await c.end();
      }
    },
    drop,
  };
}
