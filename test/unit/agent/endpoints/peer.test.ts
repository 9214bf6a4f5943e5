import { spawn } from "node:child_process";
import { chmodSync } from "node:fs";
import { createRequire } from "node:module";
import { connect, createServer, type Socket } from "node:net";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { peerCredentials, processStartTime, releasePeer, stillSameProcess, verifyPeer, type PeerCredentials } from "../../../../agent/endpoints/peer.js";
import { testTempDir } from "../../../support/temp-dir.js";

const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("the other-uid peer credential test needs root; CI runs as root");
  console.warn("SKIP: the other-uid peer credential test needs root (CI runs as root)");
}

function serve(): Promise<{ sock: string; next: () => Promise<PeerCredentials>; close: () => void }> {
  const dir = testTempDir("sigil-peer-");
  chmodSync(dir, 0o755);
  const sock = path.join(dir, "s.sock");
  const waiting: ((c: PeerCredentials) => void)[] = [];
  const server = createServer((s: Socket) => {
    const c = peerCredentials(s);
    waiting.shift()?.(c);
    s.end();
  });
  return new Promise((resolve) =>
    server.listen(sock, () => {
      chmodSync(sock, 0o777);
      resolve({
        sock,
        next: () => new Promise((r) => waiting.push(r)),
        close: () => server.close(),
      });
    }),
  );
}

function connectAs(sock: string, uid?: number, gid?: number): Promise<number> {
  const script = `const s=require("net").connect(${JSON.stringify(sock)});s.on("close",()=>process.exit(0));s.on("error",()=>process.exit(3));`;
  const child = spawn(process.execPath, ["-e", script], { stdio: "ignore", ...(uid === undefined ? {} : { uid, gid }) });
  return new Promise((r) => child.on("exit", () => r(child.pid ?? -1)));
}

describe("peer credentials (SO_PEERCRED)", () => {
  it("reports the connecting process's pid, uid and gid", async () => {
    const srv = await serve();
    const got = srv.next();
    const pid = await connectAs(srv.sock);
    const c = await got;
    expect(c.pid).toBe(pid);
    expect(c.uid).toBe(process.getuid?.());
    expect(c.gid).toBe(process.getgid?.());
    srv.close();
  });

  it.skipIf(!isRoot)("reports another uid for a client run as another user (needs root)", async () => {
    const srv = await serve();
    const got = srv.next();
    await connectAs(srv.sock, 4321, 4322);
    const c = await got;
    expect(c.uid).toBe(4321);
    expect(c.gid).toBe(4322);
    srv.close();
  });

  it("detects that a pid no longer names the process that connected", async () => {
    const srv = await serve();
    const got = srv.next();
    await connectAs(srv.sock); // the client exits right after connecting
    const c = await got;
    expect(stillSameProcess(c)).toBe(false);
    expect(verifyPeer(c)?.kind).toBe("gone");
    // Without a pidfd: the start-time fallback.
    expect(stillSameProcess({ pid: c.pid, uid: c.uid, gid: c.gid, startTime: c.startTime })).toBe(false);
    expect(stillSameProcess({ pid: process.pid, uid: c.uid, gid: c.gid, startTime: processStartTime(process.pid) })).toBe(true);
    releasePeer(c);
    srv.close();
  });

  it("holds a pidfd on the connecting process (Linux >= 5.3): alive while it runs, exited after; closed handles read as gone", async () => {
    const [major = 0, minor = 0] = (await import("node:os")).release().split(".").map(Number);
    const hasPidfd = major > 5 || (major === 5 && minor >= 3);
    const srv = await serve();
    const got = srv.next();
    const child = spawn(process.execPath, ["-e", `const s=require("net").connect(${JSON.stringify(srv.sock)});process.stdin.on("end",()=>process.exit(0));process.stdin.resume();`], {
      stdio: ["pipe", "ignore", "ignore"],
    });
    const c = await got;
    if (hasPidfd) expect(c.process).toBeDefined();
    expect(stillSameProcess(c)).toBe(true);
    expect(verifyPeer(c)).toBeUndefined();
    child.stdin.end();
    await new Promise((r) => child.on("exit", r));
    expect(stillSameProcess(c)).toBe(false);
    releasePeer(c);
    releasePeer(c); // idempotent
    expect(c.process === undefined || c.process.exited()).toBe(true);
    srv.close();
  });
});

describe("verifyPeer: the owner check keeps fs.statSync's answers", () => {
  /** The addon's exports, as peer.ts loaded them (one module object per process). */
  const addon = createRequire(import.meta.url)(path.resolve(import.meta.dirname, "../../../../build/Release/peercred.node")) as Record<string, unknown>;

  /** This process, connected to a socket of its own: its credentials with a pidfd on itself where the kernel has one. */
  async function self(): Promise<{ peer: PeerCredentials; done: () => void }> {
    const srv = await serve();
    const got = srv.next();
    const s = connect(srv.sock);
    const peer = await got;
    expect(peer.pid).toBe(process.pid);
    return {
      peer,
      done: () => {
        s.destroy();
        releasePeer(peer);
        srv.close();
      },
    };
  }

  it("a pid no process can have (0, as SO_PEERCRED gives for a peer outside the agent's pid namespace; negative, fractional, beyond pid_t) is gone, never an error or another pid", async () => {
    const { peer, done } = await self();
    try {
      expect(verifyPeer(peer)).toBeUndefined();
      for (const pid of [0, -1, -process.pid, 1.5, Number.NaN, 2 ** 32 + process.pid, 2 ** 31 + process.pid]) {
        expect(verifyPeer({ ...peer, pid }), `pid ${pid}`).toMatchObject({ kind: "gone" });
      }
    } finally {
      done();
    }
  });

  it("a uid or gid beyond uid_t or fractional never matches the owner (it is not cut to 32 bits)", async () => {
    const { peer, done } = await self();
    try {
      for (const ids of [{ uid: peer.uid + 2 ** 32 }, { gid: peer.gid + 2 ** 32 }, { uid: peer.uid + 0.5 }, { uid: -1 }]) {
        expect(verifyPeer({ ...peer, ...ids }), JSON.stringify(ids)).toMatchObject({ kind: "owner_changed" });
      }
    } finally {
      done();
    }
  });

  it("an owner that differed while the process was alive is owner_changed, also when /proc/<pid> is gone by the time the log's detail is read", async () => {
    const { peer, done } = await self();
    const real = addon["procOwnerIs"];
    try {
      // The stat saw another owner; the process is alive afterwards; then /proc/<pid> cannot be read again.
      addon["procOwnerIs"] = () => 0;
      const change = verifyPeer({ ...peer, pid: 4_194_305 }); // above the largest pid_max: never a process
      expect(change?.kind).toBe("owner_changed");
      expect(change?.detail).toContain(`the caller connected as uid ${peer.uid} gid ${peer.gid}`);
    } finally {
      addon["procOwnerIs"] = real;
      done();
    }
  });

  it("an addon built before procOwnerIs (not rebuilt after an upgrade) still checks the owner", async () => {
    const { peer, done } = await self();
    const real = addon["procOwnerIs"];
    try {
      delete addon["procOwnerIs"];
      expect(verifyPeer(peer)).toBeUndefined();
      expect(verifyPeer({ ...peer, uid: peer.uid + 1 })).toMatchObject({ kind: "owner_changed" });
      expect(verifyPeer({ ...peer, pid: 0 })).toMatchObject({ kind: "gone" });
    } finally {
      addon["procOwnerIs"] = real;
      done();
    }
  });
});
