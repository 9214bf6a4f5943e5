/**
 * The `unix` workload attestor (SPIRE's selector set) and the agent's
 * attestation runner (timeout, failing plugins, pid-reuse guard).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, mkdtempSync, mkdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { once } from "node:events";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { attestWorkload, createCallerAttester, WorkloadAttestationError } from "../../../../agent/attestation/workload.js";
import { processStartTime, type PeerCredentials } from "../../../../agent/endpoints/peer.js";
import { createLogger } from "../../../../common/log.js";
import { formatSelector, makeSelector, type Selector } from "../../../../common/selector.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import {
  createHashTurns,
  createUnixWorkloadAttestor,
  parseIdNameFile,
  parseProcStatus,
  unixWorkloadAttestorConfigSchema,
} from "../../../../plugins/workloadattestor/unix/index.js";
import type { WorkloadAttestor } from "../../../../plugins/workloadattestor/types.js";

const isRoot = process.geteuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("the other-uid attestor test needs root; CI runs as root");
  console.warn("SKIP: attesting a child run as another uid needs root; skipped on this machine");
}

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-unix-attestor-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function strings(selectors: readonly Selector[]): string[] {
  return selectors.map(formatSelector);
}

function memoryLog(): { log: ReturnType<typeof createLogger>; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const log = createLogger({ level: "debug", destination: { write: (l) => void lines.push(JSON.parse(l) as Record<string, unknown>) } });
  return { log, lines };
}

/** A fake /proc with one process: status text and an `exe` link to `exeTarget`. */
function fakeProc(pid: number, status: string, exeTarget?: string): string {
  const root = tempDir();
  mkdirSync(path.join(root, String(pid)));
  writeFileSync(path.join(root, String(pid), "status"), status);
  if (exeTarget !== undefined) symlinkSync(exeTarget, path.join(root, String(pid), "exe"));
  return root;
}

/** A caller that connected as uid 4321, gid 4322 (what SO_PEERCRED would say). */
function caller(pid: number): { pid: number; uid: number; gid: number } {
  return { pid, uid: 4321, gid: 4322 };
}

function self(): { pid: number; uid: number; gid: number } {
  return { pid: process.pid, uid: process.geteuid?.() as number, gid: process.getegid?.() as number };
}

const STATUS = ["Name:\tweb", "Uid:\t1000\t4321\t1000\t4321", "Gid:\t1001\t4322\t1001\t4322", "Groups:\t5000 5001 ", ""].join("\n");

function nameFiles(): { passwdPath: string; groupPath: string } {
  const dir = tempDir();
  const passwdPath = path.join(dir, "passwd");
  const groupPath = path.join(dir, "group");
  writeFileSync(passwdPath, ["# comment", "root:x:0:0:root:/root:/bin/sh", "alice:x:4321:4322::/home/alice:/bin/sh", "alias:x:4321:4322::/:/bin/sh", ""].join("\n"));
  writeFileSync(groupPath, ["root:x:0:", "staff:x:4322:", "extra:x:5000:alice", ""].join("\n"));
  return { passwdPath, groupPath };
}

