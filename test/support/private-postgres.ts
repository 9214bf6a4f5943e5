/**
 * A throwaway PostgreSQL cluster of a test's own: `initdb` into a temporary
 * directory and `postgres` run as a child process (never `pg_ctl`, whose
 * daemon would be an orphan nobody reaps) on a free loopback port, with
 * trust authentication. A test that restarts or kills the database uses one
 * of these, so the shared cluster other tests run against at the same time
 * is never disturbed.
 */
import { execFileSync, spawn } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import { databaseProcess } from "./database-process.js";
import { closedLoopbackPort } from "./ports.js";

/** A running private cluster. */
export interface PrivatePostgres {
  /** `postgres://postgres@127.0.0.1:<port>/postgres`. */
  readonly url: string;
  /** Fast shutdown (SIGINT), then start again on the same data and port. */
  restart(): Promise<void>;
  /** Stops the server and removes its directory. */
  stop(): Promise<void>;
}

/** The binaries of the newest PostgreSQL installed from Debian's packages, or undefined. */
export function postgresBinDir(): string | undefined {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root).filter((v) => /^\d+$/.test(v) && existsSync(path.join(root, v, "bin", "initdb")));
  const newest = versions.sort((a, b) => Number(b) - Number(a))[0];
  return newest === undefined ? undefined : path.join(root, newest, "bin");
}

/** The `postgres` system user's uid and gid (the server refuses to run as root). */
function postgresUser(): { uid: number; gid: number } | undefined {
  try {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
    return Number.isInteger(uid) && Number.isInteger(gid) ? { uid, gid } : undefined;
  } catch {
    return undefined;
  }
}

/** Why a private cluster cannot be started here, or undefined when it can. */
export function privatePostgresUnavailable(): string | undefined {
  if (postgresBinDir() === undefined) return "no PostgreSQL server binaries under /usr/lib/postgresql";
  if (postgresUser() === undefined) return "no postgres system user";
  if (process.getuid?.() !== 0) return "starting a cluster as the postgres user needs root";
  return undefined;
}

/** Starts a fresh cluster; resolves once it accepts connections. */
export async function startPrivatePostgres(): Promise<PrivatePostgres> {
  const bin = postgresBinDir();
  const user = postgresUser();
  if (bin === undefined || user === undefined) throw new Error(`private PostgreSQL: ${privatePostgresUnavailable() ?? "unavailable"}`);
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-pg-"));
  chownSync(dir, user.uid, user.gid);
  const data = path.join(dir, "data");
  const env = { ...process.env, HOME: dir, LC_ALL: "C.UTF-8" };
  execFileSync(path.join(bin, "initdb"), ["-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"], { uid: user.uid, gid: user.gid, env, stdio: "ignore", cwd: dir });
  const port = await closedLoopbackPort();
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const server = databaseProcess(
    "private PostgreSQL",
    () =>
      spawn(path.join(bin, "postgres"), ["-D", data, "-p", String(port), "-k", dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"], {
        uid: user.uid,
        gid: user.gid,
        env,
        cwd: dir,
        stdio: ["ignore", "ignore", "pipe"],
      }),
    async () => {
      const client = new pg.Client({ connectionString: url });
      try {
        await client.connect();
      } finally {
        await client.end().catch(() => undefined);
      }
    },
  );
  // SIGINT: PostgreSQL's fast shutdown (sessions are ended, nothing committed is lost).
  const shutdown = () => server.stop("SIGINT");

  try {
    await server.start();
  } catch (e) {
    await shutdown();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    url,
    async restart() {
      await shutdown();
      await server.start();
    },
    async stop() {
      await shutdown();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
