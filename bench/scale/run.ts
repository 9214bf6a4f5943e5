/**
 * The load harness (issue 14 item 5): real `sigil-server` processes on a
 * fresh PostgreSQL or MariaDB database, simulated agents speaking the real
 * agent protocol from separate processes (`bench/support/sim-agents-child.ts`:
 * attestation, a WatchChanges stream, delta sync every 5 s, SVID renewal at
 * half life), entry churn through the admin API, and a cold start over many
 * entries.
 *
 *   node --import tsx bench/scale/run.ts --db postgres --servers 2 --agents 500,1000 \
 *     --entries 10000 --churn 10 --duration 60s --cold-start 100000
 *
 * `--agents` takes one count or several, in increasing order: agents are
 * added stage by stage and each stage is measured at steady state, to show
 * whether database load grows with agent count; `--agents 0` runs the cold
 * start alone. `--cpu-prof DIR` writes a CPU profile of the cold-start
 * server (`node --cpu-prof`) into DIR when it stops; `--sim-cpu-prof DIR` those
 * of the simulated-agent processes. `--attest-concurrency` (32) and
 * `--burst-concurrency` (256) bound the attestations and the signing burst's
 * batches in flight over all simulated-agent processes. Entries (and join tokens) are
 * bulk-loaded into the database before the servers start, by multi-row
 * INSERTs of the rows the SQL datastore writes (`bench/scale/database.ts`).
 *
 * Reports (BENCH_JSON lines, `bench/harness.ts`): database queries per second
 * per server at steady state, read from the database's own statistics
 * (against SyncAuthorized calls per second as the baseline: the ratio is
 * queries per agent sync), its growth between the agent counts, server CPU
 * per 1,000 agents, p99 sync latency (against a raw gRPC unary call over
 * loopback), RSS of each server, sustained SVID signings per second when
 * every agent renews at once (against raw `crypto.sign` P-256 in the same
 * run), the time from an entry's creation (churn window) to its agent holding
 * its SVID, and the cold start's time to /ready (against reading the same rows
 * with the raw driver) and RSS.
 *
 * Every database, directory and child process it makes is removed or ended
 * when it finishes, fails, or gets SIGINT/SIGTERM.
 */
import { createPrivateKey, generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { Client, credentials, Server, ServerCredentials, type sendUnaryData, type ServerUnaryCall } from "@grpc/grpc-js";
import mysql from "mysql2/promise";
import pg from "pg";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { BundleAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { rootsPemFromBundleJson } from "../../test/integration/support/test-agent.js";
import { median, percentile, rateSync, report } from "../harness.js";
import { createBenchDatabase, joinTokenAgentId, type BenchDatabase, type ScaleEngine } from "./database.js";
import { processCpuMs, processRssMb, startBenchServer, startSimAgents, waitReady, type BenchServer, type SimAgents, type SimReport } from "./processes.js";

/** What one harness run does. */
export interface ScaleOptions {
  readonly db: ScaleEngine;
  readonly servers: number;
  /** Agent counts, increasing: one measured stage each. */
  readonly agents: readonly number[];
  readonly entries: number;
  /** Entry changes per second through the admin API in the churn window (0: none). */
  readonly churn: number;
  /** Length of each measurement window (ms). */
  readonly durationMs: number;
  /** Entries of the cold start (0: skipped). */
  readonly coldStart: number;
  /** X509-SVID TTL of the loaded entries (s): renewals at half of it fall into the windows when short. */
  readonly svidTtlSeconds: number;
  /** Simulated agents per child process. */
  readonly agentsPerProcess: number;
  /** Measure the signing burst. */
  readonly signing: boolean;
  /** Directory for a CPU profile of the cold-start server (`node --cpu-prof`), written when it stops; undefined: none. */
  readonly cpuProfDir: string | undefined;
  /** Attestations in flight at once over all simulated-agent processes. */
  readonly attestConcurrency: number;
  /** Directory for CPU profiles of the simulated-agent processes, written when they quit; undefined: none. */
  readonly simCpuProfDir: string | undefined;
  /** Agents' SVID batches in flight at once over all processes in the signing burst. */
  readonly burstConcurrency: number;
}

const TRUST_DOMAIN = "example.org";
/** The servers' `change_feed.gap_timeout` (the default). */
const GAP_TIMEOUT_MS = 60_000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const log = (s: string): void => console.log(`[scale ${new Date().toISOString().slice(11, 19)}] ${s}`);

/** Cleanups run once, in reverse order, on success, failure or a signal. */
const cleanups: Array<() => Promise<void> | void> = [];
let cleaningUp: Promise<void> | undefined;
/** Runs every cleanup; a second caller (the signal handler and the failing main path at once) waits for the same run. */
function cleanUp(): Promise<void> {
  cleaningUp ??= cleanUpFrom(0).finally(() => (cleaningUp = undefined));
  return cleaningUp;
}
let signalled = false;
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    if (signalled) return;
    signalled = true;
    console.error(`bench: ${sig}: stopping every process and dropping the database`);
    void cleanUp().finally(() => process.exit(130));
  });
}

