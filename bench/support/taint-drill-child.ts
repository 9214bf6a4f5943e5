/**
 * Agents for bench/taint-drill.bench.ts, in their own process so the server's
 * CPU is measured alone. Each agent is the real agent core minus its sockets:
 * a join-token {@link NodeIdentity}, the real server client, an
 * {@link AgentCache} and the real {@link SyncLoop} (taint replacement, spread
 * and batches included), polling every 5 s. Workloads are simulated as
 * selector sets read from the cache, as the Workload API reads it for an
 * open stream: `WORKLOADS` per agent, workload `w` matching the entries whose
 * selector is `unix:uid:<1000 + w>`.
 *
 * argv: <agent API address> <roots PEM file> <tokens file, one per line> <workloads per agent> <taint spread ms> <SVIDs per agent>
 * stdout, one JSON object per line: {"ready":{"agents":n,"svids":n}} once every
 * workload holds all its SVIDs. Commands on stdin:
 * - `drill <spki sha256 hex>`: from now, every 200 ms, checks each workload:
 *   a workload with no SVID for one of its entries is a workload-visible error
 *   (counted once per workload and check); answers
 *   {"drained":{"ms":…,"errors":n,"agentsCpuMs":…}} (this process's CPU during the drill) once no workload holds an
 *   SVID under that authority.
 * - `quit`: stops the loops and exits.
 */
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { NodeIdentity } from "../../agent/attestation/node.js";
import { AgentCache } from "../../agent/cache/agent-cache.js";
import { TaintMatcher } from "../../agent/rotation/taint.js";
import { GrpcServerClient } from "../../agent/sync/server-client.js";
import { SyncLoop } from "../../agent/sync/sync-loop.js";
import { systemClock } from "../../common/clock.js";
import { makeSelector } from "../../common/selector.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import { decodePemCertificates } from "../../spiffe/pem.js";

const [address, rootsPath, tokensPath, workloadsArg, spreadArg, svidsArg] = process.argv.slice(2) as [string, string, string, string, string, string];
const SVIDS_PER_AGENT = Number(svidsArg);
const roots = decodePemCertificates(readFileSync(rootsPath, "utf8"));
const tokens = readFileSync(tokensPath, "utf8").split("\n").filter((t) => t !== "");
const WORKLOADS = Number(workloadsArg);
const td = parseTrustDomain("example.org");
const print = (o: unknown): void => void process.stdout.write(`${JSON.stringify(o)}\n`);

interface Agent {
  readonly cache: AgentCache;
  readonly loop: SyncLoop;
  readonly client: GrpcServerClient;
}

const agents: Agent[] = [];
for (const token of tokens) {
  const client = new GrpcServerClient({ address, trustDomain: td, clock: systemClock, roots, deadlineMs: 60_000 });
  client.setTrustBundle(roots);
  let sent = false;
  const attestor = {
    name: "join_token",
    payload: async () => {
      sent = true;
      return new TextEncoder().encode(token);
    },
    canReattest: () => !sent,
  };
  const identity = new NodeIdentity({ client, clock: systemClock, attestor });
  await identity.attest();
  const cache = new AgentCache({ trustDomain: td, clock: systemClock, mintJwtSvid: (e, a) => client.newJwtSvid(e, a) });
  const loop = new SyncLoop({ client, cache, clock: systemClock, identity, attestor, intervalMs: 5000, taintSpreadMs: Number(spreadArg) });
  agents.push({ cache, loop, client });
}

const workloadSelectors = Array.from({ length: WORKLOADS }, (_, w) => [makeSelector("unix", `uid:${1000 + w}`)]);
/** Entries per workload: what a complete answer holds. */
const expected = (a: Agent, w: number): number => a.cache.entries().filter((e) => e.selectors.some((s) => s.value === `uid:${1000 + w}`)).length;

// Sync until every agent holds all its SVIDs (a round that failed is logged and run again).
for (let round = 0; ; round++) {
  const behind = agents.filter((a) => !a.cache.ready() || a.cache.svidCount < SVIDS_PER_AGENT);
  if (behind.length === 0) break;
  if (round > 0) await new Promise((r) => setTimeout(r, 500));
  const outcomes = await Promise.all(behind.map((a) => a.loop.syncNow()));
  const failed = outcomes.filter((o) => !o.ok);
  if (failed.length > 0) process.stderr.write(`taint-drill-child: ${failed.length} of ${behind.length} rounds failed, e.g. ${String((failed[0]?.error as Error | undefined)?.message)}\n`);
}
for (const a of agents) a.loop.start();
print({ ready: { agents: agents.length, svids: agents.reduce((n, a) => n + a.cache.svidCount, 0) } });

async function drill(spki: string): Promise<void> {
  const started = performance.now();
  const cpu0 = process.cpuUsage();
  // What each workload holds when complete; fixed during the drill (no entry changes).
  const want = agents.map((a) => workloadSelectors.map((_, w) => expected(a, w)));
  let errors = 0;
  const matchers = new Map<Agent, TaintMatcher>();
  const judged = new WeakMap<object, boolean>();
  for (;;) {
    let tainted = 0;
    for (const [i, a] of agents.entries()) {
      let m = matchers.get(a);
      if (!m) matchers.set(a, (m = new TaintMatcher(new Set([spki]), a.cache.bundles().own.x509Authorities)));
      workloadSelectors.forEach((sel, w) => {
        const ids = a.cache.identitiesFor(sel);
        if (ids.length < (want[i]?.[w] ?? 0)) errors++;
        for (const { svid } of ids) {
          let covered = judged.get(svid);
          if (covered === undefined) judged.set(svid, (covered = m.covers(svid.chain)));
          if (covered) tainted++;
        }
      });
    }
    if (tainted === 0) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const cpu = process.cpuUsage(cpu0);
  print({ drained: { ms: performance.now() - started, errors, agentsCpuMs: (cpu.user + cpu.system) / 1000 } });
}

createInterface({ input: process.stdin }).on("line", (line) => {
  const [cmd, arg] = line.trim().split(" ");
  if (cmd === "drill" && arg) void drill(arg);
  if (cmd === "quit") {
    void Promise.all(agents.map((a) => a.loop.stop())).then(() => {
      for (const a of agents) a.client.close();
      process.exit(0);
    });
  }
});
