/**
 * Runs the exec-after-connect attack (`fixtures/exec-after-connect.pl` with
 * `fixtures/inherited-socket-client.ts` as the holder) as uid 65534 against an
 * agent socket, for the Workload API and SDS tests alike.
 *
 * Needs root (to run the attacker as uid 65534) and perl, passwd and su (Debian base).
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const ATTACK = path.join(root, "test/integration/fixtures/exec-after-connect.pl");
const HOLDER = path.join(root, "test/integration/fixtures/inherited-socket-client.ts");
/** The attacker's uid and gid. */
export const NOBODY = { uid: 65534, gid: 65534 };
/** Stock setuid-root binaries the connector execs. */
export const SETUID_BINARIES = ["/usr/bin/passwd", "/usr/bin/su"];

const isRoot = process.getuid?.() === 0;
const missing = ["/usr/bin/perl", ...SETUID_BINARIES].filter((f) => !existsSync(f));
/** Why the attack cannot run here, or undefined. */
export const attackUnavailable: string | undefined = !isRoot ? "needs root to run the attacker as uid 65534" : missing.length > 0 ? `needs ${missing.join(", ")}` : undefined;

/** One line the holder printed. */
export type AttackEvent = Record<string, unknown> & { event: string };

/**
 * Runs the attack as uid 65534; resolves with the holder's events once it ended and everything was reaped.
 * In an `*after-exec` mode the setuid binary is let go once the holder reports the end of `lastMethod`.
 */
export function attack(
  socketPath: string,
  then: string,
  mode: "after-exec" | "stream" | "after-exit" | "sds-after-exec" | "sds-stream",
  onEvent: (e: AttackEvent) => void = () => undefined,
  lastMethod = mode === "sds-after-exec" ? "FetchSecrets" : "FetchJWTSVID",
): Promise<AttackEvent[]> {
  return new Promise((resolve, reject) => {
    const child = spawn("/usr/bin/perl", [ATTACK, socketPath, then, mode, process.execPath, "--import", "tsx", HOLDER], {
      cwd: root,
      ...NOBODY,
      stdio: ["pipe", "pipe", "pipe"],
    });
    const events: AttackEvent[] = [];
    let out = "";
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      let nl: number;
      while ((nl = out.indexOf("\n")) >= 0) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        if (!line.startsWith("{")) continue;
        const e = JSON.parse(line) as AttackEvent;
        events.push(e);
        onEvent(e);
        // The holder is done: let the setuid binary's password read end (EOF) so everything exits.
        if (e.event === "end" && (!mode.endsWith("after-exec") || e.method === lastMethod)) child.stdin.end();
        if (e.event === "error") child.stdin.end();
      }
    });
    const timer = setTimeout(() => {
      child.stdin.end();
      reject(new Error(`attack timed out; events ${JSON.stringify(events)}; stderr ${err}`));
    }, 60_000);
    child.on("error", reject);
    child.on("exit", (code) => {
      clearTimeout(timer);
      if (code !== 0) reject(new Error(`attack exited ${code}: ${err}`));
      else resolve(events);
    });
  });
}
