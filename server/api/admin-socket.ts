/**
 * The admin API's Unix socket, with the kernel's word on who is calling.
 *
 * Whoever can open the socket is an administrator, so every call is audited
 * with the caller's uid, gid and pid (`SO_PEERCRED`, read when the connection
 * is accepted, before any byte of gRPC) and its binary (`/proc/<pid>/exe`, read
 * at the same moment; empty when the kernel does not tell). Each connection
 * gets a unique synthetic `remoteAddress` (what grpc-js reports as
 * `call.getPeer()`) that maps back to its caller (`listenUnixGrpc`).
 *
 * The socket is 0600 in a directory created 0700; an existing directory must
 * belong to the server's user and not be writable by group or others.
 */
import { readlinkSync } from "node:fs";
import type { Socket } from "node:net";
import type { Server } from "@grpc/grpc-js";
import { peerCredentials, releasePeer, stillSameProcess, type PeerCredentials } from "../../agent/endpoints/peer.js";
import type { AuditCaller, Logger } from "../../common/log.js";
import { listenUnixGrpc } from "../../common/unix-socket.js";

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
 * Serves `server` (its services already added) on the admin socket: directory
 * created 0700, socket 0600, each connection's caller registered in `callers`.
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
  const { socketPath, callers } = options;
  const listener = await listenUnixGrpc({
    socketPath,
    server: options.server,
    dirMode: 0o700,
    socketMode: 0o600,
    subsystem: "admin api",
    log: options.log,
    onConnection: (socket) => callers.register(socket),
  });
  return { socketPath, close: () => listener.close("graceful") };
}
