/**
 * Versioned schema migrations for SQLite. Applied versions are recorded in
 * `schema_migrations`; each migration runs in its own IMMEDIATE transaction
 * together with its record, so a crash leaves the schema at a whole version,
 * and two processes opening the same file at once apply each version once.
 */
import type BetterSqlite3 from "better-sqlite3";
import { SigilError } from "../../spiffe/errors.js";

/** One schema step. */
export interface Migration {
  /** 1, 2, 3 … without gaps. */
  readonly version: number;
  /** Short description, recorded with the version. */
  readonly name: string;
  /** The statements to run. */
  readonly sql: string;
}

/** What {@link migrate} did. */
export interface MigrationResult {
  /** Schema version found when opening (0 for a new database). */
  readonly from: number;
  /** Schema version after migrating. */
  readonly to: number;
}

function currentVersion(db: BetterSqlite3.Database): number {
  const row = db.prepare("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations").get() as { v: number };
  return row.v;
}

/**
 * Brings the database to the newest version in `migrations`.
 *
 * @throws SigilError `ERR_INTERNAL` when the database has a newer schema than
 * `migrations` knows (naming both versions; nothing is changed), or a
 * migration fails (that migration is rolled back; earlier ones stay).
 */
export function migrate(db: BetterSqlite3.Database, migrations: readonly Migration[], now: Date): MigrationResult {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) throw new SigilError("ERR_INTERNAL", `datastore: migration ${i + 1} has version ${m.version}; versions must run 1, 2, 3 …`);
  });
  const known = migrations.length;
  db.transaction(() => {
    db.exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT");
  }).immediate();
  const refuseNewer = (found: number): void => {
    if (found > known) {
      throw new SigilError(
        "ERR_INTERNAL",
        `datastore: database schema version ${found} is newer than the newest this Sigil knows (${known}); run a Sigil version that supports schema ${found}`,
      );
    }
  };
  const from = currentVersion(db);
  refuseNewer(from);
  for (const m of migrations) {
    db.transaction(() => {
      // Re-read inside the write lock: another process may have migrated meanwhile.
      const v = currentVersion(db);
      refuseNewer(v);
      if (v >= m.version) return;
      try {
        db.exec(m.sql);
      } catch (e) {
        throw new SigilError("ERR_INTERNAL", `datastore: migration ${m.version} (${m.name}) failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
      }
      db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)").run(m.version, m.name, now.getTime());
    }).immediate();
  }
  return { from, to: currentVersion(db) };
}