describe("unix workload attestor", () => {
  it("selectors of the current process: effective uid and gid, names from /etc/passwd and /etc/group, supplementary groups", async () => {
    const selectors = strings(await createUnixWorkloadAttestor().attest(self()));
    const uid = process.geteuid?.() as number;
    const gid = process.getegid?.() as number;
    expect(selectors).toContain(`unix:uid:${uid}`);
    expect(selectors).toContain(`unix:gid:${gid}`);
    const users = parseIdNameFile(readFileSync("/etc/passwd", "utf8"));
    const groups = parseIdNameFile(readFileSync("/etc/group", "utf8"));
    if (users.has(uid)) expect(selectors).toContain(`unix:user:${users.get(uid)}`);
    if (groups.has(gid)) expect(selectors).toContain(`unix:group:${groups.get(gid)}`);
    // Node's getgroups() always adds the egid; the kernel's Groups: line need not have it.
    const supplementary = process.getgroups?.() ?? [];
    for (const g of supplementary.filter((g) => g !== gid)) expect(selectors).toContain(`unix:supplementary_gid:${g}`);
    for (const s of selectors.filter((s) => s.startsWith("unix:supplementary_gid:"))) expect(supplementary).toContain(Number(s.split(":")[2]));
    expect(selectors.some((s) => s.startsWith("unix:path:") || s.startsWith("unix:sha256:"))).toBe(false);
  });

  it("uid and gid are those the caller connected with, never what /proc says now (a setuid exec shows euid 0 there)", async () => {
    const procRoot = fakeProc(76, ["Name:\tpasswd", "Uid:\t4321\t0\t0\t0", "Gid:\t4322\t4322\t4322\t4322", "Groups:\t", ""].join("\n"));
    const selectors = strings(await createUnixWorkloadAttestor({}, { procRoot, ...nameFiles() }).attest(caller(76)));
    expect(selectors).toEqual(["unix:uid:4321", "unix:user:alice", "unix:gid:4322", "unix:group:staff"]);
  });

  it("uses the connection's ids, names resolved per id, supplementary groups with names", async () => {
    const procRoot = fakeProc(77, STATUS);
    const selectors = strings(await createUnixWorkloadAttestor({}, { procRoot, ...nameFiles() }).attest(caller(77)));
    expect(selectors).toEqual([
      "unix:uid:4321",
      "unix:user:alice", // the first passwd line for the id wins, as getpwuid
      "unix:gid:4322",
      "unix:group:staff",
      "unix:supplementary_gid:5000",
      "unix:supplementary_group:extra",
      "unix:supplementary_gid:5001", // no name known: id only
    ]);
    expect(selectors).not.toContain("unix:uid:1000");
  });

  it("omits names for ids without an entry and when the name files are missing", async () => {
    const procRoot = fakeProc(78, STATUS);
    const selectors = strings(await createUnixWorkloadAttestor({}, { procRoot, passwdPath: "/nonexistent/passwd", groupPath: "/nonexistent/group" }).attest(caller(78)));
    expect(selectors).toEqual(["unix:uid:4321", "unix:gid:4322", "unix:supplementary_gid:5000", "unix:supplementary_gid:5001"]);
  });

  it("discover_workload_path: unix:path is the binary's path and unix:sha256 its hash", async () => {
    const dir = tempDir();
    const bin = path.join(dir, "web-server");
    writeFileSync(bin, "#!/bin/sh\necho hello\n");
    const procRoot = fakeProc(79, STATUS, bin);
    const selectors = strings(await createUnixWorkloadAttestor({ discover_workload_path: true }, { procRoot, ...nameFiles() }).attest(caller(79)));
    expect(selectors).toContain(`unix:path:${bin}`);
    expect(selectors).toContain(`unix:sha256:${createHash("sha256").update(readFileSync(bin)).digest("hex")}`);
  });

  it("discover_workload_path on the current process: the node binary's real path and hash", async () => {
    const selectors = strings(await createUnixWorkloadAttestor({ discover_workload_path: true }).attest(self()));
    const exe = realpathSync(process.execPath);
    expect(selectors).toContain(`unix:path:${exe}`);
    const hex = createHash("sha256").update(readFileSync(exe)).digest("hex");
    expect(selectors).toContain(`unix:sha256:${hex}`);
  });

  it("a binary deleted since the caller started: unix:sha256 of what runs, no unix:path (its path names nothing now), logged", async () => {
    const bin = path.join(tempDir(), "web");
    copyFileSync("/bin/sleep", bin);
    chmodSync(bin, 0o755);
    const hex = createHash("sha256").update(readFileSync(bin)).digest("hex");
    const child = spawn(bin, ["30"], { stdio: "ignore" });
    cleanups.push(() => void child.kill("SIGKILL"));
    await once(child, "spawn");
    rmSync(bin);
    const { log, lines } = memoryLog();
    const selectors = strings(await createUnixWorkloadAttestor({ discover_workload_path: true }, { log }).attest({ ...self(), pid: child.pid as number }));
    child.kill("SIGKILL");
    await once(child, "exit");
    expect(selectors).toContain(`unix:sha256:${hex}`);
    expect(selectors.filter((s) => s.startsWith("unix:path:"))).toEqual([]);
    expect(lines.some((l) => String(l["msg"]).endsWith("unix:path omitted") && l["path"] === `${bin} (deleted)`)).toBe(true);
  });

  it("a binary rewritten between calls gets the hash of what it holds now", async () => {
    const bin = path.join(tempDir(), "web");
    writeFileSync(bin, "version 1");
    const procRoot = fakeProc(81, STATUS, bin);
    const unix = createUnixWorkloadAttestor({ discover_workload_path: true }, { procRoot });
    const hashOf = (text: string): string => `unix:sha256:${createHash("sha256").update(text).digest("hex")}`;
    expect(strings(await unix.attest(caller(81)))).toContain(hashOf("version 1"));
    expect(strings(await unix.attest(caller(81)))).toContain(hashOf("version 1"));
    writeFileSync(bin, "version 2, longer");
    expect(strings(await unix.attest(caller(81)))).toContain(hashOf("version 2, longer"));
  });

  it("workload_size_limit: a larger binary gets no unix:sha256 (logged); a negative limit never hashes; 0 means no limit", async () => {
    const dir = tempDir();
    const bin = path.join(dir, "big");
    writeFileSync(bin, Buffer.alloc(4096, 1));
    const procRoot = fakeProc(80, STATUS, bin);
    const { log, lines } = memoryLog();
    const limited = strings(await createUnixWorkloadAttestor({ discover_workload_path: true, workload_size_limit: 1024 }, { procRoot, log }).attest(caller(80)));
    expect(limited).toContain(`unix:path:${bin}`);
    expect(limited.some((s) => s.startsWith("unix:sha256:"))).toBe(false);
    expect(lines.some((l) => String(l["msg"]).includes("larger than workload_size_limit") && l["size"] === 4096)).toBe(true);

    const never = strings(await createUnixWorkloadAttestor({ discover_workload_path: true, workload_size_limit: -1 }, { procRoot }).attest(caller(80)));
    expect(never.some((s) => s.startsWith("unix:sha256:"))).toBe(false);
    const unlimited = strings(await createUnixWorkloadAttestor({ discover_workload_path: true, workload_size_limit: 0 }, { procRoot }).attest(caller(80)));
    expect(unlimited.some((s) => s.startsWith("unix:sha256:"))).toBe(true);
    const roomy = strings(await createUnixWorkloadAttestor({ discover_workload_path: true, workload_size_limit: 4096 }, { procRoot }).attest(caller(80)));
    expect(roomy.some((s) => s.startsWith("unix:sha256:"))).toBe(true);
  });

  it.skipIf(!isRoot)("attests a child run as another uid: its uid and gid, no supplementary groups (needs root)", async () => {
    const child: ChildProcess = spawn(process.execPath, ["-e", "process.stdin.resume()"], { uid: 4321, gid: 4322, stdio: ["pipe", "ignore", "ignore"] });
    cleanups.push(() => child.kill());
    await once(child, "spawn");
    const selectors = strings(await createUnixWorkloadAttestor().attest({ pid: child.pid as number, uid: 4321, gid: 4322 }));
    expect(selectors).toContain("unix:uid:4321");
    expect(selectors).toContain("unix:gid:4322");
    expect(selectors).not.toContain(`unix:uid:${process.geteuid?.()}`);
    // libuv drops supplementary groups when it changes ids.
    expect(selectors.filter((s) => s.startsWith("unix:supplementary_gid:"))).toEqual([]);
  });

  it("fails for a process that does not exist", async () => {
    const procRoot = tempDir();
    await expect(createUnixWorkloadAttestor({}, { procRoot }).attest(caller(12345))).rejects.toSatisfy(
      (e) => isSigilError(e, "ERR_UNAVAILABLE") && (e as Error).message.startsWith("workloadattestor(unix):"),
    );
    await expect(createUnixWorkloadAttestor().attest(caller(0))).rejects.toSatisfy((e) => isSigilError(e, "ERR_UNAVAILABLE"));
  });

  it("parseProcStatus refuses a status without Uid or with malformed ids", () => {
    expect(() => parseProcStatus("Name:\tx\nGid:\t1\t1\t1\t1\n")).toThrow(/no uid line/);
    expect(() => parseProcStatus("Uid:\t1\tx\t1\t1\nGid:\t1\t1\t1\t1\n")).toThrow(/malformed/);
    expect(parseProcStatus("Uid:\t5\nGid:\t6\n")).toEqual({ uid: 5, gid: 6, groups: [] });
  });

  it("config schema: SPIRE's option names only", () => {
    expect(unixWorkloadAttestorConfigSchema.parse({ discover_workload_path: true, workload_size_limit: 1024 })).toEqual({ discover_workload_path: true, workload_size_limit: 1024 });
    expect(unixWorkloadAttestorConfigSchema.safeParse({ discover_path: true }).success).toBe(false);
    expect(unixWorkloadAttestorConfigSchema.safeParse({ workload_size_limit: 1.5 }).success).toBe(false);
  });
});