/** Raw P-256 ECDSA signatures per second of one core (the signing baseline). */
function rawSignRate(): number {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const key = createPrivateKey(privateKey.export({ format: "pem", type: "pkcs8" }));
  const data = randomBytes(512);
  return rateSync(() => void sign("sha256", data, key), 1000);
}

/** p99 (ms) of a raw gRPC unary call over loopback TCP, no TLS (the sync latency baseline). */
async function rawUnaryP99(calls = 500): Promise<number> {
  const id = (b: Buffer): Buffer => b;
  const raw = new Server();
  raw.addService(
    { call: { path: "/bench.Raw/Call", requestStream: false, responseStream: false, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id } },
    { call: (c: ServerUnaryCall<Buffer, Buffer>, cb: sendUnaryData<Buffer>) => cb(null, c.request) },
  );
  const port = await new Promise<number>((resolve, reject) => raw.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  const client = new Client(`127.0.0.1:${port}`, credentials.createInsecure());
  const times: number[] = [];
  try {
    for (let i = 0; i < calls; i++) {
      const t0 = performance.now();
      await new Promise<void>((resolve, reject) => client.makeUnaryRequest("/bench.Raw/Call", id, id, Buffer.alloc(64), (e) => (e ? reject(e) : resolve())));
      times.push(performance.now() - t0);
    }
  } finally {
    client.close();
    raw.forceShutdown();
  }
  return percentile(times, 99);
}

/** Reads every entry row and its selectors with the raw driver (the cold start's baseline), in ms. */
async function rawReadMs(db: BenchDatabase): Promise<number> {
  const t0 = performance.now();
  if (db.engine === "postgres") {
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    try {
      await c.query("SELECT * FROM registration_entries");
      await c.query("SELECT * FROM entry_selectors");
    } finally {
      await c.end();
    }
  } else {
    const c = await mysql.createConnection({ uri: db.url });
    try {
      await c.query("SELECT * FROM registration_entries");
      await c.query("SELECT * FROM entry_selectors");
    } finally {
      await c.end();
    }
  }
  return performance.now() - t0;
}

/** Starts `count` servers on `db` and registers their stop. */
async function startServers(db: BenchDatabase, count: number, timeoutMs: number, nodeArgs: readonly string[] = []): Promise<BenchServer[]> {
  const out: BenchServer[] = [];
  for (let i = 0; i < count; i++) {
    const s = await startBenchServer(db.engine, db.url, timeoutMs, nodeArgs);
    cleanups.push(() => s.stop());
    out.push(s);
    log(`server ${i} (pid ${s.pid}) started in ${(s.startedMs / 1000).toFixed(1)} s, agent API ${s.agentApiAddress}`);
  }
  return out;
}

/** The trust bundle's X.509 roots (PEM) once every server's CA is in it. */
async function rootsOfAll(servers: readonly BenchServer[]): Promise<string> {
  const admin = createUnaryClient(BundleAdmin, `unix:${(servers[0] as BenchServer).socketPath}`, credentials.createInsecure());
  try {
    for (let tries = 0; ; tries++) {
      const b = await admin.getBundle({});
      const pem = rootsPemFromBundleJson(JSON.stringify({ spiffe_bundle_json: b.spiffeBundleJson }), TRUST_DOMAIN);
      if (pem.split("BEGIN CERTIFICATE").length - 1 >= servers.length) return pem;
      if (tries > 60) throw new Error(`bench: the bundle holds fewer roots than the ${servers.length} servers after 60 s`);
      await sleep(1000);
    }
  } finally {
    admin.close();
  }
}

/**
 * Waits out a stage's set-up before measuring: `change_feed.gap_timeout`
 * (60 s) and 5 s more, then until a 5 s interval sees at most 10 transactions
 * (statements) a second per server, up to 60 s more. The set-up's aftermath
 * lasts longer than its last call: event IDs the change feed saw skipped
 * during the attestations (rolled back or retried writes) are given up
 * `gap_timeout` later, and each give-up drops the whole agent cache, which
 * every agent's next sync then reads again (one read per agent).
 */
async function settle(db: BenchDatabase, servers: number): Promise<void> {
  const t0 = performance.now();
  await sleep(GAP_TIMEOUT_MS + 5000);
  let c = await db.counters();
  let rate = NaN;
  while (performance.now() - t0 < GAP_TIMEOUT_MS + 65_000) {
    await sleep(5000);
    const next = await db.counters();
    rate = (next.queries - c.queries) / 5;
    c = next;
    if (rate <= 10 * servers) break;
  }
  log(`settled for ${((performance.now() - t0) / 1000).toFixed(0)} s (last 5 s: DB ${rate.toFixed(1)}/s)`);
}

/** One measured window. */
interface Window {
  readonly agents: number;
  readonly seconds: number;
  readonly dbQps: number;
  readonly dbSecondaryPerS: number;
  /** The busiest tables' scans per second (PostgreSQL), busiest first. */
  readonly topTables: ReadonlyArray<readonly [string, number]>;
  /** CPU of every server (cores). */
  readonly serverCores: number[];
  readonly rssMb: number[];
  readonly syncsPerS: number;
  readonly p50: number;
  readonly p99: number;
  readonly renewalsPerS: number;
  readonly agentRenewalsPerS: number;
  readonly noticesPerS: number;
  readonly errors: number;
  /** CPU of all simulated-agent processes (cores) and their RSS (MB, summed). */
  readonly simCores: number;
  readonly simRssMb: number;
  /** Entry ID → when its first SVID reached its agent (ms since the epoch), for entries first seen in the window. */
  readonly firstSvid: ReadonlyMap<string, number>;
}

/** Measures `ms` (running `during` meanwhile); the agents' reports are read `tailMs` after the window's end (their latencies and first SVIDs then include that tail). */
async function measureWindow(db: BenchDatabase, servers: readonly BenchServer[], sims: readonly SimAgents[], ms: number, during?: (until: number) => Promise<void>, tailMs = 0): Promise<Window> {
  await Promise.all(sims.map((s) => s.ask("mark", "marked")));
  const c0 = await db.counters();
  const cpu0 = servers.map((s) => processCpuMs(s.pid));
  const simCpu0 = sims.reduce((a, s) => a + processCpuMs(s.child.pid as number), 0);
  const t0 = performance.now();
  if (during) await during(t0 + ms);
  const left = t0 + ms - performance.now();
  if (left > 0) await sleep(left);
  const wallMs = performance.now() - t0;
  const cpu1 = servers.map((s) => processCpuMs(s.pid));
  const simCpu1 = sims.reduce((a, s) => a + processCpuMs(s.child.pid as number), 0);
  // PostgreSQL backends flush statistics up to a second after a transaction: read a moment later (the few extra transactions are counted over the longer span).
  if (db.engine === "postgres") await sleep(1500);
  const c1 = await db.counters();
  const statsMs = performance.now() - t0;
  const tail = t0 + wallMs + tailMs - performance.now();
  if (tail > 0) await sleep(tail);
  const reports = await Promise.all(sims.map((s) => s.ask<SimReport>("report", "report")));
  const latencies = reports.flatMap((r) => r.latencies);
  const sum = (k: keyof Omit<SimReport, "latencies" | "firstSvid">): number => reports.reduce((a, r) => a + r[k], 0);
  const seconds = wallMs / 1000;
  // The agents' counts cover their own span since `mark` (the window and its tail).
  const simSeconds = reports.length ? reports.reduce((a, r) => a + r.seconds, 0) / reports.length : seconds;
  return {
    agents: sims.reduce((a, s) => a + s.agents, 0),
    seconds,
    dbQps: (c1.queries - c0.queries) / (statsMs / 1000),
    dbSecondaryPerS: (c1.secondary - c0.secondary) / (statsMs / 1000),
    topTables: Object.entries(c1.perTable)
      .map(([t, n]) => [t, (n - (c0.perTable[t] ?? 0)) / (statsMs / 1000)] as const)
      .filter(([, r]) => r > 0)
      .sort((a, b) => b[1] - a[1])
      .slice(0, 4),
    serverCores: cpu1.map((c, i) => (c - (cpu0[i] as number)) / wallMs),
    rssMb: servers.map((s) => processRssMb(s.pid)),
    syncsPerS: sum("syncs") / simSeconds,
    p50: latencies.length ? percentile(latencies, 50) : NaN,
    p99: latencies.length ? percentile(latencies, 99) : NaN,
    renewalsPerS: sum("renewals") / simSeconds,
    agentRenewalsPerS: sum("agentRenewals") / simSeconds,
    noticesPerS: sum("notices") / simSeconds,
    errors: sum("errors"),
    simCores: (simCpu1 - simCpu0) / wallMs,
    simRssMb: sims.reduce((a, s) => a + processRssMb(s.child.pid as number), 0),
    firstSvid: new Map(reports.flatMap((r) => Object.entries(r.firstSvid))),
  };
}

function describeWindow(w: Window, what: string, servers: number): void {
  const cores = w.serverCores.reduce((a, b) => a + b, 0);
  log(
    `${what}: ${w.agents} agents, ${w.seconds.toFixed(0)} s: DB ${w.dbQps.toFixed(1)}/s (${(w.dbQps / servers).toFixed(1)} per server; secondary ${w.dbSecondaryPerS.toFixed(1)}/s${w.topTables.length ? `: ${w.topTables.map(([t, r]) => `${t} ${r.toFixed(1)}`).join(", ")}` : ""}), ` +
      `server CPU ${w.serverCores.map((c) => c.toFixed(2)).join("+")} cores (${((cores / w.agents) * 1000).toFixed(3)} per 1,000 agents), RSS ${w.rssMb.map((r) => r.toFixed(0)).join("/")} MB, ` +
      `syncs ${w.syncsPerS.toFixed(0)}/s p50 ${w.p50.toFixed(1)} ms p99 ${w.p99.toFixed(1)} ms, renewals ${w.renewalsPerS.toFixed(1)}/s (agent SVIDs ${w.agentRenewalsPerS.toFixed(1)}/s), notices ${w.noticesPerS.toFixed(1)}/s, errors ${w.errors}; ` +
      `simulated agents: ${w.simCores.toFixed(2)} cores (${((w.simCores * 1000) / Math.max(w.syncsPerS, 0.1)).toFixed(2)} ms CPU per sync), RSS ${w.simRssMb.toFixed(0)} MB (${((w.simRssMb * 1024) / w.agents).toFixed(0)} KB per agent); load average ${loadavg()
        .map((l) => l.toFixed(2))
        .join(" ")}`,
  );
}

/** Runs the harness; resolves with whether every target was met. */
export async function runScale(o: ScaleOptions): Promise<boolean> {
  const tag = `scale-${o.db}-${o.servers}srv`;
  let pass = true;
  if (o.agents.length === 1 && o.agents[0] === 0) {
    // `--agents 0`: the cold start alone.
    try {
      return o.coldStart > 0 ? await coldStart(o) : true;
    } finally {
      await cleanUp();
    }
  }
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-scale-run-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  try {
    const signRates = [rawSignRate()];
    const rawP99 = await rawUnaryP99();
    log(`raw baselines: crypto.sign P-256 ${signRates[0]?.toFixed(0)}/s, gRPC unary p99 ${rawP99.toFixed(2)} ms`);

    // The database, loaded before any server starts.
    const maxAgents = o.agents.at(-1) ?? 0;
    const tokens = Array.from({ length: maxAgents }, () => randomBytes(16).toString("hex"));
    const dbMark = cleanups.length;
    const db = await createBenchDatabase(o.db);
    cleanups.push(() => db.drop());
    let t0 = performance.now();
    await db.load({ tokens, entries: o.entries, svidTtlSeconds: o.svidTtlSeconds, trustDomain: TRUST_DOMAIN });
    log(`${o.db} database ${db.name}: ${tokens.length} join tokens and ${o.entries} entries loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    const servers = await startServers(db, o.servers, 600_000);
    const rootsPath = path.join(dir, "roots.pem");
    writeFileSync(rootsPath, await rootsOfAll(servers));
    const addresses = servers.map((s) => s.agentApiAddress);

    // Stages: agents added up to each count, then a quiet window at steady state.
    const sims: SimAgents[] = [];
    const quiet: Window[] = [];
    let have = 0;
    for (const n of o.agents) {
      t0 = performance.now();
      const started: SimAgents[] = [];
      const processes = Math.ceil((n - have) / o.agentsPerProcess);
      // The attestation budget is shared by the stage's processes: the server attests and signs on one event loop, and more in flight only queues there.
      const concurrency = Math.max(1, Math.floor(o.attestConcurrency / processes));
      for (let from = have; from < n; from += o.agentsPerProcess) {
        const s = startSimAgents(addresses, rootsPath, tokens.slice(from, Math.min(n, from + o.agentsPerProcess)), dir, sims.length + started.length, concurrency, o.simCpuProfDir);
        cleanups.push(() => s.stop());
        started.push(s);
      }
      await Promise.all(started.map((s) => s.ready)).catch((e: unknown) => {
        // What the servers said went wrong (a simulated agent's error names only its side).
        servers.forEach((srv, i) => {
          const bad = srv.log.logs.filter((r) => r.level === "warn" || r.level === "error" || r.level === "fatal").slice(-20);
          log(`server ${i}: last ${bad.length} warning or error records of the stage:\n${bad.map((r) => JSON.stringify(r)).join("\n")}`);
        });
        throw e;
      });
      sims.push(...started);
      have = n;
      log(`${n} simulated agents attested, synced, signed and watching in ${sims.length} processes (${((performance.now() - t0) / 1000).toFixed(1)} s for this stage)`);
      // Let the stage's set-up (first syncs and signings, their issuance records) finish before measuring.
      await settle(db, o.servers);
      const w = await measureWindow(db, servers, sims, o.durationMs);
      describeWindow(w, "steady state, no churn", o.servers);
      quiet.push(w);
      const cores = w.serverCores.reduce((a, b) => a + b, 0);
      pass =
        report({
          name: `${tag}-${n}-agents-db-qps-per-server`,
          value: w.dbQps / o.servers,
          unit: "queries/s",
          baseline: { value: w.syncsPerS / o.servers, unit: "syncs/s", what: `SyncAuthorized calls per server in the same window; ratio = DB queries per agent sync; DB measure: ${db.queriesMeasure}` },
          target: { kind: "absolute", op: "<=", bound: 10 },
        }) && pass;
      pass =
        report({
          name: `${tag}-${n}-agents-sync-p99`,
          value: w.p99,
          unit: "ms",
          baseline: { value: rawP99, unit: "ms", what: "p99 raw gRPC unary call, loopback TCP, no TLS" },
          target: { kind: "absolute", op: "<", bound: 50 },
        }) && pass;
      pass =
        report({
          name: `${tag}-${n}-agents-server-cpu-per-1000-agents`,
          value: (cores / n) * 1000,
          unit: "cores",
          baseline: { value: w.syncsPerS, unit: "syncs/s", what: "SyncAuthorized calls served by all servers in the window (for information)" },
          target: { kind: "absolute", op: "<", bound: 1 },
        }) && pass;
      w.rssMb.forEach((rss, i) => {
        pass = report({ name: `${tag}-${n}-agents-server-${i}-rss`, value: rss, unit: "MB", target: { kind: "absolute", op: "<", bound: 1024 } }) && pass;
      });
    }
    if (quiet.length >= 2) {
      const first = quiet[0] as Window;
      const last = quiet.at(-1) as Window;
      // Database load can only be seen not to grow if the offered load (syncs) did grow with the agents.
      const offered = last.syncsPerS / Math.max(first.syncsPerS, 0.1);
      if (offered < 0.75 * (last.agents / first.agents)) {
        console.log(`WARN ${tag}: syncs/s grew ${offered.toFixed(2)} × for ${(last.agents / first.agents).toFixed(1)} × the agents: the simulated agents (or the machine) did not keep up, so the growth figure below understates; compare DB queries per sync instead`);
      }
      pass =
        report({
          name: `${tag}-db-qps-growth-${first.agents}-to-${last.agents}-agents`,
          value: last.dbQps,
          unit: "queries/s",
          baseline: { value: Math.max(first.dbQps, 0.1), unit: "queries/s", what: `DB queries/s at ${first.agents} agents in the same run (ratio: growth for ${(last.agents / first.agents).toFixed(1)} × the agents; syncs/s ${first.syncsPerS.toFixed(0)} -> ${last.syncsPerS.toFixed(0)}, DB queries per sync ${(first.dbQps / Math.max(first.syncsPerS, 0.1)).toFixed(2)} -> ${(last.dbQps / Math.max(last.syncsPerS, 0.1)).toFixed(2)})` },
          target: { kind: "ratio", op: "<=", bound: 1.5 },
        }) && pass;
    }

    // Churn: entries created and deleted through the admin API of each server in turn.
    if (o.churn > 0) {
      const admins = servers.map((s) => createUnaryClient(EntryAdmin, `unix:${s.socketPath}`, credentials.createInsecure()));
      cleanups.push(() => admins.forEach((a) => a.close()));
      const created: string[] = [];
      /** Entry ID → when its create call returned (ms since the epoch). */
      const createdAt = new Map<string, number>();
      let changes = 0;
      let failures = 0;
      // Changes are made on schedule, up to 32 in flight (a slow admin call does not hold back the rate); an entry is deleted
      // only once 10 s old, so its agent has had the time to fetch its SVID (the create-to-SVID figure must not lose slow ones).
      const KEEP_MS = 10_000;
      let inFlight = 0;
      const change = async (k: number): Promise<void> => {
        const admin = admins[k % admins.length] as (typeof admins)[number];
        const oldest = created[0];
        try {
          if (oldest !== undefined && Date.now() - (createdAt.get(oldest) ?? Infinity) > KEEP_MS && k % 2 === 1) {
            created.shift();
            const r = await admin.batchDeleteEntry({ ids: [oldest] });
            if ((r.results[0]?.status?.code ?? 0) !== 0) failures++;
          } else {
            const agent = joinTokenAgentId(TRUST_DOMAIN, tokens[k % tokens.length] as string);
            const r = await admin.batchCreateEntry({ entries: [create(EntrySchema, { spiffeId: `spiffe://${TRUST_DOMAIN}/churn/${k}`, parentId: agent, selectors: [{ type: "unix", value: `uid:${500_000 + k}` }], x509SvidTtl: o.svidTtlSeconds })] });
            const id = r.results[0]?.entry?.id;
            if (id) (created.push(id), createdAt.set(id, Date.now()));
            else failures++;
          }
        } catch {
          failures++;
        }
      };
      const churn = async (until: number): Promise<void> => {
        const start = performance.now();
        const pending = new Set<Promise<void>>();
        while (performance.now() < until) {
          const due = start + (changes * 1000) / o.churn;
          if (due > performance.now()) await sleep(due - performance.now());
          if (inFlight >= 32) {
            await Promise.race(pending);
            continue;
          }
          inFlight++;
          const p: Promise<void> = change(changes).finally(() => (inFlight--, pending.delete(p)));
          pending.add(p);
          changes++;
        }
        await Promise.all(pending);
      };
      // The reports are read 5 s after the window, so entries created near its end can reach their agents.
      const w = await measureWindow(db, servers, sims, o.durationMs, churn, 5000);
      describeWindow(w, `churn ${o.churn}/s (${changes} changes, ${failures} failed)`, o.servers);
      // Entry create (the admin call returned) to the owning agent holding the new entry's SVID (sync after the pushed notice, then BatchNewX509SVID).
      const toSvid = [...createdAt].flatMap(([id, at]) => {
        const got = w.firstSvid.get(id);
        return got === undefined ? [] : [Math.max(0, got - at)];
      });
      log(
        `entry create to SVID: ${toSvid.length} of ${createdAt.size} created entries reached their agent within the window and 5 s after; ` +
          (toSvid.length ? `p50 ${percentile(toSvid, 50).toFixed(0)} ms, p99 ${percentile(toSvid, 99).toFixed(0)} ms, max ${Math.max(...toSvid).toFixed(0)} ms` : "none"),
      );
      if (toSvid.length > 0)
        pass =
          report({
            name: `${tag}-${w.agents}-agents-entry-create-to-svid-p99`,
            value: percentile(toSvid, 99),
            unit: "ms",
            baseline: { value: rawP99, unit: "ms", what: "p99 raw gRPC unary call, loopback TCP, no TLS" },
            target: { kind: "absolute", op: "<", bound: 1000 },
          }) && pass;
      const perServer = w.dbQps / o.servers;
      pass =
        report({
          name: `${tag}-${w.agents}-agents-churn-${o.churn}-db-qps-per-server`,
          value: perServer,
          unit: "queries/s",
          baseline: { value: (changes / w.seconds) * 1, unit: "changes/s", what: `entry changes/s made through the admin API (ratio: DB queries per change per server); DB measure: ${db.queriesMeasure}` },
          target: { kind: "ratio", op: "<=", bound: 25 },
        }) && pass;
      pass =
        report({
          name: `${tag}-${w.agents}-agents-churn-${o.churn}-sync-p99`,
          value: w.p99,
          unit: "ms",
          baseline: { value: rawP99, unit: "ms", what: "p99 raw gRPC unary call, loopback TCP, no TLS" },
          target: { kind: "absolute", op: "<", bound: 50 },
        }) && pass;
    }

    // Sustained signing: every agent asks for all its SVIDs again at once.
    if (o.signing) {
      const cpu0 = servers.map((s) => processCpuMs(s.pid));
      t0 = performance.now();
      // The server records each batch in one transaction: a few batches in flight measure the commit latency, not the signing
      // (32 in flight: 1,333 SVIDs/s at 0.23 of a core); all agents at once queue past the 30 s deadline at 5,000 agents.
      const perProcess = Math.max(1, Math.floor(o.burstConcurrency / sims.length));
      const renewed = await Promise.all(sims.map((s) => s.ask<{ svids: number; ms: number; errors: number; lastError: string }>(`renew-all ${perProcess}`, "renewed")));
      const failed = renewed.find((r) => r.lastError !== "");
      if (failed) log(`signing burst: simulated agents' errors so far ${renewed.reduce((a, r) => a + r.errors, 0)}, e.g. ${failed.lastError.slice(0, 300)}`);
      const wallMs = performance.now() - t0;
      const cores = servers.map((s, i) => (processCpuMs(s.pid) - (cpu0[i] as number)) / wallMs);
      signRates.push(rawSignRate());
      const svids = renewed.reduce((a, r) => a + r.svids, 0);
      const rate = (svids * 1000) / wallMs;
      log(`signing burst: ${svids} SVIDs in ${(wallMs / 1000).toFixed(1)} s by ${o.servers} server(s) using ${cores.map((c) => c.toFixed(2)).join("+")} cores; raw crypto.sign passes ${signRates.map((r) => r.toFixed(0)).join(", ")}/s`);
      pass =
        report({
          name: `${tag}-${have}-agents-svid-signings`,
          value: rate,
          unit: "SVIDs/s",
          baseline: { value: median(signRates), unit: "signatures/s", what: "raw crypto.sign P-256 on one core, median of passes before and after" },
          target: { kind: "ratio", op: ">=", bound: 0.02 },
        }) && pass;
    }

    // Agents and servers stop before the cold start, which runs alone.
    await cleanUpFrom(dbMark);
    if (o.coldStart > 0) pass = (await coldStart(o)) && pass;
  } finally {
    await cleanUp();
  }
  return pass;
}

