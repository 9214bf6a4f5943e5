/**
 * The admin socket's caller registry: each connection is tagged with a
 * unique peer address that maps back to the caller read at connect time,
 * until the connection closes; the binary is recorded only while the pid
 * still names the process that connected.
 */
import { EventEmitter } from "node:events";
import { lstatSync, mkdtempSync, realpathSync, rmSync } from "node:fs";
import { Server as NetServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { Server } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { processStartTime, type PeerCredentials } from "../../../../agent/endpoints/peer.js";
import { createLogger } from "../../../../common/log.js";
import { createAdminCallers, processBinary, serveAdminSocket } from "../../../../server/api/admin-socket.js";

const self = (startTime: bigint): PeerCredentials => ({ pid: process.pid, uid: 1234, gid: 5678, startTime });

function fakeSocket(): Socket & EventEmitter {
  return new EventEmitter() as unknown as Socket & EventEmitter;
}

describe("admin socket callers", () => {
  it("maps each connection's peer address to the uid, gid, pid and binary read at connect time, and forgets it on close", () => {
    const callers = createAdminCallers(() => self(processStartTime(process.pid)));
    const a = fakeSocket();
    const b = fakeSocket();
    const ca = callers.register(a);
    callers.register(b);
    expect(a.remoteAddress).not.toBe(b.remoteAddress);
    expect(ca).toEqual({ pid: process.pid, uid: 1234, gid: 5678, path: realpathSync(process.execPath) });
    const call = { getPeer: () => String(a.remoteAddress) };
    expect(callers.callerOf(call)).toEqual({ uid: 1234, gid: 5678, pid: process.pid, path: realpathSync(process.execPath) });
    a.emit("close");
    expect(callers.callerOf(call)).toEqual({});
    expect(callers.callerOf({ getPeer: () => String(b.remoteAddress) }).pid).toBe(process.pid);
  });

  it("records no binary when the pid no longer names the process that connected", () => {
    const callers = createAdminCallers(() => self(1n)); // a start time this process does not have
    expect(callers.register(fakeSocket()).path).toBe("");
  });

  it("processBinary is empty for a pid that does not exist", () => {
    expect(processBinary(2 ** 22 + 1)).toBe("");
    expect(processBinary(process.pid)).toBe(realpathSync(process.execPath));
  });
});

describe("admin socket file", () => {
  // Another user who can reach the directory (an operator's existing 0755
  // directory) and connects between bind and chmod keeps that connection, and
  // with it the admin API: the socket must be 0600 from the moment it exists,
  // whatever the umask the server was started with.
  it("is never, even before its chmod, accessible to group or others", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "sigil-admin-umask-"));
    const socketPath = path.join(dir, "api.sock");
    const modesAtBind: number[] = [];
    const listen = NetServer.prototype.listen;
    const previousUmask = process.umask(0);
    NetServer.prototype.listen = function (this: NetServer, ...args: unknown[]) {
      const r = (listen as (...a: unknown[]) => NetServer).apply(this, args);
      if (args[0] === socketPath) modesAtBind.push(lstatSync(socketPath).mode & 0o777);
      return r;
    } as typeof listen;
    let socket;
    try {
      socket = await serveAdminSocket({ server: new Server(), socketPath, callers: createAdminCallers(), log: createLogger({ level: "error", destination: { write: () => undefined } }) });
    } finally {
      NetServer.prototype.listen = listen;
      process.umask(previousUmask);
    }
    try {
      expect(modesAtBind).toEqual([0o600]);
      expect(lstatSync(socketPath).mode & 0o777).toBe(0o600);
    } finally {
      await socket.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
