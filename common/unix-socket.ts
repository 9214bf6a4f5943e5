/**
 * gRPC on a Unix socket, as the agent's Workload API and the server's admin
 * API serve it.
 *
 * Claiming the path: the directory must be safe (created by Sigil, or owned by
 * its user and not writable by group or others, see `secure-dir.ts`), a stale
 * socket file left by a dead process is removed, and anything else in the way
 * (a live socket, a regular file) is left alone and the start fails.
 *
 * Listening: grpc-js handlers cannot reach their socket, and libuv does not
 * expose SO_PEERCRED, so a plain `net.Server` accepts each connection, lets the
 * caller read its peer credentials before any byte of gRPC is processed (and
 * tag it, e.g. with a synthetic `remoteAddress`, which grpc-js reports as
 * `call.getPeer()`), then hands it to grpc-js through a connection injector.
 */
import { chmod, lstat, unlink } from "node:fs/promises";
import { connect, createServer, type Socket } from "node:net";
import path from "node:path";
import { ServerCredentials, type Server } from "@grpc/grpc-js";
import { SigilError } from "../spiffe/errors.js";
import { unixSocketPathLengthProblem } from "../spiffe/workloadapi/address.js";
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
 * @throws SigilError `ERR_INVALID_ARGUMENT` for a relative or too long path; `ERR_PERMISSION_DENIED`
 *   for an unsafe directory (the message names it, its owner and its mode);
 *   `ERR_ALREADY_EXISTS` when another process serves the socket or a non-socket is in the way.
 */
export async function prepareSocketPath(socketPath: string, options: PrepareSocketPathOptions): Promise<void> {
  const { subsystem, log } = options;
  if (!path.isAbsolute(socketPath)) throw new SigilError("ERR_INVALID_ARGUMENT", `${subsystem}: socket path ${JSON.stringify(socketPath)} is not absolute`);
  const tooLong = unixSocketPathLengthProblem(socketPath);
  if (tooLong !== undefined) throw new SigilError("ERR_INVALID_ARGUMENT", `${subsystem}: socket path ${socketPath} ${tooLong}`);
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

/** Options of {@link listenUnixGrpc}. */
export interface UnixGrpcListenerOptions extends PrepareSocketPathOptions {
  readonly socketPath: string;
  /** The gRPC server, its services already added. */
  readonly server: Server;
  /** Mode of the socket file: `0o777` when anyone may connect, `0o600` for the process user only. */
  readonly socketMode: number;
  /**
   * Called with each accepted connection before gRPC sees a byte of it (read
   * its peer credentials here). Returning false closes the connection (the
   * callback says why, if it should be said); throwing closes it and logs the error.
   */
  readonly onConnection: (socket: Socket) => unknown;
}

/** A listening Unix socket serving gRPC. */
export interface UnixGrpcListener {
  /**
   * Stops accepting and removes the socket file. `graceful` lets calls in
   * flight finish; `force` cancels them (streams never end on their own).
   * Open connections are closed either way. Idempotent.
   */
  close(how: "graceful" | "force"): Promise<void>;
}

/**
 * Claims `socketPath` ({@link prepareSocketPath}) and serves `server` on it.
 *
 * @example
 * ```ts
 * const listener = await listenUnixGrpc({ socketPath, server, dirMode: 0o700, socketMode: 0o600, subsystem: "admin api", log, onConnection: (s) => callers.register(s) });
 * await listener.close("graceful");
 * ```
 * @throws SigilError as {@link prepareSocketPath}; `ERR_INTERNAL` when the socket cannot be given its mode.
 */
export async function listenUnixGrpc(options: UnixGrpcListenerOptions): Promise<UnixGrpcListener> {
  const { socketPath, server, subsystem, log } = options;
  await prepareSocketPath(socketPath, options);
  const injector = server.createConnectionInjector(ServerCredentials.createInsecure());
  const sockets = new Set<Socket>();
  const listener = createServer((socket) => {
    try {
      if (options.onConnection(socket) === false) {
        socket.destroy();
        return;
      }
    } catch (e) {
      log.error({ err: e }, `${subsystem}: cannot read the peer credentials of a connection; closing it`);
      socket.destroy();
      return;
    }
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    injector.injectConnection(socket);
  });
  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    // The socket is created by bind(), inside listen(), with the umask's mode: restricted for
    // that call so that a 0600 socket is never, until the chmod below, open to others.
    const umask = process.umask(0o777 & ~options.socketMode);
    try {
      listener.listen(socketPath, () => {
        listener.off("error", reject);
        resolve();
      });
    } finally {
      process.umask(umask);
    }
  });
  listener.on("error", (e) => log.error({ err: e }, `${subsystem}: listener error`));
  try {
    await chmod(socketPath, options.socketMode);
  } catch (e) {
    listener.close();
    throw new SigilError("ERR_INTERNAL", `${subsystem}: cannot chmod ${socketPath}: ${(e as Error).message}`, { cause: e });
  }
  let closing: Promise<void> | undefined;
  return {
    close(how) {
      closing ??= (async () => {
        // The listener's callback waits for its connections, which the gRPC shutdown ends.
        const stopped = new Promise<void>((resolve) => listener.close(() => resolve()));
        if (how === "force") server.forceShutdown();
        else await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
        injector.destroy();
        for (const s of sockets) s.destroy();
        await stopped;
        await unlink(socketPath).catch(() => undefined);
      })();
      return closing;
    },
  };
}
