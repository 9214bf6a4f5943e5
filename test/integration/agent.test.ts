/**
 * End to end with real processes: a `sigil-server run`, a `sigil-agent run`
 * attested with a join token, and workloads (run as other uids when root)
 * using the real Workload API client over the agent's Unix socket.
 */
import { spawn } from "node:child_process";
import { chmodSync, chownSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { credentials, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { runAgentCli, runWorkload, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { AGENT_MAIN } from "../support/programs.js";

const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("the agent integration tests run workloads as other uids and need root (CI runs as root)");
  console.warn("SKIP: the agent integration tests run workloads as other uids and need root");
}

const WEB = { uid: 4321, gid: 4321 };
const STRANGER = { uid: 4322, gid: 4322 };

let srv: ServerProcess;
let agent: AgentProcess;
let entryAdmin: ReturnType<typeof createUnaryClient<(typeof EntryAdmin)["method"]>>;
let webEntryId = "";
/** Directories the tests make, removed at the end. */
const temps: string[] = [];

describe.skipIf(!isRoot)("agent end to end", () => {
  beforeAll(async () => {
    srv = await startServerProcess();
    const target = `unix:${srv.socketPath}`;
    entryAdmin = createUnaryClient(EntryAdmin, target, credentials.createInsecure());
    const agentAdmin = createUnaryClient(AgentAdmin, target, credentials.createInsecure());
    const tok = await agentAdmin.createJoinToken({ ttl: 600 });
    agentAdmin.close();
    const res = await entryAdmin.batchCreateEntry({
      entries: [
        // Short TTL so the test sees a rotation without waiting long.
        create(EntrySchema, { spiffeId: "spiffe://example.org/web", parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${WEB.uid}` }], x509SvidTtl: 6 }),
        create(EntrySchema, { spiffeId: "spiffe://example.org/db", parentId: tok.agentId, selectors: [{ type: "unix", value: "uid:4999" }] }),
      ],
    });
    webEntryId = res.results[0]?.entry?.id ?? "";
    const roots = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
    agent = await startAgentProcess({
      serverAddress: srv.agentApiAddress,
      bundlePem: roots,
      joinToken: tok.token,
      extraAgentYaml: "health_checks:\n  listener_enabled: true\n  bind_port: 0\n",
    });
  }, 90_000);

  afterAll(async () => {
    entryAdmin?.close();
    await agent?.stop();
    await srv?.stop();
    for (const d of [agent?.dir, srv?.dir, ...temps]) if (d) rmSync(d, { recursive: true, force: true });
  });

  it("serves /live, /ready once synced, and /metrics with cache size and SVID expiry (no per-ID labels)", async () => {
    const started = await agent.waitForLog((l) => l.msg === "agent started");
    const base = String(started.health);
    expect((await fetch(`${base}/live`)).status).toBe(200);
    expect((await fetch(`${base}/ready`)).status).toBe(200);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/sigil_agent_cache_svids 2/);
    expect(metrics).toMatch(/sigil_agent_x509_svid_expiry_timestamp_seconds \d+/);
    expect(metrics).not.toMatch(/spiffe:\/\//);
  });

  it("a workload run as another uid gets exactly its own SVID", async () => {
    const r = await runWorkload(
      agent.socketPath,
      `const ctx = await client.fetchX509Context();
       console.log(JSON.stringify({ ids: ctx.svids.map((s) => s.id.toString()), bundles: [...ctx.bundles.keys()] }));`,
      WEB,
    );
    expect(JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}"), r.stderr).toEqual({ ids: ["spiffe://example.org/web"], bundles: ["example.org"] });
  });

  it("sigil-agent api fetch x509 --write, fetch jwt and validate jwt work for the workload (exit 0), and fail with exit 1 for a stranger", async () => {
    // A directory the workload user owns; one another user can write to is refused (below).
    const dir = mkdtempSync(path.join(tmpdir(), "sigil-cli-out-"));
    temps.push(dir);
    chownSync(dir, WEB.uid, WEB.gid);
    const x509 = await runAgentCli(["api", "fetch", "x509", "--socket-path", agent.socketPath, "--write", dir, "--output", "json"], WEB);
    expect(x509.status, x509.stderr).toBe(0);
    expect((JSON.parse(x509.stdout) as { svids: { spiffe_id: string }[] }).svids.map((s) => s.spiffe_id)).toEqual(["spiffe://example.org/web"]);
    expect(readFileSync(path.join(dir, "svid.0.pem"), "utf8")).toMatch(/BEGIN CERTIFICATE/);
    expect(statSync(path.join(dir, "svid.0.key")).mode & 0o777).toBe(0o600);
    const jwt = await runAgentCli(["api", "fetch", "jwt", "--audience", "db", "--output", "json"], WEB, { SPIFFE_ENDPOINT_SOCKET: `unix://${agent.socketPath}` });
    expect(jwt.status, jwt.stderr).toBe(0);
    const token = (JSON.parse(jwt.stdout) as { svids: { token: string }[] }).svids[0]?.token ?? "";
    const valid = await runAgentCli(["api", "validate", "jwt", "--audience", "db", "--svid", token, "--socket-path", agent.socketPath, "--output", "json"], WEB);
    expect(valid.status, valid.stderr).toBe(0);
    expect((JSON.parse(valid.stdout) as { spiffe_id: string }).spiffe_id).toBe("spiffe://example.org/web");
    // Another user's directory, open to all (a name guessed in /tmp): the workload's key must not land where that user can read or redirect it.
    const shared = mkdtempSync(path.join(tmpdir(), "sigil-cli-shared-"));
    temps.push(shared);
    chownSync(shared, STRANGER.uid, STRANGER.gid);
    chmodSync(shared, 0o777);
    const planted = path.join(shared, "svid.0.key");
    writeFileSync(planted, "");
    chownSync(planted, STRANGER.uid, STRANGER.gid);
    chmodSync(planted, 0o666);
    const refused = await runAgentCli(["api", "fetch", "x509", "--socket-path", agent.socketPath, "--write", shared], WEB);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toContain(`refusing to use directory ${shared}: it is owned by uid ${STRANGER.uid} with mode 0777`);
    expect(readFileSync(planted, "utf8")).toBe("");
    const denied = await runAgentCli(["api", "fetch", "x509", "--socket-path", agent.socketPath], STRANGER);
    expect(denied.status).toBe(1);
    expect(denied.stderr).toMatch(/no identity issued/);
    expect((await runAgentCli(["api", "fetch", "x509", "--output", "yaml"])).status).toBe(2);
  }, 60_000);

  it("sigil-agent healthcheck exits 0 on the agent socket, and api watch prints updates until interrupted", async () => {
    const hc = await runAgentCli(["healthcheck", "--socket-path", agent.socketPath]);
    expect(hc.status, hc.stderr).toBe(0);
    expect(hc.stdout).toMatch(/healthy/);
    const watch = spawn(process.execPath, [AGENT_MAIN, "api", "watch", "--socket-path", agent.socketPath, "--output", "json"], {
      cwd: path.resolve(path.dirname(new URL(import.meta.url).pathname), "../.."),
      uid: WEB.uid,
      gid: WEB.gid,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const first = await new Promise<string>((resolve, reject) => {
      let out = "";
      watch.stdout?.on("data", (d: Buffer) => {
        out += d.toString();
        if (out.includes("\n")) resolve(out.split("\n")[0] as string);
      });
      watch.once("exit", (code) => reject(new Error(`watch exited early with ${code}`)));
    });
    expect((JSON.parse(first) as { svids: { spiffe_id: string }[] }).svids[0]?.spiffe_id).toBe("spiffe://example.org/web");
    const code = await new Promise<number | null>((resolve) => {
      watch.removeAllListeners("exit");
      watch.once("exit", (c) => resolve(c));
      watch.kill("SIGINT");
    });
    expect(code).toBe(0);
  }, 60_000);

  it("an unregistered uid gets PermissionDenied", async () => {
    const r = await runWorkload(agent.socketPath, `await client.fetchX509Context(); console.log(JSON.stringify({ ok: true }));`, STRANGER);
    const out = JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}") as { error?: { code: number; message: string } };
    expect(out.error?.code, r.stdout + r.stderr).toBe(status.PERMISSION_DENIED);
    expect(out.error?.message).toMatch(/no identity issued/);
    // The agent log says why: the caller's selectors (and the closest entries, if any).
    const rec = await agent.waitForLog((l) => String(l.msg).startsWith("No identity issued") && JSON.stringify(l.selectors).includes(`unix:uid:${STRANGER.uid}`));
    expect(rec.closest_entries).toEqual([]);
  });

  it("a JWT-SVID validates through ValidateJWTSVID and fails for a wrong audience", async () => {
    const r = await runWorkload(
      agent.socketPath,
      `const svid = await client.fetchJwtSvid({ audience: "db" });
       const ok = await client.validateJwtSvid(svid.token, "db");
       let wrong = null;
       try { await client.validateJwtSvid(svid.token, "other"); } catch (e) { wrong = { code: e.grpcCode, message: e.message }; }
       console.log(JSON.stringify({ sub: ok.id.toString(), aud: ok.claims.aud, wrong }));`,
      WEB,
    );
    const out = JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}") as { sub: string; aud: string[]; wrong: { code: number; message: string } };
    expect(out.sub, r.stdout + r.stderr).toBe("spiffe://example.org/web");
    expect(out.aud).toEqual(["db"]);
    expect(out.wrong.code).toBe(status.INVALID_ARGUMENT);
    expect(out.wrong.message).toMatch(/audience/);
  });

  it("the stream receives the rotated SVID", async () => {
    const r = await runWorkload(
      agent.socketPath,
      `const serials = [];
       await new Promise((resolve, reject) => {
         const w = client.watchX509Context((ctx) => {
           const s = ctx.defaultSvid.leaf.serialNumber;
           if (!serials.includes(s)) serials.push(s);
           if (serials.length >= 2) { w.close(); resolve(); }
         }, (e, info) => { if (info.terminal) reject(e); });
       });
       console.log(JSON.stringify({ serials }));`,
      WEB,
      30_000,
    );
    const out = JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}") as { serials: string[] };
    expect(out.serials?.length, r.stdout + r.stderr).toBe(2);
  }, 40_000);

  it("an entry deleted on the server disappears from the workload's stream", async () => {
    let firstUpdate!: () => void;
    const gotFirst = new Promise<void>((r) => (firstUpdate = r));
    const workload = runWorkload(
      agent.socketPath,
      `const events = [];
       await new Promise((resolve) => {
         const w = client.watchX509Context((ctx) => { events.push(ctx.svids.map((s) => s.id.toString())); process.stdout.write("UPDATE\\n"); },
           (e, info) => { events.push({ code: e.grpcCode }); w.close(); resolve(); });
       });
       console.log(JSON.stringify({ events }));`,
      WEB,
      30_000,
      (out) => {
        if (out.includes("UPDATE")) firstUpdate();
      },
    );
    // Once the workload holds its SVID, delete the entry.
    await gotFirst;
    const del = await entryAdmin.batchDeleteEntry({ ids: [webEntryId] });
    expect(del.results[0]?.status?.code).toBe(status.OK);
    const r = await workload;
    const out = JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}") as { events: unknown[] };
    expect(out.events?.[0], r.stdout + r.stderr).toEqual(["spiffe://example.org/web"]);
    expect(out.events?.at(-1)).toEqual({ code: status.PERMISSION_DENIED });
  }, 40_000);

  it("with the server stopped, the workload keeps getting its cached SVID", async () => {
    // A fresh entry for the workload (the previous test deleted the first one).
    const tokAgentId = (await entryAdmin.listEntries({ filter: { bySpiffeId: "spiffe://example.org/db" } })).entries[0]?.parentId ?? "";
    const res = await entryAdmin.batchCreateEntry({ entries: [create(EntrySchema, { spiffeId: "spiffe://example.org/web2", parentId: tokAgentId, selectors: [{ type: "unix", value: `uid:${WEB.uid}` }] })] });
    expect(res.results[0]?.status?.code).toBe(status.OK);
    const fetchIds = `for (let i = 0; i < 40; i++) {
         try { const ctx = await client.fetchX509Context(); console.log(JSON.stringify({ ids: ctx.svids.map((s) => s.id.toString()) })); break; }
         catch (e) { if (i === 39) throw e; await new Promise((r) => setTimeout(r, 250)); }
       }`;
    const before = await runWorkload(agent.socketPath, fetchIds, WEB);
    expect(before.stdout, before.stderr).toMatch(/web2/);
    await srv.stop();
    const after = await runWorkload(agent.socketPath, `const ctx = await client.fetchX509Context(); console.log(JSON.stringify({ ids: ctx.svids.map((s) => s.id.toString()) }));`, WEB);
    expect(JSON.parse(after.stdout.trim().split("\n").pop() ?? "{}"), after.stderr).toEqual({ ids: ["spiffe://example.org/web2"] });
  }, 40_000);
});
