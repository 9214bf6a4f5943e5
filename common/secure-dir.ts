/**
 * Directories Sigil puts sockets and key files in. Whoever can write to such
 * a directory, or to any directory above it, can swap the socket or the key
 * file for their own; so an existing directory is used only when it is owned
 * by the user Sigil runs as and not writable by group or others, and every
 * directory above it is owned by root or that user and not writable by group
 * or others unless it is sticky (`/tmp`: nobody may rename another user's
 * entry there). Otherwise Sigil refuses to start and names the directory,
 * its owner and its mode.
 */
import { closeSync, constants, fchmodSync, lstatSync, mkdirSync, openSync, realpathSync, statSync, type Stats } from "node:fs";
import path from "node:path";
import { SigilError } from "../spiffe/errors.js";

/** A directory's permission bits as operators write them (`0755`, `1777`). */
export function formatMode(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, "0");
}

function effectiveUid(): number {
  return process.geteuid?.() ?? 0;
}

function refuse(subsystem: string, dir: string, because: string, cause?: unknown): SigilError {
  return new SigilError("ERR_PERMISSION_DENIED", `${subsystem}: refusing to use directory ${dir}: ${because}`, cause === undefined ? undefined : { cause });
}

function describe(st: Stats): string {
  return `owned by uid ${st.uid} with mode ${formatMode(st.mode)}`;
}

const WRITABLE_BY_OTHERS = 0o022;
/** The sticky bit (`S_ISVTX`; Node's `fs.constants` does not export it). */
const STICKY = 0o1000;

/** An ancestor is safe when only root or we can rename entries in it. */
function safeAncestor(st: Stats, uid: number): boolean {
  if (st.isSymbolicLink()) return st.uid === 0 || st.uid === uid;
  return (st.uid === 0 || st.uid === uid) && ((st.mode & WRITABLE_BY_OTHERS) === 0 || (st.mode & STICKY) !== 0);
}

/** Every proper ancestor of an absolute path, nearest first, ending with `/`. */
function ancestors(p: string): string[] {
  const out: string[] = [];
  for (let cur = path.dirname(p); ; cur = path.dirname(cur)) {
    out.push(cur);
    if (cur === path.dirname(cur)) return out;
  }
}

/**
 * Checks that an existing directory is safe to hold a socket or key file
 * (see the module comment). Symbolic links on the way are followed, and both
 * the given path and the resolved one are checked.
 *
 * @param subsystem message prefix (`agent`, `server`, `keymanager(disk)`)
 * @throws SigilError `ERR_PERMISSION_DENIED` naming the directory, its owner and its mode
 *   (or the ancestor that is unsafe); `ERR_NOT_FOUND` when it does not exist.
 */
export function checkSecureDirectory(dir: string, subsystem: string): void {
  const abs = path.resolve(dir);
  const uid = effectiveUid();
  let real: string;
  try {
    real = realpathSync(abs);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new SigilError(code === "ENOENT" ? "ERR_NOT_FOUND" : "ERR_INTERNAL", `${subsystem}: cannot use directory ${abs}: ${(e as Error).message}`, { cause: e });
  }
  const st = statSync(real);
  if (!st.isDirectory()) throw refuse(subsystem, abs, "it is not a directory");
  if (st.uid !== uid || (st.mode & WRITABLE_BY_OTHERS) !== 0) {
    throw refuse(subsystem, abs, `it is ${describe(st)}; it must be owned by uid ${uid} (the user this process runs as) and not writable by group or others`);
  }
  // The path as configured (links not followed) and as resolved.
  const seen = new Set<string>();
  for (const p of [...ancestors(abs), ...ancestors(real)]) {
    if (seen.has(p)) continue;
    seen.add(p);
    const a = lstatSync(p);
    if (!safeAncestor(a, uid)) {
      throw refuse(
        subsystem,
        abs,
        `${p} above it is ${describe(a)}; every directory above it must be owned by root or uid ${uid} and not writable by group or others (unless sticky, like /tmp)`,
      );
    }
  }
}

/**
 * Makes sure `dir` exists and is safe: missing directories (the last one and
 * any missing parents) are created with `mode` whatever the umask, owned by
 * the process's user; then the whole path is checked with
 * {@link checkSecureDirectory}.
 *
 * @param mode `0o755` for a directory others must reach (the Workload API), `0o700` otherwise
 * @throws SigilError `ERR_PERMISSION_DENIED` for an unsafe directory (see {@link checkSecureDirectory})
 */
export function ensureSecureDirectory(dir: string, mode: number, subsystem: string): void {
  const abs = path.resolve(dir);
  const missing: string[] = [];
  for (let cur = abs; ; cur = path.dirname(cur)) {
    try {
      lstatSync(cur);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT" || cur === path.dirname(cur)) break;
      missing.unshift(cur);
    }
  }
  for (const d of missing) {
    try {
      mkdirSync(d, { mode });
    } catch (e) {
      // Created meanwhile by someone else: the check below decides whether it is usable.
      if ((e as NodeJS.ErrnoException).code === "EEXIST") continue;
      throw new SigilError("ERR_INTERNAL", `${subsystem}: cannot create directory ${d}: ${(e as Error).message}`, { cause: e });
    }
    // mkdir's mode is filtered by the umask; fchmod on the directory just made, never through a link.
    const fd = openSync(d, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    try {
      fchmodSync(fd, mode);
    } finally {
      closeSync(fd);
    }
  }
  checkSecureDirectory(abs, subsystem);
}
