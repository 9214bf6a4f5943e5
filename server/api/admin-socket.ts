/**
 * The admin API's Unix socket, with the kernel's word on who is calling.
 *
 * Whoever can open the socket is an administrator, so every call is audited
 * with the caller's uid, gid and pid (`SO_PEERCRED`, read when the connection
 * is accepted, before any byte of gRPC) and its binary (`/proc/<pid>/exe`, read
 * at the same moment; empty when the kernel does not tell). As on the agent's
 * Workload Endpoint, a plain `net.Server` accepts each connection, gives it a
 * unique synthetic `remoteAddress` (what grpc-js reports as `call.getPeer()`)
 * and injects it into grpc-js.
 *
 * The socket is 0600 in a directory created 0700; an existing directory must
 * belong to the server's user and not be writable by group or others.
 */
import { readlinkSync } from "node:fs";
import { chmod } from "node:fs/promises";
import { createServer, type Socket } from "node:net";
import { ServerCredentials, type Server } from "@grpc/grpc-js";
import { peerCredentials, releasePeer, stillSameProcess, type PeerCredentials } from "../../agent/endpoints/peer.js";
import type { AuditCaller, Logger } from "../../common/log.js";
import { prepareSocketPath } from "../../common/unix-socket.js";
import { SigilError } from "../../spiffe/errors.js";

/** Prefix of the synthetic peer addresses of admin connections. */
const PEER_PREFIX = "sigil-admin-peer";

/** The process on the other end of an admin connection, as seen when it connected. */
export interface AdminCaller {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
  /** The caller's binary (`/proc/<pid>/exe`), or `""` when it could not be read. */
  readonly path: string;
}

/** Remembers the caller behind each open admin connection. */
export interface AdminCallers {
  /** Reads a freshly accepted socket's caller and tags the socket with a unique peer address. */
  register(socket: Socket): AdminCaller;
  /** The audit caller of a call (by `call.getPeer()`); `{}` for an unknown peer. */
  callerOf(call: { getPeer(): string }): AuditCaller;
}

/** The binary a process runs, or `""` (exited, or hidden from this user). */
export function processBinary(pid: number): string {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return "";
  }
}

/**
 * Creates the caller registry.
 *
 * @param readCredentials a socket's credentials; default `SO_PEERCRED`
 */
export function createAdminCallers(readCredentials: (socket: Socket) => PeerCredentials = peerCredentials): AdminCallers {
  const byPeer = new Map<string, AdminCaller>();
  let next = 0;
  return {
    register(socket) {
      const cred = readCredentials(socket);
      const { pid, uid, gid } = cred;
      let binary: string;
      try {
        binary = processBinary(pid);
        // Read after the link: a caller that already exited may have left its pid to another binary.
        if (!stillSameProcess(cred)) binary = "";
      } finally {
        releasePeer(cred);
      }
      const caller: AdminCaller = { pid, uid, gid, path: binary };
      next += 1;
      const address = `${PEER_PREFIX}#${next}(pid=${pid},uid=${uid})`;
      Object.defineProperty(socket, "remoteAddress", { value: address, configurable: true, enumerable: true });
      Object.defineProperty(socket, "remotePort", { value: undefined, configurable: true, enumerable: true });
      byPeer.set(address, caller);
      socket.once("close", () => byPeer.delete(address));
      return caller;
    },
    callerOf(call) {
      const c = byPeer.get(call.getPeer());
      return c === undefined ? {} : { uid: c.uid, gid: c.gid, pid: c.pid, path: c.path };
    },
  };
}

/** A listening admin socket. */
export interface AdminSocket {
  readonly socketPath: string;
  /** Stops accepting, lets calls in flight finish, closes the connections and removes the socket file. */
  close(): Promise<void>;
}

/**
 * Serves `server` (its services already added) on the admin socket.
 *
 * @example
 * ```ts
 * const callers = createAdminCallers();
 * const admin = createAdminApi({ ...deps, callerOf: (call) => callers.callerOf(call) });
 * // … adminServer.addService(…)
 * const socket = await serveAdminSocket({ server: adminServer, socketPath, callers, log });
 * ```
 * @throws SigilError `ERR_PERMISSION_DENIED` for an unsafe socket directory (named with owner and mode);
 *   `ERR_ALREADY_EXISTS` when another server listens on the socket.
 */
export async function serveAdminSocket(options: { server: Server; socketPath: string; callers: AdminCallers; log: Logger }): Promise<AdminSocket> {
  const { server, socketPath, callers, log } = options;
  await prepareSocketPath(socketPath, { dirMode: 0o700, subsystem: "admin api", log });
  const injector = server.createConnectionInjector(ServerCredentials.createInsecure());
  const sockets = new Set<Socket>();
  const listener = createServer((socket) => {
    try {
      callers.register(socket);
    } catch (e) {
      log.error({ err: e }, "admin api: cannot read the peer credentials of a connection; closing it");
      socket.destroy();
      return;
    }
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    injector.injectConnection(socket);
  });
  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen(socketPath, () => {
      listener.off("error", reject);
      resolve();
    });
  });
  listener.on("error", (e) => log.error({ err: e }, "admin api: listener error"));
  try {
    await chmod(socketPath, 0o600);
  } catch (e) {
    listener.close();
    throw new SigilError("ERR_INTERNAL", `admin api: cannot chmod ${socketPath}: ${(e as Error).message}`, { cause: e });
  }
  let closing: Promise<void> | undefined;
  return {
    socketPath,
    close() {
      closing ??= (async () => {
        // The listener's callback waits for its connections, which the gRPC shutdown ends.
        const stopped = new Promise<void>((resolve) => listener.close(() => resolve()));
        await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
        injector.destroy();
        for (const s of sockets) s.destroy();
        await stopped;
      })();
      return closing;
    },
  };
}