/** Runs the cleanups registered from index `mark` on (newest first), keeping the older ones. */
async function cleanUpFrom(mark: number): Promise<void> {
  for (const c of cleanups.splice(mark).reverse()) {
    try {
      await c();
    } catch (e) {
      console.error(`bench: cleanup failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
}

/** A server started over `o.coldStart` entries: time to /ready and RSS after. */
async function coldStart(o: ScaleOptions): Promise<boolean> {
  const tag = `scale-${o.db}-cold-start-${o.coldStart}-entries`;
  const mark = cleanups.length;
  const db = await createBenchDatabase(o.db);
  cleanups.push(() => db.drop());
  let t0 = performance.now();
  await db.load({ tokens: [], entries: o.coldStart, svidTtlSeconds: o.svidTtlSeconds, trustDomain: TRUST_DOMAIN, progress: (n) => n % 100_000 === 0 && log(`cold start: ${n} entries loaded`) });
  log(`cold start: ${o.coldStart} entries bulk-loaded into ${db.name} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  // The raw read is timed before the server starts and after it is ready (the shared machine's load moves): the baseline is their mean.
  const rawBefore = await rawReadMs(db);
  t0 = performance.now();
  const [srv] = await startServers(db, 1, 1_800_000, o.cpuProfDir === undefined ? [] : ["--cpu-prof", "--cpu-prof-dir", o.cpuProfDir]);
  const s = srv as BenchServer;
  await waitReady(`${s.healthUrl}/ready`, 600_000);
  // t0 was taken before the spawn: this is spawn to the first 200 from /ready.
  const readyMs = performance.now() - t0;
  const rss = processRssMb(s.pid);
  // CPU the server used from spawn to ready: less at the mercy of the shared machine's load than the wall time.
  const cpuMs = processCpuMs(s.pid);
  const rawAfter = await rawReadMs(db);
  const rawMs = (rawBefore + rawAfter) / 2;
  log(
    `cold start: ready after ${(readyMs / 1000).toFixed(1)} s (server started ${(s.startedMs / 1000).toFixed(1)} s), server CPU ${(cpuMs / 1000).toFixed(1)} s, RSS ${rss.toFixed(0)} MB; ` +
      `raw read of the rows ${(rawBefore / 1000).toFixed(1)} s before, ${(rawAfter / 1000).toFixed(1)} s after; load average ${loadavg()
        .map((l) => l.toFixed(2))
        .join(" ")}`,
  );
  let pass = report({
    name: `${tag}-time-to-ready`,
    value: readyMs / 1000,
    unit: "s",
    baseline: { value: rawMs / 1000, unit: "s", what: "reading every entry and selector row with the raw driver, same database, mean of a pass before the server started and one after it was ready" },
    target: { kind: "absolute", op: "<", bound: 300 },
  });
  pass = report({ name: `${tag}-rss-after-ready`, value: rss, unit: "MB", target: { kind: "absolute", op: "<", bound: 2048 } }) && pass;
  await cleanUpFrom(mark);
  return pass;
}

function parseDuration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(s);
  if (!m) throw new Error(`bench: --duration ${JSON.stringify(s)} is not a duration like 60s, 2m or 500ms`);
  return Number(m[1]) * (m[2] === "ms" ? 1 : m[2] === "m" ? 60_000 : 1000);
}

function positiveInt(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`bench: --${name} ${JSON.stringify(v)} is not a whole number`);
  return n;
}

/** Parses the command line (see the module comment). */
export function parseScaleArgs(argv: readonly string[]): ScaleOptions {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      db: { type: "string", default: "postgres" },
      servers: { type: "string", default: "1" },
      agents: { type: "string", default: "250,500" },
      entries: { type: "string", default: "5000" },
      churn: { type: "string", default: "10" },
      duration: { type: "string", default: "30s" },
      "cold-start": { type: "string", default: "50000" },
      "svid-ttl": { type: "string", default: "3600" },
      "agents-per-process": { type: "string", default: "500" },
      "no-signing": { type: "boolean", default: false },
      "cpu-prof": { type: "string" },
      "attest-concurrency": { type: "string", default: "32" },
      "burst-concurrency": { type: "string", default: "256" },
      "sim-cpu-prof": { type: "string" },
    },
    strict: true,
  });
  if (values.db !== "postgres" && values.db !== "mysql") throw new Error(`bench: --db must be postgres or mysql, not ${JSON.stringify(values.db)}`);
  const agents = values.agents.split(",").map((a) => positiveInt("agents", a));
  const coldOnly = agents.length === 1 && agents[0] === 0;
  if (!coldOnly && agents.some((a, i) => a < 1 || (i > 0 && a <= (agents[i - 1] as number)))) throw new Error("bench: --agents takes increasing counts of at least 1, e.g. 500,1000 (or 0: the cold start alone)");
  const servers = positiveInt("servers", values.servers);
  if (servers < 1) throw new Error("bench: --servers must be at least 1");
  const perProcess = positiveInt("agents-per-process", values["agents-per-process"]);
  const attestConcurrency = positiveInt("attest-concurrency", values["attest-concurrency"]);
  if (attestConcurrency < 1) throw new Error("bench: --attest-concurrency must be at least 1");
  const burstConcurrency = positiveInt("burst-concurrency", values["burst-concurrency"]);
  if (burstConcurrency < 1) throw new Error("bench: --burst-concurrency must be at least 1");
  if (perProcess < 1) throw new Error("bench: --agents-per-process must be at least 1");
  return {
    db: values.db,
    servers,
    agents,
    entries: positiveInt("entries", values.entries),
    churn: positiveInt("churn", values.churn),
    durationMs: parseDuration(values.duration),
    coldStart: positiveInt("cold-start", values["cold-start"]),
    svidTtlSeconds: positiveInt("svid-ttl", values["svid-ttl"]),
    agentsPerProcess: perProcess,
    signing: !values["no-signing"],
    cpuProfDir: values["cpu-prof"] === undefined ? undefined : path.resolve(values["cpu-prof"]),
    attestConcurrency,
    burstConcurrency,
    simCpuProfDir: values["sim-cpu-prof"] === undefined ? undefined : path.resolve(values["sim-cpu-prof"]),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const opts = parseScaleArgs(process.argv.slice(2));
  log(`options: ${JSON.stringify(opts)}`);
  const ok = await runScale(opts).catch(async (e: unknown) => {
    console.error(e);
    await cleanUp();
    return false;
  });
  process.exit(ok ? 0 : 1);
}
