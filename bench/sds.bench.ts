/**
 * Envoy SDS on the agent socket at 1,000 connections (issue 12), against the
 * agent child of the Workload API benchmark (bench/support/workload-agent-child.ts:
 * the real endpoint serving the Workload API and SDS, SO_PEERCRED, the unix
 * attestor, the real AgentCache with 1,000 entries and X509-SVIDs).
 *
 * 1. `sds-rotation-fanout-1000-streams`: 1,000 StreamSecrets streams (one
 *    connection each) asking for `default`, each first response ACKed as
 *    Envoy does; the child replaces the bench entry's SVID; time from
 *    `update()` to the last stream receiving the new secret. The pushes are
 *    ACKed once every stream has its push: here one process holds all 1,000
 *    client streams, and ACKing while it still reads would charge its own
 *    1,000 writes to the agent (1,000 Envoys write theirs in parallel; the
 *    agent writes every push in one turn, before any ACK can arrive).
 *    Baseline in the same run and the same child: the same rotation pushed to
 *    1,000 FetchX509SVID streams. Ratio target: <= 1.2x.
 * 2. `sds-first-response-p99-1000-conns`: the 1,000 clients open StreamSecrets
 *    together and send their first request; per call, the time from the call's
 *    start to its first response. Baseline: a bare grpc-js unary echo of 1.5 KB,
 *    1,000 clients measured the same way. Ratio target: p99 <= 3x echo p99.
 * Medians over 9 rounds (one round of each varies by ±15% on a quiet 2-core machine), interleaved (the SDS and Workload API rounds alternate which goes first).
 *
 * Run: `node --import tsx --expose-gc bench/sds.bench.ts`.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Metadata, type Client, type ServiceError } from "@grpc/grpc-js";
import { DiscoveryRequestSchema, DiscoveryResponseSchema } from "../proto/gen/envoy/service/discovery/v3/discovery_pb.js";
import { X509SVIDRequestSchema } from "../proto/gen/spiffe/workload_pb.js";
import { WORKLOAD_API_HEADER } from "../spiffe/workloadapi/client.js";
import { SDS_PATHS, SECRET_TYPE, secretsOf } from "../test/support/sds-client.js";
import { closeClients, connectClients, lastArrival, openServerStreams, startAgentChild, type BenchStream } from "./support/agent-child.js";
import { median, percentile, report } from "./harness.js";

const CONNS = 1000;
const ROUNDS = 9;
const PAYLOAD_BYTES = 1536;
const SETTLE_MS = 1000;

const now = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const identity = (b: Buffer): Buffer => b;
const f = (x: number): string => x.toFixed(2);

const agent = await startAgentChild(CONNS);
const { ready } = agent;
console.log(`agent child: ${ready.entries} entries, ${ready.svids} X509-SVIDs cached; bench workload ${ready.benchSpiffeId}`);

const sdsRequest = (versionInfo: string, responseNonce: string): Buffer =>
  Buffer.from(toBinary(DiscoveryRequestSchema, create(DiscoveryRequestSchema, { versionInfo, responseNonce, resourceNames: ["default"], typeUrl: SECRET_TYPE, node: { id: "bench", cluster: "bench" } })));

/** ACKs a response on `call`, as Envoy does. */
function ack(call: { write(b: Buffer): boolean }, data: Buffer): void {
  const r = fromBinary(DiscoveryResponseSchema, data);
  call.write(sdsRequest(r.versionInfo, r.nonce));
}

/** Opens StreamSecrets on every client together; resolves with first-response latencies (ms) and the open streams. */
/** An SDS stream, with the ACKs of the pushes it received, held until every stream has the push. */
interface SdsStream extends BenchStream {
  readonly acks: Array<() => void>;
}

async function openSds(clients: Client[]): Promise<{ latencies: number[]; streams: SdsStream[]; first: Buffer }> {
  const latencies = new Array<number>(clients.length);
  const streams: SdsStream[] = [];
  let first: Buffer | undefined;
  await new Promise<void>((resolve, reject) => {
    let pending = clients.length;
    clients.forEach((c, i) => {
      const t = performance.now();
      const call = c.makeBidiStreamRequest(SDS_PATHS.stream, identity, identity, new Metadata());
      const s: SdsStream = { call, later: [], acks: [] };
      let got = false;
      call.on("data", (d: Buffer) => {
        if (got) s.later.push({ at: now(), data: d });
        else {
          got = true;
          latencies[i] = performance.now() - t;
          first ??= d;
          if (--pending === 0) resolve();
        }
        // A push is ACKed once every stream has it (see the module comment).
        if (s.later.length > 0) s.acks.push(() => ack(call, d));
        else ack(call, d);
      });
      call.on("error", (e: ServiceError) => {
        if (e.code !== 1 /* CANCELLED */) reject(e);
      });
      call.write(sdsRequest("", ""));
      streams.push(s);
    });
  });
  return { latencies, streams, first: first as Buffer };
}

