/**
 * Pushed change notices end to end: time from `entry create` (the admin API's
 * BatchCreateEntry) to the workload's Workload API X509 stream receiving the
 * new SVID, through a real server process, a real agent process (sync_interval
 * 5 s, so only the pushed notice can make it fast) and a workload watching its
 * X509 context, while simulated agents in separate processes
 * (`support/sim-agents-child.ts`, real mTLS, one channel and one change
 * stream per identity, polling every 5 s) load the server.
 *
 * Figure: p99 over the samples (ms). Absolute target < 1000 ms (issue 14:
 * "within 1 s instead of the next 5 s poll"). Baseline: p99 of a raw gRPC
 * server-stream push over loopback TCP in the same run, interleaved sample by
 * sample (for information: what the notice path costs over the transport).
 *
 * SIGIL_BENCH_AGENTS: simulated agents (default 1000: the 5,000 does
 * not fit beside the server on a 2-core machine), spread over 2 processes.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { Client, credentials, Server, ServerCredentials, type ServerWritableStream } from "@grpc/grpc-js";
import { createUnaryClient } from "../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../proto/gen/sigil/types/v1/types_pb.js";
import { createWorkloadApiClient } from "../spiffe/workloadapi/client.js";
import { followJsonLog } from "../test/integration/support/json-log.js";
import { launchServerProcess, testServerConfigYaml } from "../test/integration/support/server-process.js";
import { rootsPemFromBundleJson } from "../test/integration/support/test-agent.js";
import { percentile, report } from "./harness.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const AGENTS = Number(process.env.SIGIL_BENCH_AGENTS ?? 1000);
const CHILDREN = 2;
const SAMPLES = 100;
const ENTRIES_PER_SIM_AGENT = 2;
const UID = process.getuid?.() ?? 0;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const now = (): number => performance.timeOrigin + performance.now();

const dir = mkdtempSync(path.join(tmpdir(), "sigil-bench-push-"));
const configPath = path.join(dir, "server.yaml");
writeFileSync(configPath, testServerConfigYaml(dir, { keyManager: "memory", serverExtra: "  ratelimit:\n    attestation: false\n    signing: false\n" }));
const srv = await launchServerProcess(dir, configPath, path.join(dir, "admin", "api.sock")).catch((e: unknown) => {
  rmSync(dir, { recursive: true, force: true });
  throw e;
});
const children: ChildProcess[] = [];
let agent: ChildProcess | undefined;
try {
  const target = `unix:${srv.socketPath}`;
  const entryAdmin = createUnaryClient(EntryAdmin, target, credentials.createInsecure());
  const agentAdmin = createUnaryClient(AgentAdmin, target, credentials.createInsecure());
  const rootsPem = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
  const rootsPath = path.join(dir, "roots.pem");
  writeFileSync(rootsPath, rootsPem);

  // Simulated agents: join tokens and their entries, then the child processes.
  const tokens: string[] = [];
  for (let i = 0; i < AGENTS; i++) {
    const tok = await agentAdmin.createJoinToken({ ttl: 3600 });
    tokens.push(tok.token);
    await entryAdmin.batchCreateEntry({
      entries: Array.from({ length: ENTRIES_PER_SIM_AGENT }, (_, k) => create(EntrySchema, { spiffeId: `spiffe://example.org/sim/${i}/w${k}`, parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${1000 + k}` }] })),
    });
  }
  const started = Date.now();
  const ready = await Promise.all(
    Array.from({ length: CHILDREN }, (_, c) => {
      const tokensPath = path.join(dir, `tokens-${c}.txt`);
      writeFileSync(tokensPath, tokens.filter((_, i) => i % CHILDREN === c).join("\n"));
      const child = spawn(process.execPath, ["--import", "tsx", path.join(here, "support", "sim-agents-child.ts"), srv.agentApiAddress, rootsPath, tokensPath], { stdio: ["pipe", "pipe", "inherit"] });
      children.push(child);
      return new Promise<number>((resolve, reject) => {
        createInterface({ input: child.stdout! }).on("line", (l) => {
          const m = JSON.parse(l) as { ready?: number; stats?: unknown };
          if (m.ready !== undefined) resolve(m.ready);
          if (m.stats !== undefined) console.log(`simulated agents (process ${c}): ${JSON.stringify(m.stats)}`);
        });
        child.once("exit", (code) => reject(new Error(`simulated agents exited (${code})`)));
      });
    }),
  );
  console.log(`${ready.reduce((a, b) => a + b, 0)} simulated agents attested, syncing and watching in ${CHILDREN} processes (${((Date.now() - started) / 1000).toFixed(1)} s)`);

  // The real agent, polling every 5 s.
  const tok = await agentAdmin.createJoinToken({ ttl: 600 });
  const agentDir = path.join(dir, "agent");
  mkdirSync(agentDir);
  const socketPath = path.join(agentDir, "api.sock");
  writeFileSync(
    path.join(agentDir, "agent.yaml"),
    `agent:
  trust_domain: example.org
  server_address: ${srv.agentApiAddress.split(":")[0]}
  server_port: ${srv.agentApiAddress.split(":")[1]}
  socket_path: ${socketPath}
  data_dir: ${path.join(agentDir, "data")}
  trust_bundle_path: ${rootsPath}
  sync_interval: 5s
plugins:
  NodeAttestor:
    join_token: {}
  WorkloadAttestor:
    unix: {}
`,
  );
  agent = spawn(process.execPath, ["--import", "tsx", path.join(root, "agent/cli/main.ts"), "run", "--config", path.join(agentDir, "agent.yaml"), "--join-token", tok.token], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  await followJsonLog(agent).waitForLog((r) => r.msg === "agent started", 60_000, "agent start");
  await entryAdmin.batchCreateEntry({ entries: [create(EntrySchema, { spiffeId: "spiffe://example.org/push/first", parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${UID}` }] })] });

  const arrivals = new Map<string, number>();
  const workload = createWorkloadApiClient({ address: `unix://${socketPath}` });
  workload.watchX509Context(
    (ctx) => {
      const at = now();
      for (const s of ctx.svids) if (!arrivals.has(s.id.toString())) arrivals.set(s.id.toString(), at);
    },
    () => undefined,
  );
  const waitFor = async (id: string, timeoutMs = 30_000): Promise<number> => {
    const deadline = Date.now() + timeoutMs;
    while (!arrivals.has(id)) {
      if (Date.now() > deadline) throw new Error(`bench: ${id} never reached the workload`);
      await sleep(2);
    }
    return arrivals.get(id) as number;
  };
  await waitFor("spiffe://example.org/push/first");

  // The raw baseline: a gRPC server stream pushing one message per sample over loopback TCP.
  const streams: ServerWritableStream<Buffer, Buffer>[] = [];
  const raw = new Server();
  const id = (b: Buffer): Buffer => b;
  raw.addService(
    { watch: { path: "/bench.Push/Watch", requestStream: false, responseStream: true, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id } },
    { watch: (call: ServerWritableStream<Buffer, Buffer>) => void streams.push(call) },
  );
  const rawPort = await new Promise<number>((resolve, reject) => raw.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  const rawClient = new Client(`127.0.0.1:${rawPort}`, credentials.createInsecure());
  const rawArrivals: number[] = [];
  let rawWaiter: (() => void) | undefined;
  const rawCall = rawClient.makeServerStreamRequest("/bench.Push/Watch", id, id, Buffer.alloc(0));
  rawCall.on("error", () => undefined);
  rawCall.on("data", () => {
    rawArrivals.push(now());
    rawWaiter?.();
  });
  while (streams.length === 0) await sleep(5);

  const figure: number[] = [];
  const baseline: number[] = [];
  for (let i = 0; i < SAMPLES; i++) {
    const sid = `spiffe://example.org/push/w${i}`;
    const t0 = now();
    await entryAdmin.batchCreateEntry({ entries: [create(EntrySchema, { spiffeId: sid, parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${UID}` }] })] });
    figure.push((await waitFor(sid)) - t0);

    const got = new Promise<void>((r) => (rawWaiter = r));
    const r0 = now();
    (streams[0] as ServerWritableStream<Buffer, Buffer>).write(Buffer.from(sid));
    await got;
    baseline.push((rawArrivals.at(-1) as number) - r0);
    await sleep(100 + Math.random() * 200);
  }
  workload.close();
  rawCall.cancel();
  rawClient.close();
  raw.forceShutdown();
  entryAdmin.close();
  agentAdmin.close();
  console.log(`entry create -> workload SVID (ms): p50=${percentile(figure, 50).toFixed(1)} p90=${percentile(figure, 90).toFixed(1)} p99=${percentile(figure, 99).toFixed(1)} max=${Math.max(...figure).toFixed(1)} over ${SAMPLES} samples`);
  console.log(`raw gRPC stream push (ms): p50=${percentile(baseline, 50).toFixed(3)} p99=${percentile(baseline, 99).toFixed(3)}`);
  report({
    name: `entry-create-to-workload-svid-p99-${AGENTS}-agents`,
    value: percentile(figure, 99),
    unit: "ms",
    baseline: { value: percentile(baseline, 99), unit: "ms", what: "p99 raw gRPC server-stream push, loopback TCP" },
    target: { kind: "absolute", op: "<", bound: 1000 },
  });
  for (const c of children) c.stdin?.write("quit\n");
  await Promise.all(children.map((c) => new Promise((r) => (c.exitCode !== null ? r(undefined) : c.once("exit", r)))));
} finally {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  if (agent && agent.exitCode === null) {
    const a = agent;
    await new Promise((r) => {
      a.once("exit", r);
      a.kill("SIGTERM");
    });
  }
  await srv.stop();
  rmSync(dir, { recursive: true, force: true });
}
