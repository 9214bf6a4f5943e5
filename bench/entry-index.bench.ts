/**
 * Entry index at scale: 100,000 entries, 5,000 agents. Reports the p99 of an
 * uncached authorized-entries lookup (an entry parented by the agent is
 * changed before every lookup, so its cached answer is dropped) and the process RSS with the index loaded.
 * Baseline in the same run: a bare Map lookup of a precomputed array.
 * Absolute targets: p99 < 1 ms, RSS < 500 MB.
 */
import { randomBytes } from "node:crypto";
import { EntryIndex, type IndexedEntry } from "../server/registration/entry-index.js";
import { percentile, report } from "./harness.js";

interface Entry extends IndexedEntry {
  readonly x509SvidTtl: number;
  readonly jwtSvidTtl: number;
  readonly dnsNames: readonly string[];
  readonly federatesWith: readonly string[];
  readonly hint: string;
  readonly createdAt: number;
}

const TD = "spiffe://example.org";
const SERVER = `${TD}/spire/server`;
const AGENTS = 5000;
const ENTRIES = 100_000;
const CLUSTERS = 50;

const rssBefore = process.memoryUsage().rss;
const agents: { id: string; selectors: string[] }[] = [];
for (let i = 0; i < AGENTS; i++) {
  agents.push({
    id: `${TD}/spire/agent/k8s_psat/cluster-${i % CLUSTERS}/${randomBytes(16).toString("hex")}`,
    selectors: [`k8s_psat:cluster:cluster-${i % CLUSTERS}`, `k8s_psat:agent_ns:spire`, `k8s_psat:agent_node_name:node-${i}`],
  });
}
const entries: Entry[] = [];
let id = 0;
const mk = (spiffeId: string, parentId: string, selectors: string[]): Entry => ({
  id: randomBytes(12).toString("base64url") + ++id,
  spiffeId,
  parentId,
  selectors,
  revision: 0,
  x509SvidTtl: 3600,
  jwtSvidTtl: 300,
  dnsNames: [],
  federatesWith: [],
  hint: "",
  createdAt: Date.now(),
});
// One node alias per cluster, 20 workloads under each (cluster-wide entries).
for (let c = 0; c < CLUSTERS; c++) {
  const alias = mk(`${TD}/cluster/cluster-${c}`, SERVER, [`k8s_psat:cluster:cluster-${c}`, "k8s_psat:agent_ns:spire"]);
  entries.push(alias);
  for (let w = 0; w < 20; w++) entries.push(mk(`${TD}/cluster-${c}/ns/shared/sa/svc-${w}`, alias.spiffeId, [`k8s:ns:shared`, `k8s:sa:svc-${w}`]));
}
// The rest are node-pinned workloads spread across agents.
while (entries.length < ENTRIES) {
  const a = agents[entries.length % AGENTS]!;
  entries.push(mk(`${TD}/ns/app-${entries.length}/sa/default`, a.id, [`k8s:ns:app-${entries.length}`, "k8s:sa:default", `k8s:pod-label:app:app-${entries.length}`]));
}
const idx = new EntryIndex<Entry>(SERVER, entries);
globalThis.gc?.();
const rssMb = process.memoryUsage().rss / 2 ** 20;
const indexMb = (process.memoryUsage().rss - rssBefore) / 2 ** 20;

// Uncached lookups: an entry moved under the agent before each lookup drops its cached answer.
const filler = mk(`${TD}/filler`, `${TD}/nobody`, []);
const lat: number[] = [];
let total = 0;
for (let round = 0; round < 3; round++) {
  for (const a of agents) {
    idx.upsert({ ...filler, parentId: a.id });
    const t = process.hrtime.bigint();
    total += idx.authorizedEntries(a.id, a.selectors).length;
    lat.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
}
const p50 = percentile(lat, 50);
const p99 = percentile(lat, 99);

// Baseline: a bare Map.get of a precomputed answer.
const pre = new Map(agents.map((a) => [a.id, idx.authorizedEntries(a.id, a.selectors)]));
const base: number[] = [];
for (let round = 0; round < 3; round++) {
  for (const a of agents) {
    const t = process.hrtime.bigint();
    total += pre.get(a.id)!.length;
    base.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
}
const baseP99 = percentile(base, 99);
console.log(`entries=${idx.size} agents=${AGENTS} avg authorized per agent=${(total / (AGENTS * 6)).toFixed(1)} p50=${p50.toFixed(4)}ms`);
report({
  name: "entry-index-authorized-lookup-p99",
  value: p99,
  unit: "ms",
  baseline: { value: baseP99, unit: "ms", what: "bare Map.get of a precomputed answer, p99" },
  target: { kind: "absolute", op: "<", bound: 1 },
});
report({
  name: "entry-index-rss-100k-entries",
  value: rssMb,
  unit: "MB",
  baseline: { value: rssBefore / 2 ** 20, unit: "MB", what: `process RSS before loading (index adds ${indexMb.toFixed(0)} MB)` },
  target: { kind: "absolute", op: "<", bound: 500 },
});
