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
import { closeSync, constants, fchmodSync, lstatSync, mkdirSync, openSync, readlinkSync, type Stats } from "node:fs";
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
  return (st.uid === 0 || st.uid === uid) && ((st.mode & WRITABLE_BY_OTHERS) === 0 || (st.mode & STICKY) !== 0);
}

/** Throws unless `p` (with stats `st`) is a safe ancestor of `dir`. */
function checkAncestor(p: string, st: Stats, uid: number, subsystem: string, dir: string): void {
  if (safeAncestor(st, uid)) return;
  throw refuse(
    subsystem,
    dir,
    `${p} above it is ${describe(st)}; every directory above it must be owned by root or uid ${uid} and not writable by group or others (unless sticky, like /tmp)`,
  );
}

/** Symbolic links followed before giving up, as the kernel's ELOOP limit. */
const MAX_LINKS = 40;

function statError(subsystem: string, dir: string, e: unknown): SigilError {
  const code = (e as NodeJS.ErrnoException).code;
  return new SigilError(code === "ENOENT" ? "ERR_NOT_FOUND" : "ERR_INTERNAL", `${subsystem}: cannot use directory ${dir}: ${(e as Error).message}`, { cause: e });
}

/**
 * Resolves absolute `p` one name at a time, as the kernel does, and checks on
 * the way that every directory passed through is a safe ancestor and every
 * symbolic link followed (wherever it sits in a chain of links) is owned by
 * root or `uid`: a link's owner can repoint it at any time. Returns the
 * resolved path and its stats. `dir` names the directory in messages.
 */
function resolveChecked(p: string, uid: number, subsystem: string, dir: string): { real: string; st: Stats } {
  const names = p.split("/").filter((n) => n !== "");
  let real = "/";
  let st: Stats;
  let links = 0;
  try {
    st = lstatSync(real);
    while (names.length > 0) {
      const name = names.shift() as string;
      if (name === ".") continue;
      if (name === "..") {
        real = path.dirname(real);
        st = lstatSync(real);
        continue;
      }
      // `real` is a directory we are about to look into: only root or we may rename its entries.
      checkAncestor(real, st, uid, subsystem, dir);
      const next = path.join(real, name);
      const entry = lstatSync(next);
      if (!entry.isSymbolicLink()) {
        real = next;
        st = entry;
        continue;
      }
      if (entry.uid !== 0 && entry.uid !== uid) {
        throw refuse(subsystem, dir, `${next}, a symbolic link on the way, is owned by uid ${entry.uid}; every symbolic link on the way must be owned by root or uid ${uid}`);
      }
      if (++links > MAX_LINKS) throw refuse(subsystem, dir, `more than ${MAX_LINKS} symbolic links on the way`);
      const target = readlinkSync(next);
      names.unshift(...target.split("/").filter((n) => n !== ""));
      if (target.startsWith("/")) {
        real = "/";
        st = lstatSync(real);
      }
    }
  } catch (e) {
    if (e instanceof SigilError) throw e;
    throw statError(subsystem, dir, e);
  }
  return { real, st };
}

/**
 * Checks that an existing directory is safe to hold a socket or key file
 * (see the module comment). The path is resolved one name at a time: every
 * directory passed through must be a safe ancestor and every symbolic link
 * followed must belong to root or the process's user.
 *
 * @param subsystem message prefix (`agent`, `server`, `keymanager(disk)`)
 * @throws SigilError `ERR_PERMISSION_DENIED` naming the directory, its owner and its mode
 *   (or the ancestor or link that is unsafe); `ERR_NOT_FOUND` when it does not exist.
 */
export function checkSecureDirectory(dir: string, subsystem: string): void {
  const abs = path.resolve(dir);
  const uid = effectiveUid();
  const { st } = resolveChecked(abs, uid, subsystem, abs);
  if (!st.isDirectory()) throw refuse(subsystem, abs, "it is not a directory");
  if (st.uid !== uid || (st.mode & WRITABLE_BY_OTHERS) !== 0) {
    throw refuse(subsystem, abs, `it is ${describe(st)}; it must be owned by uid ${uid} (the user this process runs as) and not writable by group or others`);
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
  // What exists already must be safe before anything is created below it (never through someone else's link).
  const existing = missing.length > 0 ? path.dirname(missing[0] as string) : undefined;
  if (existing !== undefined) {
    const { real, st } = resolveChecked(existing, effectiveUid(), subsystem, abs);
    if (!st.isDirectory()) throw refuse(subsystem, abs, `${existing} above it is not a directory`);
    checkAncestor(real, st, effectiveUid(), subsystem, abs);
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
