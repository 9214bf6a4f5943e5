/**
 * The admin socket's caller registry: each connection is tagged with a
 * unique peer address that maps back to the caller read at connect time,
 * until the connection closes; the binary is recorded only while the pid
 * still names the process that connected.
 */
import { EventEmitter } from "node:events";
import { realpathSync } from "node:fs";
import type { Socket } from "node:net";
import { describe, expect, it } from "vitest";
import { processStartTime, type PeerCredentials } from "../../agent/endpoints/peer.js";
import { createAdminCallers, processBinary } from "../../server/api/admin-socket.js";

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
