/**
 * Crash safety of the SQLite datastore: a writer process is killed with
 * SIGKILL at random points, and after each kill the database must open and be
 * consistent (every commit whole, events matching the changes exactly).
 * Also: join-token single use across processes.
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ManualClock, systemClock } from "../../common/clock.js";
import { parseSelector } from "../../common/selector.js";
import { createSqliteDatastore } from "../../server/datastore/index.js";
import { selectorSetHash } from "../../server/datastore/validate.js";

const here = dirname(fileURLToPath(import.meta.url));
const WRITER = join(here, "fixtures", "datastore-writer.ts");
const ROOT = join(here, "..", "..");

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sigil-ds-crash-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function startWriter(args: string[]): ChildProcessWithoutNullStreams {
  return spawn(process.execPath, ["--import", "tsx", WRITER, ...args], { cwd: ROOT, stdio: "pipe" });
}

/** Resolves with the first stdout line matching `want`; rejects if the child exits first. */
function waitForLine(child: ChildProcessWithoutNullStreams, want: (line: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = "";
    let err = "";
    const onData = (d: Buffer): void => {
      buf += d.toString("utf8");
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (want(line)) {
          cleanup();
          resolve(line);
          return;
        }
      }
    };
    const onErr = (d: Buffer): void => {
      err += d.toString("utf8");
    };
    const onExit = (code: number | null): void => {
      cleanup();
      reject(new Error(`writer exited (${code}) before the expected line; stderr: ${err}`));
    };
    const cleanup = (): void => {
      child.stdout.off("data", onData);
      child.stderr.off("data", onErr);
      child.off("exit", onExit);
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onErr);
    child.on("exit", onExit);
  });
}

function killHard(child: ChildProcessWithoutNullStreams): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
    child.kill("SIGKILL");
  });
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Counts {
  events: number;
  entries: number;
}

/** Checks every invariant the datastore promises after a crash; returns sizes. */
function checkConsistency(path: string): Counts {
  const db = new Database(path);
  try {
    expect(db.pragma("integrity_check", { simple: true })).toBe("ok");
    expect(db.pragma("foreign_key_check")).toEqual([]);

    // Entries: child rows match the counts and the uniqueness hash.
    const entries = db.prepare("SELECT row_id, id, selectors_hash, selector_count, revision FROM registration_entries").all() as Array<{
      row_id: number;
      id: string;
      selectors_hash: string;
      selector_count: number;
      revision: number;
    }>;
    const selStmt = db.prepare("SELECT type, value FROM entry_selectors WHERE owner_row = ? ORDER BY type, value");
    for (const e of entries) {
      const sels = (selStmt.all(e.row_id) as Array<{ type: string; value: string }>).map((s) => parseSelector(`${s.type}:${s.value}`));
      expect(sels.length, `entry ${e.id} selectors`).toBe(e.selector_count);
      expect(sels.length).toBeGreaterThan(0);
      expect(selectorSetHash(sels), `entry ${e.id} selector hash`).toBe(e.selectors_hash);
    }
    const agents = db.prepare("SELECT row_id, spiffe_id, selector_count FROM attested_agents").all() as Array<{ row_id: number; spiffe_id: string; selector_count: number }>;
    const agentSel = db.prepare("SELECT COUNT(*) AS n FROM agent_selectors WHERE owner_row = ?");
    for (const a of agents) expect((agentSel.get(a.row_id) as { n: number }).n).toBe(a.selector_count);

    // Events: per object exactly create, update × k, [delete]; present objects
    // have no delete and k = revision for entries; absent ones end in delete.
    const events = db.prepare("SELECT event_id, kind, object_id, op FROM change_events ORDER BY event_id").all() as Array<{
      event_id: number;
      kind: string;
      object_id: string;
      op: string;
    }>;
    const ops = new Map<string, string[]>();
    for (const ev of events) {
      const key = `${ev.kind}:${ev.object_id}`;
      const list = ops.get(key) ?? [];
      list.push(ev.op);
      ops.set(key, list);
    }
    for (const [key, list] of ops) expect(list.join(" "), key).toMatch(/^create( update)*( delete)?$/);
    const present = new Set<string>();
    for (const e of entries) {
      const key = `entry:${e.id}`;
      present.add(key);
      const list = ops.get(key);
      expect(list, `events of ${key}`).toBeDefined();
      expect(list?.includes("delete")).toBe(false);
      expect(list?.filter((o) => o === "update").length, `revision of ${key}`).toBe(e.revision);
    }
    for (const a of agents) {
      const key = `agent:${a.spiffe_id}`;
      present.add(key);
      expect(ops.get(key)?.includes("delete"), key).toBe(false);
    }
    for (const [key, list] of ops) if (!present.has(key)) expect(list.at(-1), `absent ${key}`).toBe("delete");
    const seq = db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'change_events'").get() as { seq: number } | undefined;
    expect(seq?.seq ?? 0).toBeGreaterThanOrEqual(events.at(-1)?.event_id ?? 0);
    return { events: events.length, entries: entries.length };
  } finally {
    db.close();
  }
}

describe("datastore crash safety", () => {
  it("survives kill -9 at random points, ten times over, with every commit whole", async () => {
    const path = join(dir, "crash.sqlite3");
    const seen: number[] = [];
    let grew = 0;
    for (let i = 0; i < 10; i++) {
      const child = startWriter(["write", path]);
      try {
        await waitForLine(child, (l) => l === "ready");
        await delay(20 + Math.floor(Math.random() * 280));
      } finally {
        await killHard(child);
      }
      const counts = checkConsistency(path);
      if (counts.events > (seen.at(-1) ?? 0)) grew++;
      seen.push(counts.events);
      // The store opens (migrations are a no-op) and accepts writes after the crash.
      const ds = await createSqliteDatastore({ path, clock: systemClock });
      try {
        expect((await ds.countEntries())).toBe(counts.entries);
        expect(await ds.lastEventId()).toBeGreaterThanOrEqual(counts.events);
      } finally {
        await ds.close();
      }
    }
    // The writer really was writing when it was killed (not just starting up).
    expect(grew).toBeGreaterThanOrEqual(8);
  });
});

describe("join tokens across processes", () => {
  it("of several processes racing for one token, exactly one gets it", async () => {
    const path = join(dir, "tokens.sqlite3");
    const clock = new ManualClock(new Date());
    const ds = await createSqliteDatastore({ path, clock });
    await ds.createJoinToken({ token: "shared-token", expiresAt: new Date(Date.now() + 3_600_000) });
    await ds.createEntry({ spiffeId: "spiffe://example.org/x", parentId: "spiffe://example.org/p", selectors: [parseSelector("x:1")] });
    await ds.close();
    const children = Array.from({ length: 6 }, () => startWriter(["consume", path, "shared-token"]));
    try {
      await Promise.all(children.map((c) => waitForLine(c, (l) => l === "ready")));
      const outcomes = children.map((c) => waitForLine(c, (l) => l.startsWith("{")));
      for (const c of children) c.stdin.write("go\n");
      const results = (await Promise.all(outcomes)).map((l) => JSON.parse(l) as { ok: boolean; code?: string });
      expect(results.filter((r) => r.ok)).toHaveLength(1);
      expect(results.filter((r) => !r.ok).map((r) => r.code)).toEqual(Array(5).fill("ERR_NOT_FOUND"));
    } finally {
      await Promise.all(children.map(killHard));
    }
  });
});