/** Rotates the bench entry's SVID; resolves with the time from update() to the last stream's new message. */
async function rotation(streams: BenchStream[], match: (serial: Buffer) => (d: Buffer) => boolean): Promise<number> {
  await sleep(SETTLE_MS);
  // A full collection first (the child's `rss` command runs one), for both APIs alike: the setup's garbage is not collected inside the measured push.
  agent.command("rss");
  await agent.nextLine("rssMb");
  agent.command("rotate");
  const rot = await agent.nextLine("rotated");
  const last = await lastArrival(streams, match(Buffer.from(rot.serialHex as string, "hex")));
  return last - (rot.rotated as number);
}

interface SdsRound {
  readonly p50: number;
  readonly p99: number;
  readonly fanoutMs: number;
}

async function sdsRound(verbose: boolean): Promise<SdsRound> {
  const clients = await connectClients(ready.agentSocket, CONNS);
  await sleep(SETTLE_MS);
  const { latencies, streams, first } = await openSds(clients);
  if (verbose) {
    const secrets = secretsOf(fromBinary(DiscoveryResponseSchema, first));
    if (secrets.length !== 1 || secrets[0]?.type.case !== "tlsCertificate") throw new Error(`bench: expected one TLS certificate, got ${JSON.stringify(secrets.map((s) => s.name))}`);
    console.log(`  StreamSecrets response: ${first.length} bytes, secret ${secrets[0].name} (PEM chain and key)`);
  }
  // Only the rotation changes the bench workload's secrets: any later message is it.
  const fanoutMs = await rotation(streams, () => () => true);
  for (const s of streams) for (const a of s.acks.splice(0)) a();
  for (const s of streams) s.call.cancel();
  await closeClients(clients);
  return { p50: percentile(latencies, 50), p99: percentile(latencies, 99), fanoutMs };
}

async function workloadApiRound(): Promise<number> {
  const clients = await connectClients(ready.agentSocket, CONNS);
  await sleep(SETTLE_MS);
  const request = Buffer.from(toBinary(X509SVIDRequestSchema, create(X509SVIDRequestSchema)));
  const streams = await openServerStreams(clients, "/SpiffeWorkloadAPI/FetchX509SVID", request, () => {
    const md = new Metadata();
    md.set(WORKLOAD_API_HEADER, "true");
    return md;
  });
  const fanoutMs = await rotation(streams, (serial) => (d) => d.includes(serial));
  for (const s of streams) s.call.cancel();
  await closeClients(clients);
  return fanoutMs;
}

async function echoRound(): Promise<{ p50: number; p99: number }> {
  const clients = await connectClients(ready.echoSocket, CONNS);
  await sleep(SETTLE_MS);
  const payload = Buffer.alloc(PAYLOAD_BYTES, 0x61);
  const latencies = await Promise.all(
    clients.map(
      (c) =>
        new Promise<number>((resolve, reject) => {
          const t = performance.now();
          c.makeUnaryRequest("/bench.Echo/Echo", identity, identity, payload, (e: ServiceError | null) => (e ? reject(e) : resolve(performance.now() - t)));
        }),
    ),
  );
  await closeClients(clients);
  return { p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
}

try {
  // Warm-up: JIT, buffers and the thread pool on both sides.
  await sdsRound(true);
  await workloadApiRound();
  await echoRound();
  const sds: SdsRound[] = [];
  const wapi: number[] = [];
  const echo: { p50: number; p99: number }[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    // Interleaved, alternating which goes first.
    if (r % 2 === 0) {
      sds.push(await sdsRound(false));
      wapi.push(await workloadApiRound());
    } else {
      wapi.push(await workloadApiRound());
      sds.push(await sdsRound(false));
    }
    echo.push(await echoRound());
    const s = sds.at(-1) as SdsRound;
    const e = echo.at(-1) as { p99: number; p50: number };
    console.log(
      `  round ${r + 1}: StreamSecrets first response p50 ${f(s.p50)} p99 ${f(s.p99)} ms | echo p50 ${f(e.p50)} p99 ${f(e.p99)} ms` +
        ` | rotation fan-out SDS ${f(s.fanoutMs)} ms, Workload API ${f(wapi.at(-1) as number)} ms`,
    );
  }
  report({
    name: "sds-rotation-fanout-1000-streams",
    value: median(sds.map((s) => s.fanoutMs)),
    unit: "ms",
    baseline: { value: median(wapi), unit: "ms", what: `the same rotation pushed to ${CONNS} FetchX509SVID streams of the same agent` },
    target: { kind: "ratio", op: "<=", bound: 1.2 },
  });
  report({
    name: "sds-first-response-p99-1000-conns",
    value: median(sds.map((s) => s.p99)),
    unit: "ms",
    baseline: { value: median(echo.map((e) => e.p99)), unit: "ms", what: `bare grpc-js unary echo of ${PAYLOAD_BYTES} B over a Unix socket, ${CONNS} connections, p99` },
    target: { kind: "ratio", op: "<=", bound: 3 },
  });
} finally {
  await agent.stop();
}
