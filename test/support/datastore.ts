/**
 * A fresh datastore on a manual clock, as the datastore unit tests set one up
 * before each test: SQLite in a temporary directory, or a new database
 * `sigil_test_<random>` on the local PostgreSQL or MariaDB (dropped again by
 * {@link closeTempDatastore}). The contract suites run once per engine of
 * {@link datastoreEngines}.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import mysql from "mysql2/promise";
import pg from "pg";
import { ManualClock } from "../../common/clock.js";
import { createSqliteDatastore, type ChangeEvent, type Datastore } from "../../server/datastore/index.js";
import { createMysqlDatastore } from "../../server/datastore/mysql/mysql-datastore.js";
import { createPostgresDatastore } from "../../server/datastore/postgres/postgres-datastore.js";
import { isSigilError, type ErrorCode } from "../../spiffe/errors.js";

/** A datastore engine the contract suites run on. */
export type DatastoreEngine = "sqlite" | "postgres" | "mysql";

/** Server URLs of the local test databases (trust auth / root without password), without a database name. */
export const TEST_DATABASE_URLS = {
  postgres: process.env.SIGIL_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432",
  mysql: process.env.SIGIL_TEST_MYSQL_URL ?? "mysql://root@127.0.0.1:3306",
} as const;

/** Options of another instance opened on the same database. */
export interface ReopenOptions {
  readonly onListenerError?: (error: unknown, event: ChangeEvent) => void;
}

/** What {@link openTempDatastore} made. */
export interface TempDatastore {
  readonly engine: DatastoreEngine;
  readonly dir: string;
  /** The SQLite database file (SQLite only; a path in `dir` that does not exist for other engines). */
  readonly path: string;
  /** The database's URL (PostgreSQL and MySQL only). */
  readonly url?: string;
  readonly clock: ManualClock;
  readonly ds: Datastore;
  /** Opens another datastore instance on the same database (a restart, or a second server). */
  reopen(options?: ReopenOptions): Promise<Datastore>;
}

/** Drops the SQL test databases, by temp directory. */
const cleanups = new Map<string, () => Promise<void>>();

async function probe(engine: "postgres" | "mysql"): Promise<string | undefined> {
  try {
    if (engine === "postgres") {
      const c = new pg.Client({ connectionString: `${TEST_DATABASE_URLS.postgres}/postgres`, connectionTimeoutMillis: 3000 });
      await c.connect();
      await c.end();
    } else {
      const c = await mysql.createConnection({ uri: TEST_DATABASE_URLS.mysql, connectTimeout: 3000 });
      await c.end();
    }
    return undefined;
  } catch (e) {
    return e instanceof Error ? e.message || String((e as { code?: unknown }).code) : String(e);
  }
}

/**
 * The engines to run the contract suites on: SQLite always; PostgreSQL and
 * MariaDB when reachable. An unreachable one is skipped with a printed reason,
 * or fails the run under `CI=true` (CI machines always have both).
 */
export async function datastoreEngines(): Promise<DatastoreEngine[]> {
  const engines: DatastoreEngine[] = ["sqlite"];
  for (const engine of ["postgres", "mysql"] as const) {
    const reason = await probe(engine);
    if (reason === undefined) engines.push(engine);
    else if (process.env.CI === "true") throw new Error(`datastore tests: ${engine} at ${TEST_DATABASE_URLS[engine]} is unreachable under CI=true: ${reason}`);
    else console.warn(`datastore tests: skipping ${engine} (${TEST_DATABASE_URLS[engine]} unreachable: ${reason})`);
  }
  return engines;
}

/** Creates `sigil_test_<random>` on a SQL engine; returns its URL and the function dropping it. */
export async function createTestDatabase(engine: "postgres" | "mysql"): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `sigil_test_${randomBytes(6).toString("hex")}`;
  const base = TEST_DATABASE_URLS[engine];
  if (engine === "postgres") {
    const admin = async (statement: string): Promise<void> => {
      const c = new pg.Client({ connectionString: `${base}/postgres` });
      await c.connect();
      try {
        await c.query(statement);
      } finally {
        await c.end();
      }
    };
    await admin(`CREATE DATABASE ${name}`);
    return { url: `${base}/${name}`, drop: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
  }
  const admin = async (statement: string): Promise<void> => {
    const c = await mysql.createConnection({ uri: base });
    try {
      await c.query(statement);
    } finally {
      await c.end();
    }
  };
  await admin(`CREATE DATABASE ${name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`);
  return { url: `${base}/${name}`, drop: () => admin(`DROP DATABASE IF EXISTS ${name}`) };
}