describe("workload attestation runner", () => {
  const self = (): PeerCredentials => ({ pid: process.pid, uid: process.geteuid?.() as number, gid: process.getegid?.() as number, startTime: processStartTime(process.pid) });
  const fixed = (name: string, values: string[]): WorkloadAttestor => ({
    name,
    attest: async () => values.map((v) => makeSelector(name, v)),
  });

  it("returns the union of every attestor's selectors, sorted, without duplicates", async () => {
    const { log } = memoryLog();
    const got = await attestWorkload(self(), [fixed("unix", ["uid:0", "gid:0"]), fixed("k8s", ["ns:prod"]), fixed("unix", ["uid:0"])], { timeoutMs: 10_000, log });
    expect(strings(got)).toEqual(["k8s:ns:prod", "unix:gid:0", "unix:uid:0"]);
  });

  it("a failing attestor fails the whole attestation (Unavailable `workload attestation failed`), with a log line naming it", async () => {
    const { log, lines } = memoryLog();
    const broken: WorkloadAttestor = { name: "docker", attest: async () => Promise.reject(new Error("daemon unreachable")) };
    const err = await attestWorkload(self(), [fixed("unix", ["uid:0"]), broken], { timeoutMs: 10_000, log }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkloadAttestationError);
    expect((err as WorkloadAttestationError).reason).toBe("attestation_failed");
    expect((err as Error).message).toBe("workload attestation failed");
    expect(lines.some((l) => l["plugin"] === "docker" && l["level"] === "error" && String(l["msg"]).includes('"docker" failed'))).toBe(true);
  });

  it("an attestor that does not answer in time fails attestation; it is told to stop", async () => {
    const { log, lines } = memoryLog();
    let aborted: Promise<unknown> | undefined;
    const hung: WorkloadAttestor = {
      name: "k8s",
      attest: (_pid, signal) => {
        aborted = signal === undefined ? undefined : once(signal, "abort");
        return new Promise<Selector[]>(() => undefined);
      },
    };
    const err = await attestWorkload(self(), [fixed("unix", ["uid:0"]), hung], { timeoutMs: 20, log }).catch((e: unknown) => e);
    expect((err as WorkloadAttestationError).reason).toBe("attestation_failed");
    const line = lines.find((l) => String(l["msg"]).startsWith("Timed out collecting workload selectors"));
    expect(line?.["pending_plugins"]).toEqual(["k8s"]);
    expect(line?.["partial_selectors"]).toEqual(["unix:uid:0"]);
    await expect(aborted).resolves.toBeDefined();
  });

  it("pid-reuse guard: a caller whose pid no longer names the same process is refused (Unauthenticated)", async () => {
    const { log } = memoryLog();
    const reused: PeerCredentials = { ...self(), startTime: self().startTime + 1n };
    const err = await attestWorkload(reused, [fixed("unix", ["uid:0"])], { timeoutMs: 10_000, log }).catch((e: unknown) => e);
    expect((err as WorkloadAttestationError).reason).toBe("caller_gone");
    expect((err as Error).message).toBe("could not verify existence of the original caller");

    const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
    await once(child, "spawn");
    const gone: PeerCredentials = { pid: child.pid as number, uid: 0, gid: 0, startTime: processStartTime(child.pid as number) };
    await once(child, "exit");
    const err2 = await attestWorkload(gone, [fixed("unix", ["uid:0"])], { timeoutMs: 10_000, log }).catch((e: unknown) => e);
    expect((err2 as WorkloadAttestationError).reason).toBe("caller_gone");
  });

  it("a caller whose /proc entry is now owned by another uid (setuid exec, non-dumpable) is refused: caller_changed, logged with the owners", async () => {
    const { log, lines } = memoryLog();
    const otherUid: PeerCredentials = { ...self(), uid: self().uid + 1 };
    const err = await attestWorkload(otherUid, [fixed("unix", ["uid:0"])], { timeoutMs: 10_000, log }).catch((e: unknown) => e);
    expect((err as WorkloadAttestationError).reason).toBe("caller_changed");
    expect((err as Error).message).toBe("caller changed credentials after connecting");
    const line = lines.find((l) => l["msg"] === "Caller changed credentials after connecting; refused");
    expect(String(line?.["reason"])).toContain(`is owned by uid ${self().uid} gid ${self().gid}, but the caller connected as uid ${self().uid + 1}`);
    const otherGid: PeerCredentials = { ...self(), gid: self().gid + 1 };
    expect(((await attestWorkload(otherGid, [fixed("unix", ["uid:0"])], { timeoutMs: 10_000, log }).catch((e: unknown) => e)) as WorkloadAttestationError).reason).toBe("caller_changed");
  });

  it.skipIf(!isRoot)("a non-root caller that made itself non-dumpable is refused: its /proc files read as root's (needs root)", async () => {
    const { log } = memoryLog();
    // perl: prctl(PR_SET_DUMPABLE, 0), say so, then wait for stdin to close.
    const child = spawn("/usr/bin/perl", ["-e", 'syscall(157, 4, 0) == 0 or die; $| = 1; print "ok\n"; <STDIN>;'], { uid: 4321, gid: 4322, stdio: ["pipe", "pipe", "ignore"] });
    cleanups.push(() => child.kill());
    await once(child.stdout, "data");
    const peer: PeerCredentials = { pid: child.pid as number, uid: 4321, gid: 4322, startTime: processStartTime(child.pid as number) };
    const err = await attestWorkload(peer, [fixed("unix", ["uid:4321"])], { timeoutMs: 10_000, log }).catch((e: unknown) => e);
    expect((err as WorkloadAttestationError).reason).toBe("caller_changed");
    child.stdin.end();
    await once(child, "exit");
  });

  it("an attested caller re-checks on demand: fine while it lives, caller_gone once it exited", async () => {
    const { log } = memoryLog();
    const child = spawn(process.execPath, ["-e", "process.stdin.resume()"], { stdio: ["pipe", "ignore", "ignore"] });
    cleanups.push(() => child.kill());
    await once(child, "spawn");
    const peer: PeerCredentials = { pid: child.pid as number, uid: self().uid, gid: self().gid, startTime: processStartTime(child.pid as number) };
    const attest = createCallerAttester({ resolvePeer: () => peer, attestors: [fixed("unix", ["uid:0"])], timeoutMs: 10_000, log });
    const caller = await attest("peer");
    expect(strings(caller.selectors)).toEqual(["unix:uid:0"]);
    expect(() => caller.recheck()).not.toThrow();
    child.stdin?.end();
    await once(child, "exit");
    expect(() => caller.recheck()).toThrow(WorkloadAttestationError);
  });

  it("createCallerAttester refuses a call whose peer is unknown", async () => {
    const { log } = memoryLog();
    const attest = createCallerAttester({ resolvePeer: () => undefined, attestors: [fixed("unix", ["uid:0"])], timeoutMs: 1000, log });
    const err = await attest("10.0.0.1:1234").catch((e: unknown) => e);
    expect((err as WorkloadAttestationError).reason).toBe("caller_unknown");
  });
});

describe("hash turns: one binary read at a time per uid", () => {
  it("a uid's reads wait for each other in order; another uid's read does not wait behind them", async () => {
    const turns = createHashTurns();
    const order: string[] = [];
    let releaseFirst!: () => void;
    const first = turns(1000)(async () => {
      order.push("a1 start");
      await new Promise<void>((r) => (releaseFirst = r));
      order.push("a1 end");
      return 1;
    });
    const second = turns(1000)(async () => {
      order.push("a2 start");
      return 2;
    });
    const other = turns(2000)(async () => {
      order.push("b start");
      return 3;
    });
    expect(await other).toBe(3);
    expect(order).toEqual(["a1 start", "b start"]);
    releaseFirst();
    expect(await Promise.all([first, second])).toEqual([1, 2]);
    expect(order).toEqual(["a1 start", "b start", "a1 end", "a2 start"]);
  });

  it("a read that throws passes the turn on", async () => {
    const turns = createHashTurns();
    await expect(turns(7)(async () => Promise.reject(new Error("EIO")))).rejects.toThrow("EIO");
    expect(await turns(7)(async () => "next")).toBe("next");
  });
});
