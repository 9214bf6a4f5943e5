/**
 * Who is calling on a Unix socket, pinned at connect time.
 *
 * The kernel records the caller's pid, uid and gid when it calls `connect()`
 * (SO_PEERCRED). Those are the identity: a process cannot change them after
 * the fact, whereas everything /proc says about a pid can change (an exec of
 * a setuid binary turns the effective uid into root; a pid is reused after
 * its process exits). So attestation takes uid and gid from SO_PEERCRED, and
 * anything it reads from /proc is believed only if, *after* the read, the
 * process is still the one that connected and /proc/<pid> is still owned by
 * the SO_PEERCRED uid/gid ({@link verifyPeer}). The files of /proc/<pid> are
 * owned by the process's effective uid/gid, or by root once it is
 * non-dumpable, which a setuid or setgid exec makes it; either way the check
 * fails for a caller that exec'd such a binary after connecting.
 *
 * "Still the one that connected" uses a pidfd held from accept time
 * (SO_PEERPIDFD on Linux >= 6.5, else pidfd_open): while the process has not
 * exited, its pid names nobody else. A peer that SO_PEERPIDFD reports already
 * gone is gone, never looked up again by its pid. Kernels without pidfds fall
 * back to the process start time (/proc/<pid>/stat field 22), as SPIRE's
 * peertracker does; there (and with pidfd_open, before 6.5) a pid reused
 * between connect and accept goes unnoticed.
 */