/** Opens a datastore on `url` (an engine's test database). */
export function openSqlDatastore(engine: "postgres" | "mysql", url: string, clock: ManualClock, options: ReopenOptions = {}): Promise<Datastore> {
  const common = { connectionString: url, clock, maxOpenConns: 4, ...options };
  return engine === "postgres" ? createPostgresDatastore(common) : createMysqlDatastore(common);
}

/**
 * Opens a datastore with a manual clock at `start`: SQLite at
 * `<tmp>/sigil-ds-<name>-*\/ds.sqlite3`, or a new test database.
 */
export async function openTempDatastore(name: string, start: Date, engine: DatastoreEngine = "sqlite"): Promise<TempDatastore> {
  const dir = mkdtempSync(join(tmpdir(), `sigil-ds-${name}-`));
  const path = join(dir, "ds.sqlite3");
  const clock = new ManualClock(start);
  try {
    if (engine === "sqlite") {
      const reopen = (o: ReopenOptions = {}): Promise<Datastore> => createSqliteDatastore({ path, clock, ...o });
      return { engine, dir, path, clock, ds: await reopen(), reopen };
    }
    const { url, drop } = await createTestDatabase(engine);
    cleanups.set(dir, drop);
    const reopen = (o: ReopenOptions = {}): Promise<Datastore> => openSqlDatastore(engine, url, clock, o);
    return { engine, dir, path, url, clock, ds: await reopen(), reopen };
  } catch (e) {
    await cleanups.get(dir)?.().catch(() => undefined);
    cleanups.delete(dir);
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** Number of rows in `table`, read through the engine's own client (bypassing the datastore). */
export async function countRows(temp: TempDatastore, table: string): Promise<number> {
  if (!/^[a-z_]+$/.test(table)) throw new Error(`bad table name ${table}`);
  if (temp.engine === "sqlite") {
    const db = new Database(temp.path, { readonly: true });
    try {
      return (db.prepare(`SELECT COUNT(*) AS n FROM ${table}`).get() as { n: number }).n;
    } finally {
      db.close();
    }
  }
  if (temp.engine === "postgres") {
    const c = new pg.Client({ connectionString: temp.url });
    await c.connect();
    try {
      return Number((await c.query<{ n: string }>(`SELECT COUNT(*) AS n FROM ${table}`)).rows[0]?.n);
    } finally {
      await c.end();
    }
  }
  const c = await mysql.createConnection({ uri: temp.url as string });
  try {
    const [rows] = await c.query(`SELECT COUNT(*) AS n FROM ${table}`);
    return Number((rows as Array<{ n: unknown }>)[0]?.n);
  } finally {
    await c.end();
  }
}

/** Closes the datastore and removes its directory (and its test database). */
export async function closeTempDatastore(ds: Datastore, dir: string): Promise<void> {
  try {
    await ds.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
    const drop = cleanups.get(dir);
    cleanups.delete(dir);
    await drop?.();
  }
}

/** The error `p` rejects with; fails unless it is a SigilError with `code` (and, with `prefix`, a message starting so). */
export async function rejection(p: Promise<unknown>, code: ErrorCode, prefix?: string): Promise<Error> {
  try {
    await p;
  } catch (e) {
    if (!isSigilError(e, code)) throw new Error(`expected ${code}, got ${String(e)}`, { cause: e });
    if (prefix !== undefined && !e.message.startsWith(prefix)) throw new Error(`expected a message starting ${JSON.stringify(prefix)}, got ${JSON.stringify(e.message)}`);
    return e;
  }
  throw new Error(`expected ${code}, got success`);
}
