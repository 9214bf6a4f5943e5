/**
 * A database server run by a test as its own child process (a private
 * PostgreSQL cluster or MariaDB server): started and waited for until it
 * accepts connections, stopped with a signal and waited for, so no test
 * leaves a server behind or disturbs the shared ones.
 */
import type { ChildProcess } from "node:child_process";

/** Starts and stops one database server process, again and again on the same data. */
export interface DatabaseProcess {
  /** Spawns the server; resolves once `accepts` succeeds, rejects (with its stderr) if it exits or never accepts. */
  start(): Promise<void>;
  /** Sends `signal` unless the server has exited, and resolves once it has. */
  stop(signal: NodeJS.Signals): Promise<void>;
}

/**
 * A {@link DatabaseProcess} named `name` in errors: `spawnServer` starts the
 * server (stderr piped), `accepts` opens and closes one connection, throwing
 * while the server does not accept yet.
 */
export function databaseProcess(name: string, spawnServer: () => ChildProcess, accepts: () => Promise<void>): DatabaseProcess {
  let child: ChildProcess | undefined;
  return {
    async start() {
      const c = spawnServer();
      let stderr = "";
      c.stderr?.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
      child = c;
      const deadline = Date.now() + 30_000;
      for (;;) {
        if (c.exitCode !== null || c.signalCode !== null) throw new Error(`${name} exited at start: ${stderr}`);
        try {
          await accepts();
          return;
        } catch {
          if (Date.now() > deadline) throw new Error(`${name} did not accept connections: ${stderr}`);
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    },
    async stop(signal) {
      const c = child;
      child = undefined;
      if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
      await new Promise<void>((resolve) => {
        c.once("exit", () => resolve());
        c.kill(signal);
      });
    },
  };
}
