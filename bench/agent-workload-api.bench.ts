/**
 * The agent's Workload API at 1,000 workload connections: the three
 * measured targets, with the agent in a separate process
 * (bench/support/workload-agent-child.ts: the real endpoint, SO_PEERCRED,
 * unix attestor and handler over the real AgentCache holding 1,000 entries
 * with real X509-SVIDs, one of them for this process's uid).
 *
 * 1. `workload-api-first-response-p99-1000-conns`: 1,000 grpc-js clients (one
 *    channel and one connection each, connected beforehand) start
 *    FetchX509SVID together; per call, the time from call start to the first
 *    `data`. Baseline in the same run and the same child: a bare grpc-js unary
 *    echo of 1.5 KB over a Unix socket, 1,000 clients measured the same way.
 *    Medians over 3 rounds of the p50 and p99. Ratio target: p99 <= 3x echo p99.
 * 2. `rotation-fanout-1000-streams`: with those 1,000 streams open, the child
 *    replaces the bench entry's SVID in the cache; time from `update()` to the
 *    last stream receiving the new SVID (its serial is in the message). One
 *    clock: `performance.timeOrigin + performance.now()` in both processes.
 *    Baseline: the child pushing a 1.5 KB message to 1,000 plain grpc-js server
 *    streams. Absolute target <= 150 ms.
 * 3. `agent-rss-1000-svids`: the child's RSS after filling the cache (after
 *    gc); baseline its RSS before. Absolute target <= 150 MB.
 *
 * Run: `node --import tsx --expose-gc bench/agent-workload-api.bench.ts`.
 */
import { create, fromBinary } from "@bufbuild/protobuf";
import { Metadata, type Client, type ClientReadableStream, type ServiceError } from "@grpc/grpc-js";
import { SpiffeWorkloadAPI, X509SVIDRequestSchema, X509SVIDResponseSchema } from "../proto/gen/spiffe/workload_pb.js";
import { grpcServiceDefinition } from "../spiffe/grpc/service.js";
import { WORKLOAD_API_HEADER } from "../spiffe/workloadapi/client.js";
import { median, percentile, report } from "./harness.js";
import { closeClients, connectClients, lastArrival, openServerStreams, startAgentChild, type BenchStream } from "./support/agent-child.js";

const CONNS = 1000;
const ROUNDS = 3;
const PAYLOAD_BYTES = 1536;
const SETTLE_MS = 300;

const now = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const identity = (b: Buffer): Buffer => b;

// ---- the child ----------------------------------------------------------------
const agentChild = await startAgentChild(CONNS);
const { ready, nextLine, command } = agentChild;
console.log(`agent child: ${ready.entries} entries, ${ready.svids} X509-SVIDs cached; bench workload ${ready.benchSpiffeId} (uid ${process.getuid?.() ?? 0})`);

// ---- clients -------------------------------------------------------------------
const WAPI = grpcServiceDefinition(SpiffeWorkloadAPI);
const fetchPath = WAPI.fetchX509SVID.path;
const fetchRequest = WAPI.fetchX509SVID.requestSerialize(create(X509SVIDRequestSchema));

type Stream = BenchStream;

/** Starts one call per client together; resolves with each call's first-response latency (ms) and the open streams. */
async function firstResponses(clients: Client[], kind: "wapi" | "echo"): Promise<{ latencies: number[]; streams: Stream[]; first: Buffer; startMs: number }> {
  const latencies: number[] = new Array<number>(clients.length);
  const streams: Stream[] = [];
  let first: Buffer | undefined;
  const payload = Buffer.alloc(PAYLOAD_BYTES, 0x61);
  let startMs = 0;
  await new Promise<void>((resolve, reject) => {
    const loopStart = performance.now();
    let pending = clients.length;
    const done = (): void => {
      if (--pending === 0) resolve();
    };
    for (let i = 0; i < clients.length; i++) {
      const c = clients[i] as Client;
      if (kind === "echo") {
        const t = performance.now();
        c.makeUnaryRequest("/bench.Echo/Echo", identity, identity, payload, (e: ServiceError | null, v?: Buffer) => {
          latencies[i] = performance.now() - t;
          if (e) return reject(e);
          first ??= v;
          done();
        });
      } else {
        const md = new Metadata();
        md.set(WORKLOAD_API_HEADER, "true");
        const t = performance.now();
        const call = c.makeServerStreamRequest(fetchPath, identity, identity, fetchRequest, md);
        const s: Stream = { call, later: [] };
        let got = false;
        call.on("data", (d: Buffer) => {
          if (got) {
            s.later.push({ at: now(), data: d });
            return;
          }
          got = true;
          latencies[i] = performance.now() - t;
          first ??= d;
          done();
        });
        call.on("error", (e: ServiceError) => {
          if (e.code !== 1 /* CANCELLED */) reject(e);
        });
        streams.push(s);
      }
    }
    startMs = performance.now() - loopStart;
  });
  return { latencies, streams, first: first as Buffer, startMs };
}

interface Round {
  /** Fastest first response, and how long starting all the calls took on the client side. */
  readonly min: number;
  readonly startMs: number;
  readonly p50: number;
  readonly p99: number;
  readonly fanoutMs: number;
}

