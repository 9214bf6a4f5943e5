/**
 * Atomic writes of private files (the server's key file, the agent's SVID and
 * bundle): a crash leaves either the old or the new content, never a mix, and
 * nobody else can make Sigil write somewhere else.
 *
 * The content goes to a fresh temporary file with a random name in the same
 * directory, opened with `O_CREAT | O_EXCL | O_NOFOLLOW`: a file or symbolic
 * link planted at that name makes the open fail instead of being written
 * through. The directory must be safe (owned by the process's user, not
 * writable by group or others, see `secure-dir.ts`), so nobody else can plant
 * or swap entries in it. Then fsync, rename over the target, and fsync of the
 * directory so the rename itself survives a power loss.
 */
import { randomBytes } from "node:crypto";
import { closeSync, constants, fchmodSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import path from "node:path";
import { SigilError } from "../spiffe/errors.js";
import { checkSecureDirectory } from "./secure-dir.js";

/** Options of {@link writeFileAtomic}. */
export interface AtomicWriteOptions {
  /** Message prefix (default `storage`). */
  readonly subsystem?: string;
  /**
   * Base name of the temporary file for target base name `name`; default
   * `.<name>.<16 random hex digits>.tmp`. Tests inject a predictable one.
   */
  readonly tempName?: (name: string) => string;
}

const CREATE_EXCLUSIVE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/** The default temporary name: unguessable, so nobody can prepare anything at it. */
function randomTempName(name: string): string {
  return `.${name}.${randomBytes(8).toString("hex")}.tmp`;
}

/**
 * Writes `data` to `file` atomically; the file gets `mode` whatever the umask.
 * The directory must exist already.
 *
 * @example
 * ```ts
 * writeFileAtomic("/var/lib/sigil/server/keys.json", json, 0o600, { subsystem: "keymanager(disk)" });
 * ```
 * @throws SigilError `ERR_PERMISSION_DENIED` when the directory is not safe (named with its
 *   owner and mode); `ERR_INTERNAL` (`<subsystem>: cannot write <file>: …`) when the write fails,
 *   including when something already exists at the temporary name.
 */
export function writeFileAtomic(file: string, data: string | Uint8Array, mode: number, options: AtomicWriteOptions = {}): void {
  const subsystem = options.subsystem ?? "storage";
  const dir = path.dirname(file);
  const what = `${subsystem}: cannot write ${file}`;
  checkSecureDirectory(dir, what);
  const tmp = path.join(dir, (options.tempName ?? randomTempName)(path.basename(file)));
  let fd: number | undefined;
  let created = false;
  try {
    fd = openSync(tmp, CREATE_EXCLUSIVE, mode);
    created = true;
    fchmodSync(fd, mode);
    const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    for (let off = 0; off < bytes.length; ) off += writeSync(fd, bytes, off, bytes.length - off);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, file);
  } catch (e) {
    if (fd !== undefined) closeSync(fd);
    // Only what this call created is removed: a planted link stays for the operator to find.
    if (created) rmSync(tmp, { force: true });
    throw new SigilError("ERR_INTERNAL", `${what}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  // The rename is durable only once the directory entry is.
  let dirFd: number | undefined;
  try {
    dirFd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    fsyncSync(dirFd);
  } catch {
    // Some filesystems refuse fsync on directories; the rename itself already happened.
  } finally {
    if (dirFd !== undefined) closeSync(dirFd);
  }
}
