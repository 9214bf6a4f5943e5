/**
 * A fresh SQLite datastore in a temporary directory on a manual clock, as the
 * datastore unit tests set one up before each test.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ManualClock } from "../../common/clock.js";
import { createSqliteDatastore, type Datastore } from "../../server/datastore/index.js";
import { isSigilError, type ErrorCode } from "../../spiffe/errors.js";

/** What {@link openTempDatastore} made. */
export interface TempDatastore {
  readonly dir: string;
  /** The database file. */
  readonly path: string;
  readonly clock: ManualClock;
  readonly ds: Datastore;
}

/** Opens a datastore at `<tmp>/sigil-ds-<name>-*\/ds.sqlite3` with a manual clock at `start`. */
export async function openTempDatastore(name: string, start: Date): Promise<TempDatastore> {
  const dir = mkdtempSync(join(tmpdir(), `sigil-ds-${name}-`));
  const path = join(dir, "ds.sqlite3");
  const clock = new ManualClock(start);
  try {
    return { dir, path, clock, ds: await createSqliteDatastore({ path, clock }) };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** Closes the datastore and removes its directory. */
export async function closeTempDatastore(ds: Datastore, dir: string): Promise<void> {
  try {
    await ds.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
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
