/**
 * Who is calling on a Unix socket: pid/uid/gid from SO_PEERCRED (native addon)
 * plus the process start time from /proc, so attestation can later check that
 * the pid still names the same process (pid reuse guard).
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import type { Socket } from "node:net";
import { fileURLToPath } from "node:url";
import { SigilError } from "../../spiffe/errors.js";

interface Addon {
  getPeerCred(fd: number): { pid: number; uid: number; gid: number };
}

let addon: Addon | undefined;
function loadAddon(): Addon {
  if (addon) return addon;
  const require = createRequire(import.meta.url);
  // Works from the source tree (agent/endpoints) and from dist/agent/endpoints.
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.resolve(here, "../../build/Release/peercred.node"), path.resolve(here, "../../../build/Release/peercred.node")];
  for (const c of candidates) {
    try {
      addon = require(c) as Addon;
      return addon;
    } catch {
      // try the next location
    }
  }
  throw new SigilError("ERR_INTERNAL", `peercred: native addon not built (looked in ${candidates.join(", ")}); run npm install`);
}

/** Credentials of the process on the other end of a Unix socket. */
export interface PeerCredentials {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
  /** Start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22). */
  readonly startTime: bigint;
}

/** Reads the peer's credentials from a connected Unix socket. */
export function peerCredentials(socket: Socket): PeerCredentials {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) throw new SigilError("ERR_INTERNAL", "peercred: socket has no file descriptor");
  let cred: { pid: number; uid: number; gid: number };
  try {
    cred = loadAddon().getPeerCred(fd);
  } catch (e) {
    throw new SigilError("ERR_INTERNAL", `peercred: ${(e as Error).message}`, { cause: e });
  }
  return { ...cred, startTime: processStartTime(cred.pid) };
}

/** Start time of a process (ticks since boot), or -1n when it has exited. */
export function processStartTime(pid: number): bigint {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return -1n;
  }
  // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const start = fields[19];
  return start === undefined ? -1n : BigInt(start);
}

/** True when `pid` still names the process that connected (it has not exited and been replaced). */
export function stillSameProcess(peer: PeerCredentials): boolean {
  return peer.startTime >= 0n && processStartTime(peer.pid) === peer.startTime;
}
