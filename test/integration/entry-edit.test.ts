/**
 * Issue 8, point 2, against real processes: an entry edited through the CLI
 * (first its SPIFFE ID, then its selectors) never has the agent serve a
 * certificate issued under an older revision. A workload running as uid 4401
 * watches FetchX509SVID with the real Workload API client, which checks every
 * message's `spiffe_id` against its certificate's URI SAN and reports a
 * mismatch; a workload running as uid 4402 must get the new identity with a
 * certificate of its own.
 *
 * Needs root to run workloads as other uids (CI runs as root).
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rootsPemFromBundleJson } from "./support/test-agent.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { runWorkload, startAgentProcess, type AgentProcess } from "./support/agent-process.js";

const isRoot = process.geteuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("entry-edit runs workloads as other uids and needs root (CI runs as root)");
  console.warn("SKIP: entry-edit runs workloads as other uids and needs root; skipped on this machine");
}

const OLD = { uid: 4401, gid: 4401 };
const NEW = { uid: 4402, gid: 4402 };
const A = "spiffe://example.org/edit/a";
const B = "spiffe://example.org/edit/b";

/** One line the watching workload printed. */
type WatchEvent =
  | { readonly t: "update"; readonly ids: string[]; readonly serials: string[] }
  | { readonly t: "error"; readonly grpcCode: number | null; readonly code: string; readonly message: string };

/**
 * A workload body that watches FetchX509SVID, prints every update and every
 * error as one JSON line, and stops once `stopFile` exists.
 */
function watchBody(stopFile: string): string {
  return `const { existsSync } = await import("node:fs");
  await new Promise((resolve) => {
    const w = client.watchX509Context(
      (ctx) => console.log(JSON.stringify({ t: "update", ids: ctx.svids.map((s) => s.id.toString()), serials: ctx.svids.map((s) => s.leaf.serialNumber) })),
      (e, info) => console.log(JSON.stringify({ t: "error", grpcCode: e.grpcCode ?? null, code: e.code, message: e.message, terminal: info.terminal })),
    );
    const poll = setInterval(() => {
      if (!existsSync(${JSON.stringify(stopFile)})) return;
      clearInterval(poll);
      w.close();
      resolve();
    }, 100);
  });`;
}

/** The events a watching workload has printed so far. */
function events(stdout: string): WatchEvent[] {
  return stdout
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as WatchEvent);
}

/** A watching workload: its events so far, a wait for a condition on them, and its exit. */
function watcher(socketPath: string, stopFile: string, as: { uid: number; gid: number }) {
  let out = "";
  let exited = false;
  const waiters: { done: (e: WatchEvent[]) => boolean; resolve: () => void; reject: (e: Error) => void; what: string; timer: NodeJS.Timeout }[] = [];
  const settle = (w: (typeof waiters)[number]): void => {
    waiters.splice(waiters.indexOf(w), 1);
    clearTimeout(w.timer);
  };
  const check = (): void => {
    const evs = events(out);
    for (const w of [...waiters]) {
      if (w.done(evs)) {
        settle(w);
        w.resolve();
      } else if (exited) {
        settle(w);
        w.reject(new Error(`the watching workload exited before ${w.what}: ${out}`));
      }
    }
  };
  const result = runWorkload(socketPath, watchBody(stopFile), as, 120_000, (all) => {
    out = all;
    check();
  }).then((r) => {
    exited = true;
    check();
    return r;
  });
  return {
    events: () => events(out),
    /** Resolves once the events satisfy `done`; rejects when the workload exits first or after 30 s (a bound for a failing run, not a timing assertion). */
    until: (done: (e: WatchEvent[]) => boolean, what: string): Promise<void> =>
      new Promise<void>((resolve, reject) => {
        const w = {
          done,
          resolve,
          reject,
          what,
          timer: setTimeout(() => {
            settle(w);
            reject(new Error(`gave up waiting for ${what}; events so far: ${out}`));
          }, 30_000),
        };
        waiters.push(w);
        check();
      }),
    result,
  };
}

/** A JWT-SVID fetch by a workload: the token's subject, or the gRPC code it failed with (and why). */
async function fetchJwt(socketPath: string, as: { uid: number; gid: number }): Promise<{ sub: string } | { code: number | null; message: string }> {
  const r = await runWorkload(socketPath, `const svid = await client.fetchJwtSvid({ audience: "edit-test" }); console.log(JSON.stringify({ sub: svid.spiffeId.toString() }));`, as);
  const last = JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}") as { sub?: string; error?: { code: number | null; message: string } };
  return last.sub !== undefined ? { sub: last.sub } : { code: last.error?.code ?? null, message: last.error?.message ?? r.stderr };
}

let srv: ServerProcess | undefined;
let agent: AgentProcess | undefined;
let work: string | undefined;
let entryId = "";

