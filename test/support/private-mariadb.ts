/**
 * A throwaway MariaDB server of a test's own: `mariadb-install-db` into a
 * temporary directory and `mariadbd` run as a child process (never the
 * service, whose daemon is shared with every other test) on a free loopback
 * port, root without a password. A test that restarts or kills the database
 * uses one of these, so the shared server other tests run against at the same
 * time is never disturbed.
 */
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import mysql from "mysql2/promise";
import { databaseProcess } from "./database-process.js";
import { closedLoopbackPort } from "./ports.js";

/** A running private MariaDB server. */
export interface PrivateMariadb {
  /** `mysql://root@127.0.0.1:<port>` (no database: create one with {@link PrivateMariadb.createDatabase}). */
  readonly url: string;
  /** Creates a database on this server; returns its URL. */
  createDatabase(name: string): Promise<string>;
  /**
   * Stops the server (waited for) with `signal`: SIGTERM (default) is a clean
   * shutdown, SIGKILL a crash that InnoDB recovers from at the next start.
   * Then starts it again on the same data and port, after `downForMs`
   * (default 0) with no server listening and `whileDown` (run meanwhile) done.
   */
  restart(opts?: { signal?: "SIGTERM" | "SIGKILL"; downForMs?: number; whileDown?: () => Promise<void> }): Promise<void>;
  /** Stops the server (waited for) and removes its directory. */
  stop(): Promise<void>;
}

/** The first of `names` found in the usual binary directories, or undefined. */
function findBinary(names: readonly string[]): string | undefined {
  for (const dir of ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]) {
    for (const name of names) {
      const p = path.join(dir, name);
      if (existsSync(p)) return p;
    }
  }
  return undefined;
}

/** The server and installer binaries (MariaDB's names first, then the MySQL-compatible ones). */
function binaries(): { server: string; install: string } | undefined {
  const server = findBinary(["mariadbd", "mysqld"]);
  const install = findBinary(["mariadb-install-db", "mysql_install_db"]);
  return server === undefined || install === undefined ? undefined : { server, install };
}

/** Why a private MariaDB server cannot be started here, or undefined when it can. */
export function privateMariadbUnavailable(): string | undefined {
  if (binaries() === undefined) return "no mariadbd/mariadb-install-db binaries";
  // As root the server needs --user=root; as anyone else it runs as that user. Both work.
  return undefined;
}

/** Starts a fresh server; resolves once it accepts connections. */
export async function startPrivateMariadb(): Promise<PrivateMariadb> {
  const bin = binaries();
  if (bin === undefined) throw new Error(`private MariaDB: ${privateMariadbUnavailable() ?? "unavailable"}`);
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-mariadb-"));
  const data = path.join(dir, "data");
  const asRoot = process.getuid?.() === 0 ? ["--user=root"] : [];
  try {
    // normal root authentication: root@127.0.0.1 logs in over TCP without a password (no unix_socket plugin).
    execFileSync(bin.install, ["--no-defaults", `--datadir=${data}`, "--auth-root-authentication-method=normal", "--skip-test-db", ...asRoot], { stdio: "ignore", cwd: dir, timeout: 60_000 });
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`private MariaDB: ${path.basename(bin.install)} failed: ${e instanceof Error ? e.message : String(e)}`);
  }
  const port = await closedLoopbackPort();
  const url = `mysql://root@127.0.0.1:${port}`;
  const server = databaseProcess(
    "private MariaDB",
    () =>
      spawn(
        bin.server,
        [
          "--no-defaults",
          `--datadir=${data}`,
          `--socket=${path.join(dir, "mysqld.sock")}`,
          `--pid-file=${path.join(dir, "mysqld.pid")}`,
          `--port=${port}`,
          "--bind-address=127.0.0.1",
          "--skip-name-resolve",
          "--innodb-buffer-pool-size=32M",
          // Survives a server crash (a test's SIGKILL), not a machine crash: enough for a throwaway.
          "--innodb-flush-log-at-trx-commit=2",
          ...asRoot,
        ],
        { cwd: dir, stdio: ["ignore", "ignore", "pipe"] },
      ),
    async () => {
      const conn = await mysql.createConnection({ uri: url, connectTimeout: 2_000 });
      await conn.end();
    },
  );
  // SIGTERM: a clean shutdown (connections are closed, InnoDB flushed; nothing committed is lost).
  const shutdown = (signal: "SIGTERM" | "SIGKILL" = "SIGTERM") => server.stop(signal);

  try {
    await server.start();
  } catch (e) {
    await shutdown();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    url,
    async createDatabase(name) {
      if (!/^[a-z0-9_]+$/.test(name)) throw new Error(`private MariaDB: database name ${JSON.stringify(name)} is not [a-z0-9_]+`);
      const conn = await mysql.createConnection({ uri: url });
      try {
        await conn.query(`CREATE DATABASE ${name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`);
      } finally {
        await conn.end();
      }
      return `${url}/${name}`;
    },
    async restart({ signal = "SIGTERM", downForMs = 0, whileDown = async () => undefined } = {}) {
      await shutdown(signal);
      await Promise.all([new Promise((r) => setTimeout(r, downForMs)), whileDown()]);
      await server.start();
    },
    async stop() {
      await shutdown();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
