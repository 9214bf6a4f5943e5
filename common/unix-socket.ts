/**
 * Claiming the path of a Unix socket a Sigil process is about to listen on
 * (the agent's Workload API, the server's admin API): the directory must be
 * safe (created by Sigil, or owned by its user and not writable by group or
 * others, see `secure-dir.ts`), a stale socket file left by a dead process is
 * removed, and anything else in the way (a live socket, a regular file) is left
 * alone and the start fails.
 */
import { lstat, unlink } from "node:fs/promises";
import { connect } from "node:net";
import path from "node:path";
import { SigilError } from "../spiffe/errors.js";
import type { Logger } from "./log.js";
import { ensureSecureDirectory } from "./secure-dir.js";

/** Options of {@link prepareSocketPath}. */
export interface PrepareSocketPathOptions {
  /** Mode of the socket's directory when Sigil creates it: `0o755` when others must connect, `0o700` otherwise. */
  readonly dirMode: number;
  /** Message prefix (`workload endpoint`, `admin api`). */
  readonly subsystem: string;
  readonly log: Logger;
}

/** True when a process accepts connections on `socketPath`. */
export function isLiveSocket(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(socketPath);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/**
 * Makes `socketPath` ready to listen on.
 *
 * @example
 * ```ts
 * await prepareSocketPath("/tmp/sigil-agent/public/api.sock", { dirMode: 0o755, subsystem: "workload endpoint", log });
 * ```
 * @throws SigilError `ERR_INVALID_ARGUMENT` for a relative path; `ERR_PERMISSION_DENIED`
 *   for an unsafe directory (the message names it, its owner and its mode);
 *   `ERR_ALREADY_EXISTS` when another process serves the socket or a non-socket is in the way.
 */
export async function prepareSocketPath(socketPath: string, options: PrepareSocketPathOptions): Promise<void> {
  const { subsystem, log } = options;
  if (!path.isAbsolute(socketPath)) throw new SigilError("ERR_INVALID_ARGUMENT", `${subsystem}: socket path ${JSON.stringify(socketPath)} is not absolute`);
  ensureSecureDirectory(path.dirname(socketPath), options.dirMode, subsystem);
  let st;
  try {
    st = await lstat(socketPath);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw new SigilError("ERR_INTERNAL", `${subsystem}: cannot inspect ${socketPath}: ${(e as Error).message}`, { cause: e });
  }
  if (!st.isSocket()) {
    throw new SigilError("ERR_ALREADY_EXISTS", `${subsystem}: ${socketPath} exists and is not a socket; refusing to replace it`);
  }
  if (await isLiveSocket(socketPath)) {
    throw new SigilError("ERR_ALREADY_EXISTS", `${subsystem}: another process is already serving on ${socketPath}`);
  }
  log.info({ socket_path: socketPath }, "Removing stale socket");
  await unlink(socketPath);
}