describe.skipIf(!isRoot)("an edited entry never serves its old certificate (needs root)", () => {
  beforeAll(async () => {
    srv = await startServerProcess();
    const tok = srv.cli(["token", "generate", "--output", "json"]);
    expect(tok.status, tok.stderr).toBe(0);
    const { value, agent_id: agentId } = JSON.parse(tok.stdout) as { value: string; agent_id: string };
    const created = srv.cli(["entry", "create", "--spiffe-id", A, "--parent-id", agentId, "--selector", `unix:uid:${OLD.uid}`, "--output", "json"]);
    expect(created.status, created.stderr).toBe(0);
    entryId = (JSON.parse(created.stdout) as { entries: { id: string }[] }).entries[0]?.id ?? "";
    const roots = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
    agent = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: roots, joinToken: value });
    work = mkdtempSync(path.join(tmpdir(), "sigil-entry-edit-"));
    chmodSync(work, 0o755); // the workloads poll their stop files here
  }, 90_000);

  afterAll(async () => {
    await agent?.stop();
    await srv?.stop();
    for (const dir of [agent?.dir, srv?.dir, work]) if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it("edit the SPIFFE ID, then the selectors: no message pairs an ID with another ID's certificate, the old uid loses the identity, the new uid gets it with a new certificate", async () => {
    const a = agent as AgentProcess;
    const s = srv as ServerProcess;
    const dir = work as string;
    const oldStop = path.join(dir, "stop-old");
    const newStop = path.join(dir, "stop-new");
    const old = watcher(a.socketPath, oldStop, OLD);
    let fresh: ReturnType<typeof watcher> | undefined;
    let before = -1;
    let serialsBefore = new Set<string>();
    try {
      await old.until((e) => e.some((x) => x.t === "update" && x.ids.includes(A)), "receiving A");
      expect(await fetchJwt(a.socketPath, OLD)).toEqual({ sub: A });

      // 1. The SPIFFE ID changes; the selectors still name the old uid.
      const renamed = s.cli(["entry", "update", "--entry-id", entryId, "--spiffe-id", B, "--output", "json"]);
      expect(renamed.status, renamed.stderr).toBe(0);
      await old.until((e) => e.some((x) => x.t === "update" && x.ids.includes(B)), "receiving B");
      // The JWT-SVID cached for the entry under A is not served any more.
      expect(await fetchJwt(a.socketPath, OLD)).toEqual({ sub: B });

      // 2. The selectors change to the new uid.
      before = old.events().length;
      serialsBefore = new Set(old.events().flatMap((x) => (x.t === "update" ? x.serials : [])));
      const moved = s.cli(["entry", "update", "--entry-id", entryId, "--selector", `unix:uid:${NEW.uid}`, "--output", "json"]);
      expect(moved.status, moved.stderr).toBe(0);

      // The new uid's watcher retries (with the client's backoff) until the agent has the new SVID.
      fresh = watcher(a.socketPath, newStop, NEW);
      await fresh.until((e) => e.some((x) => x.t === "update"), "receiving an SVID for the new uid");
      writeFileSync(newStop, "");
      const freshEvents = events((await fresh.result).stdout);
      const firstNew = freshEvents.find((x) => x.t === "update");
      expect(firstNew, JSON.stringify(freshEvents)).toMatchObject({ ids: [B] });
      // A certificate of its own: not the one issued while the entry named the old uid.
      for (const serial of firstNew?.t === "update" ? firstNew.serials : []) expect(serialsBefore.has(serial)).toBe(false);
      for (const x of freshEvents) if (x.t === "error") expect(x.code, x.message).not.toBe("ERR_WORKLOAD_API_RESPONSE_INVALID");
      expect(await fetchJwt(a.socketPath, NEW)).toEqual({ sub: B });

      // The old uid's stream ends PermissionDenied, and so does its next attempt.
      const deniedAfterMove = (e: WatchEvent[]) => e.slice(before).filter((x) => x.t === "error" && x.grpcCode === status.PERMISSION_DENIED).length;
      await old.until((e) => deniedAfterMove(e) >= 2, "the old uid being refused twice after the selector change");
      expect(await fetchJwt(a.socketPath, OLD)).toMatchObject({ code: status.PERMISSION_DENIED });
    } finally {
      // Every workload started here has exited before the test ends, whatever failed.
      writeFileSync(oldStop, "");
      writeFileSync(newStop, "");
      await Promise.all([old.result, fresh?.result]);
    }
    const r = await old.result;
    const all = events(r.stdout);

    // Every message carried the SPIFFE ID of its own certificate (the client reports any other as invalid).
    for (const x of all) if (x.t === "error") expect(x.code, x.message).not.toBe("ERR_WORKLOAD_API_RESPONSE_INVALID");
    const updates = all.filter((x): x is Extract<WatchEvent, { t: "update" }> => x.t === "update");
    for (const u of updates) expect([[A], [B]]).toContainEqual(u.ids);
    // Once B was served, A never came back.
    const firstB = updates.findIndex((u) => u.ids[0] === B);
    expect(updates.slice(firstB).every((u) => u.ids[0] === B), JSON.stringify(updates)).toBe(true);
    // After the selector change the old uid got no certificate issued under the new revision, and nothing at all once refused.
    const afterMove = all.slice(before);
    for (const x of afterMove) if (x.t === "update") for (const serial of x.serials) expect(serialsBefore.has(serial), JSON.stringify(afterMove)).toBe(true);
    const refused = afterMove.findIndex((x) => x.t === "error" && x.grpcCode === status.PERMISSION_DENIED);
    expect(refused).toBeGreaterThanOrEqual(0);
    expect(afterMove.slice(refused).filter((x) => x.t === "update"), JSON.stringify(afterMove)).toEqual([]);
  }, 120_000);
});