import { closeSync, readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import type { Socket } from "node:net";
import { fileURLToPath } from "node:url";
import { SigilError } from "../../spiffe/errors.js";

interface Addon {
  getPeerCred(fd: number): { pid: number; uid: number; gid: number; pidfd: number };
  pidfdExited(pidfd: number): boolean;
  /** Absent from an addon built before it (not rebuilt after an upgrade): {@link procOwnerIs} then stats through fs. */
  procOwnerIs?(pid: number, uid: number, gid: number): 1 | 0 | -1;
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

/**
 * An open pidfd on the process that connected. Closed with its connection;
 * once closed it reports the process as gone, so a late check can never read
 * a descriptor number the agent has since reused for something else.
 */
export class ProcessHandle {
  #fd: number;

  /** @param fd a pidfd this handle now owns. */
  constructor(fd: number) {
    this.#fd = fd;
  }

  /** True once the process has exited (or the handle was closed). */
  exited(): boolean {
    if (this.#fd < 0) return true;
    return loadAddon().pidfdExited(this.#fd);
  }

  /** Releases the pidfd. Idempotent. */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    closeSync(fd);
  }
}

/** Credentials of the process on the other end of a Unix socket, as the kernel recorded them at connect time. */
export interface PeerCredentials {
  readonly pid: number;
  /** Effective uid at connect time (SO_PEERCRED). */
  readonly uid: number;
  /** Effective gid at connect time (SO_PEERCRED). */
  readonly gid: number;
  /** Start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22), read at accept; -1n when unknown. */
  readonly startTime: bigint;
  /** A pidfd on the connecting process, when the kernel has pidfds. */
  readonly process?: ProcessHandle;
}

/** What the addon's `pidfd` is when SO_PEERPIDFD says the peer has exited (it is then reported gone). */
const PEER_GONE = -2;

/**
 * Reads the peer's credentials from a connected Unix socket, with a pidfd
 * on the connecting process where the kernel offers one. The caller owns the
 * pidfd: {@link releasePeer} it when the connection closes.
 */
export function peerCredentials(socket: Socket): PeerCredentials {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) throw new SigilError("ERR_INTERNAL", "peercred: socket has no file descriptor");
  let cred: { pid: number; uid: number; gid: number; pidfd: number };
  try {
    cred = loadAddon().getPeerCred(fd);
  } catch (e) {
    throw new SigilError("ERR_INTERNAL", `peercred: ${(e as Error).message}`, { cause: e });
  }
  const { pid, uid, gid, pidfd } = cred;
  // -2: the kernel says the peer already exited; its pid may name another process, so nothing about it is read.
  if (pidfd === PEER_GONE) return { pid, uid, gid, startTime: -1n };
  return { pid, uid, gid, startTime: processStartTime(pid), ...(pidfd >= 0 ? { process: new ProcessHandle(pidfd) } : {}) };
}

/** Closes what {@link peerCredentials} opened. */
export function releasePeer(peer: PeerCredentials): void {
  peer.process?.close();
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
  if (peer.process !== undefined) return !peer.process.exited();
  return peer.startTime >= 0n && processStartTime(peer.pid) === peer.startTime;
}

/** Why {@link verifyPeer} refused a caller. */
export type PeerChange =
  /** The connecting process exited (its pid may name another process now). */
  | { readonly kind: "gone"; readonly detail: string }
  /** The process now acts as another user (a setuid exec, or it made itself non-dumpable). */
  | { readonly kind: "owner_changed"; readonly detail: string };

/**
 * Checks that the connecting process is still alive under the same pid and
 * that /proc/<pid> is still owned by the uid/gid it connected with. Call it
 * *after* reading anything from /proc about the caller: only then do those
 * reads describe the process that connected, acting as the user it connected as.
 *
 * @returns undefined when the caller is unchanged, else what changed.
 */
export function verifyPeer(peer: PeerCredentials): PeerChange | undefined {
  // A file, not the directory: the kernel shows /proc/<pid> itself as owned by the
  // euid/egid always, but the files in it as root's once the process is non-dumpable.
  // Streams re-check before every message, so the common case is one stat(2) in the addon.
  const owned = procOwnerIs(peer);
  // After the stat: if the process is still alive now, the stat was of it.
  if (owned === -1 || !stillSameProcess(peer)) {
    return { kind: "gone", detail: owned === -1 ? `/proc/${peer.pid} is gone` : `process ${peer.pid} exited (its pid may have been reused)` };
  }
  if (owned === 1) return undefined;
  // The stat above, of the live caller, showed another owner: that decides. Say who for the log,
  // with a second stat (the process may have exited or changed again since; the kind stays).
  const owner = procOwner(peer.pid);
  const now = owner === undefined ? "is no longer owned by" : `is owned by uid ${owner.uid} gid ${owner.gid}, but`;
  return {
    kind: "owner_changed",
    detail: `/proc/${peer.pid}/stat ${now} the caller connected as uid ${peer.uid} gid ${peer.gid} (a setuid/setgid exec or a non-dumpable process)`,
  };
}

/** The owner of /proc/<pid>/stat, or undefined when it cannot be stat'ed (gone). */
function procOwner(pid: number): { uid: number; gid: number } | undefined {
  try {
    const st = statSync(`/proc/${pid}/stat`);
    return { uid: st.uid, gid: st.gid };
  } catch {
    return undefined;
  }
}

/**
 * Whether /proc/<pid>/stat is owned by the peer's uid and gid (1), by someone
 * else (0), or cannot be stat'ed (-1): what `fs.statSync` and a comparison of
 * numbers say, for any numbers. The addon does it in one stat(2) but takes a
 * pid_t and two uid_t's; a pid no process has (0, which SO_PEERCRED gives for a
 * peer outside the agent's pid namespace) or an id outside uid_t would be cut
 * or refused there, so those go through fs, as does an addon built before it.
 */
function procOwnerIs(peer: PeerCredentials): 1 | 0 | -1 {
  const native = loadAddon().procOwnerIs;
  if (native !== undefined && isPidT(peer.pid) && isUidT(peer.uid) && isUidT(peer.gid)) return native(peer.pid, peer.uid, peer.gid);
  const owner = procOwner(peer.pid);
  if (owner === undefined) return -1;
  return owner.uid === peer.uid && owner.gid === peer.gid ? 1 : 0;
}

function isPidT(n: number): boolean {
  return Number.isInteger(n) && n > 0 && n <= 0x7fff_ffff;
}

function isUidT(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffff_ffff;
}
