/**
 * Child process of bench/agent-workload-api.bench.ts and bench/sds.bench.ts:
 * the agent side, in its own process so the 1,000 clients do not share its
 * event loop.
 *
 * Serves, on two Unix sockets in a fresh temporary directory:
 * - the REAL Workload API and Envoy SDS on one socket, as the agent serves
 *   them (endpoint with SO_PEERCRED peer tracking, the unix workload
 *   attestor, the handlers) over the REAL AgentCache holding
 *   `ENTRIES` entries with real X509-SVIDs, exactly one of which (selector
 *   `unix:uid:<uid>`, uid from argv[2]) belongs to the bench process;
 * - a bare grpc-js baseline (`/bench.Echo/Echo` unary echo and
 *   `/bench.Echo/Watch` server stream that sends a 1.5 KB message at once and
 *   again on every `push`).
 *
 * Protocol: one JSON object per line on stdout. First line
 * `{"ready":…,"agentSocket","echoSocket","rssBeforeMb","rssAfterMb",…}`.
 * Commands, one per line on stdin:
 * - `rotate`: issue a new SVID for the bench entry, then replace it in the
 *   cache with `update()`; answers `{"rotated":<ms>,"serialHex":…}` where ms is
 *   `performance.timeOrigin + performance.now()` taken just before `update()`.
 * - `push`: write a 1.5 KB message to every open Watch stream; answers
 *   `{"pushed":<ms>,"seq":n,"streams":k}` (ms taken just before the first write).
 * - `rss`: answers `{"rssMb":…,"streams":k}` after a gc.
 * - `quit`: closes both servers and exits.
 *
 * Run with `node --import tsx --expose-gc bench/support/workload-agent-child.ts <uid> [entries]`.
 */
import { rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { Server, ServerCredentials, type sendUnaryData, type ServerUnaryCall, type ServerWritableStream, type ServiceDefinition } from "@grpc/grpc-js";
import { createCallerAttester } from "../../agent/attestation/workload.js";
import { AgentCache, type CachedSvidState } from "../../agent/cache/agent-cache.js";
import type { CachedEntry, CachedX509Svid } from "../../agent/cache/types.js";
import { createSdsHandler, SDS_MAX_REQUEST_BYTES } from "../../agent/endpoints/sds/handler.js";
import { createPeerTracker, startWorkloadEndpoint } from "../../agent/endpoints/server.js";
import { createWorkloadApiHandler } from "../../agent/endpoints/workload-api/handler.js";
import { systemClock } from "../../common/clock.js";
import { createLogger } from "../../common/log.js";
import { Metrics } from "../../common/metrics.js";
import { makeSelector } from "../../common/selector.js";
import { createUnixWorkloadAttestor } from "../../plugins/workloadattestor/unix/index.js";
import { SigilError } from "../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../spiffe/id.js";
import { generateKeyPair, generateSigner } from "../../spiffe/signer.js";
import { createRootCa } from "../../spiffe/x509/ca.js";
import { issueLeaf, prepareLeafTemplate } from "../../spiffe/x509/leaf.js";
import { randomSerial } from "../../spiffe/x509/serial.js";

const HOUR = 3_600_000;
const uid = Number(process.argv[2] ?? process.getuid?.() ?? 0);
const ENTRIES = Number(process.argv[3] ?? 1000);
/** Size of every baseline message (the X509SVIDResponse the bench workload gets is about this size). */
export const ECHO_PAYLOAD_BYTES = 1536;

const now = (): number => performance.timeOrigin + performance.now();
const out = (o: Record<string, unknown>): void => {
  process.stdout.write(`${JSON.stringify(o)}\n`);
};
const gc = (): void => {
  globalThis.gc?.();
  globalThis.gc?.();
};
const rssMb = (): number => process.memoryUsage().rss / 2 ** 20;

// ---- baseline RSS: everything loaded, nothing cached -------------------------
gc();
const rssBeforeMb = rssMb();

// ---- fill the cache --------------------------------------------------------
const td = parseTrustDomain("example.org");
const caSigner = generateSigner("ec-p256");
const t0 = Date.now();
const caDer = createRootCa({ trustDomain: td, notBefore: new Date(t0 - HOUR), notAfter: new Date(t0 + 24 * HOUR), signer: caSigner });
const template = prepareLeafTemplate({ issuerCertDer: caDer, issuerSigner: caSigner });

function issueSvid(spiffeId: string): { state: CachedSvidState; serial: Uint8Array } {
  const { privateKey, publicKey } = generateKeyPair("ec-p256");
  const notBefore = new Date(Date.now() - 60_000);
  const notAfter = new Date(Date.now() + HOUR);
  const serial = randomSerial();
  const leaf = issueLeaf(template, {
    spiffeId: parseSpiffeId(spiffeId),
    subjectPublicKeyDer: new Uint8Array(publicKey.export({ type: "spki", format: "der" })),
    serial,
    notBefore,
    notAfter,
  });
  const svid: CachedX509Svid = {
    chain: [leaf],
    privateKey,
    privateKeyPkcs8: new Uint8Array(privateKey.export({ type: "pkcs8", format: "der" })),
    notBefore,
    notAfter,
  };
  return { state: { svid, entryRevision: 1, renewAt: new Date(notBefore.getTime() + HOUR / 2) }, serial };
}

const entries: CachedEntry[] = [];
const svids = new Map<string, CachedSvidState>();
// The bench workload's entry is in the middle, so lookups cannot stop early by luck.
const benchIndex = ENTRIES >> 1;
let benchEntry: CachedEntry | undefined;
for (let i = 0; i < ENTRIES; i++) {
  const mine = i === benchIndex;
  const entry: CachedEntry = {
    id: `entry-${String(i).padStart(5, "0")}`,
    spiffeId: mine ? "spiffe://example.org/bench/workload" : `spiffe://example.org/ns/app-${i}/sa/default`,
    // Other workloads run as other uids, each with its own entry (and SVID).
    selectors: [makeSelector("unix", `uid:${mine ? uid : 200_000 + i}`)],
    federatesWith: [],
    hint: "",
    createdAt: new Date(t0 - HOUR + i),
    revision: 1,
    jwtSvidTtlSeconds: 300,
  };
  if (mine) benchEntry = entry;
  entries.push(entry);
  svids.set(entry.id, issueSvid(entry.spiffeId).state);
}
if (benchEntry === undefined) throw new SigilError("ERR_INTERNAL", "bench: no entry for the bench workload");
const mintJwtSvid = (): Promise<never> => Promise.reject(new SigilError("ERR_UNAVAILABLE", "bench: no server"));
const cache = new AgentCache({ trustDomain: td, clock: systemClock, mintJwtSvid });
cache.update({ bundles: [{ trustDomain: td, x509Authorities: [caDer], jwtAuthorities: new Map() }], entries, svids, synced: true });
svids.clear();
entries.length = 0;
gc();
const rssAfterMb = rssMb();

// ---- the real Workload API -------------------------------------------------
const log = createLogger({ level: "warn", destination: { write: (line: string) => void process.stderr.write(line) } });
const metrics = new Metrics({ defaultMetrics: false });
const peers = createPeerTracker();
const attest = createCallerAttester({ resolvePeer: (p) => peers.lookup(p), attestors: [createUnixWorkloadAttestor()], timeoutMs: 30_000, log });
const handler = createWorkloadApiHandler({ cache, attest, trustDomain: td, log, metrics });
const sds = createSdsHandler({ cache, attest, trustDomain: td, log, metrics });
const dir = await mkdtemp(path.join(tmpdir(), "sigil-bench-wapi-"));
// However this process ends (quit, a failed start, an error), the directory goes with it.
process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
const endpoint = await startWorkloadEndpoint({ socketPath: path.join(dir, "agent", "api.sock"), services: [handler, sds], maxRequestBytes: SDS_MAX_REQUEST_BYTES, peers, metrics, log });

// ---- the bare grpc-js baseline ----------------------------------------------
const identity = (b: Buffer): Buffer => b;
const echoDefinition: ServiceDefinition = {
  echo: { path: "/bench.Echo/Echo", requestStream: false, responseStream: false, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity },
  watch: { path: "/bench.Echo/Watch", requestStream: false, responseStream: true, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity },
};
const watchers = new Set<ServerWritableStream<Buffer, Buffer>>();
let seq = 0;
/** A 1.5 KB message whose first 4 bytes carry the push sequence number. */
const message = (n: number): Buffer => {
  const b = Buffer.alloc(ECHO_PAYLOAD_BYTES, 0x5a);
  b.writeUInt32BE(n, 0);
  return b;
};
const echoServer = new Server();
echoServer.addService(echoDefinition, {
  echo(call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) {
    callback(null, call.request);
  },
  watch(call: ServerWritableStream<Buffer, Buffer>) {
    watchers.add(call);
    call.on("cancelled", () => watchers.delete(call));
    call.write(message(seq));
  },
});
const echoSocket = path.join(dir, "echo.sock");
await new Promise<void>((resolve, reject) => echoServer.bindAsync(`unix:${echoSocket}`, ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));

out({
  ready: true,
  agentSocket: endpoint.socketPath,
  echoSocket,
  rssBeforeMb,
  rssAfterMb,
  entries: cache.entries().length,
  svids: cache.svidCount,
  benchSpiffeId: benchEntry.spiffeId,
  uid,
});

async function shutdown(): Promise<void> {
  await endpoint.close();
  echoServer.forceShutdown();
  await rm(dir, { recursive: true, force: true });
  process.exit(0);
}

const rl = createInterface({ input: process.stdin });
rl.on("close", () => void shutdown());
rl.on("line", (line) => {
  const cmd = line.trim();
  if (cmd === "rotate") {
    const entry = benchEntry as CachedEntry;
    const { state, serial } = issueSvid(entry.spiffeId);
    const at = now();
    cache.update({ svids: new Map([[entry.id, state]]) });
    out({ rotated: at, serialHex: Buffer.from(serial).toString("hex") });
  } else if (cmd === "push") {
    seq += 1;
    const msg = message(seq);
    const at = now();
    for (const w of watchers) w.write(msg);
    out({ pushed: at, seq, streams: watchers.size });
  } else if (cmd === "rss") {
    gc();
    out({ rssMb: rssMb(), tracked: peers.size, watchers: watchers.size });
  } else if (cmd === "quit") {
    void shutdown();
  }
});