async function agentRound(verbose: boolean): Promise<Round & { rssStreamsMb: number }> {
  const clients = await connectClients(ready.agentSocket, CONNS);
  await sleep(SETTLE_MS);
  const { latencies, streams, first, startMs } = await firstResponses(clients, "wapi");
  if (verbose) {
    const resp = fromBinary(X509SVIDResponseSchema, first);
    const ids = resp.svids.map((s) => s.spiffeId);
    if (ids.length !== 1 || ids[0] !== ready.benchSpiffeId) throw new Error(`bench: the workload got ${JSON.stringify(ids)}, expected exactly ${ready.benchSpiffeId}`);
    console.log(`  FetchX509SVID response: ${first.length} bytes, 1 SVID (${ids[0]})`);
  }
  await sleep(SETTLE_MS);
  command("rss");
  const rssStreamsMb = (await nextLine("rssMb")).rssMb as number;
  command("rotate");
  const rot = await nextLine("rotated");
  const serial = Buffer.from(rot.serialHex as string, "hex");
  const last = await lastArrival(streams, (d) => d.includes(serial));
  const fanoutMs = last - (rot.rotated as number);
  for (const s of streams) s.call.cancel();
  await closeClients(clients);
  return { min: Math.min(...latencies), startMs, p50: percentile(latencies, 50), p99: percentile(latencies, 99), fanoutMs, rssStreamsMb };
}

async function echoRound(): Promise<Round> {
  const clients = await connectClients(ready.echoSocket, CONNS);
  await sleep(SETTLE_MS);
  const { latencies, startMs } = await firstResponses(clients, "echo");
  const streams = await openServerStreams(clients, "/bench.Echo/Watch", Buffer.alloc(0));
  await sleep(SETTLE_MS);
  command("push");
  const push = await nextLine("pushed");
  if (push.streams !== CONNS) throw new Error(`bench: the echo child has ${String(push.streams)} watch streams, expected ${CONNS}`);
  const seq = push.seq as number;
  const last = await lastArrival(streams, (d) => d.readUInt32BE(0) === seq);
  const fanoutMs = last - (push.pushed as number);
  for (const s of streams) s.call.cancel();
  await closeClients(clients);
  return { min: Math.min(...latencies), startMs, p50: percentile(latencies, 50), p99: percentile(latencies, 99), fanoutMs };
}

const f = (x: number): string => x.toFixed(2);
try {
  // Warm-up: JIT, buffers and the thread pool on both sides.
  await agentRound(true);
  await echoRound();
  const agent: (Round & { rssStreamsMb: number })[] = [];
  const echo: Round[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    // Interleaved, alternating which goes first.
    if (r % 2 === 0) {
      agent.push(await agentRound(false));
      echo.push(await echoRound());
    } else {
      echo.push(await echoRound());
      agent.push(await agentRound(false));
    }
    const a = agent[agent.length - 1] as Round;
    const e = echo[echo.length - 1] as Round;
    console.log(
      `  round ${r + 1}: FetchX509SVID min ${f(a.min)} p50 ${f(a.p50)} p99 ${f(a.p99)} ms (calls started in ${f(a.startMs)} ms)` +
        ` | echo min ${f(e.min)} p50 ${f(e.p50)} p99 ${f(e.p99)} ms (started in ${f(e.startMs)} ms)` +
        ` | rotation fan-out ${f(a.fanoutMs)} ms | raw push ${f(e.fanoutMs)} ms`,
    );
  }
  const m = (xs: Round[], k: keyof Round): number => median(xs.map((x) => x[k]));
  const aP50 = m(agent, "p50");
  const aP99 = m(agent, "p99");
  const eP50 = m(echo, "p50");
  const eP99 = m(echo, "p99");
  const fan = m(agent, "fanoutMs");
  const push = m(echo, "fanoutMs");
  const rssStreams = median(agent.map((a) => a.rssStreamsMb));
  console.log(`FetchX509SVID first response, ${CONNS} connections: p50 ${f(aP50)} ms (${(aP50 / eP50).toFixed(2)}x echo p50 ${f(eP50)} ms), p99 ${f(aP99)} ms`);
  report({
    name: "workload-api-first-response-p99-1000-conns",
    value: aP99,
    unit: "ms",
    baseline: { value: eP99, unit: "ms", what: `bare grpc-js unary echo of ${PAYLOAD_BYTES} B over a Unix socket, ${CONNS} connections, p99` },
    target: { kind: "ratio", op: "<=", bound: 3 },
  });
  report({
    name: "rotation-fanout-1000-streams",
    value: fan,
    unit: "ms",
    baseline: { value: push, unit: "ms", what: `bare grpc-js push of ${PAYLOAD_BYTES} B to ${CONNS} server streams` },
    target: { kind: "absolute", op: "<=", bound: 150 },
  });
  console.log(`agent RSS with ${CONNS} open FetchX509SVID streams: ${rssStreams.toFixed(0)} MB (informational)`);
  report({
    name: "agent-rss-1000-svids",
    value: ready.rssAfterMb,
    unit: "MB",
    baseline: { value: ready.rssBeforeMb, unit: "MB", what: `agent child RSS before filling the cache (${CONNS} SVIDs add ${(ready.rssAfterMb - ready.rssBeforeMb).toFixed(1)} MB)` },
    target: { kind: "absolute", op: "<=", bound: 150 },
  });
} finally {
  await agentChild.stop();
}
