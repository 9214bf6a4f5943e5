/**
 * Inventory at scale: "which live SVIDs chain to key K" over 1,000,000
 * issuance records in SQLite. 100,000 workloads on 1,000 agents, each renewed
 * ten times at half life (1 h TTL, every 30 min); the last two rounds of half
 * the workloads were signed by a new key K2 (a taint in progress), the rest by
 * K1. Reports the median time of `issuanceInventory` for K1 (counts by agent
 * and SPIFFE ID plus the first 100 SVIDs). Baseline in the same run: SQLite's
 * own `SELECT COUNT(*) FROM issuances`. Absolute target: < 1000 ms.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { ManualClock } from "../common/clock.js";
import { createSqliteDatastore, type IssuanceInput } from "../server/datastore/index.js";
import { median, report } from "./harness.js";

const RECORDS = 1_000_000;
const WORKLOADS = 100_000;
const AGENTS = 1_000;
const ROUND_MS = 30 * 60_000;
const TTL_MS = 60 * 60_000;
const T0 = new Date("2030-01-01T00:00:00Z").getTime();
const TD = "spiffe://example.org";

const dir = mkdtempSync(path.join(tmpdir(), "sigil-bench-inventory-"));
try {
  const now = new Date(T0 + 9 * ROUND_MS + 60_000);
  const clock = new ManualClock(now);
  const file = path.join(dir, "ds.sqlite3");
  const ds = await createSqliteDatastore({ path: file, clock });
  const started = Date.now();
  let batch: IssuanceInput[] = [];
  for (let i = 0; i < RECORDS; i++) {
    const w = i % WORKLOADS;
    const round = Math.floor(i / WORKLOADS);
    const agent = `${TD}/spire/agent/join_token/a${w % AGENTS}`;
    const issued = T0 + round * ROUND_MS;
    batch.push({
      serial: (i + 1).toString(16),
      kind: "x509-svid",
      spiffeId: `${TD}/workload/${w}`,
      entryId: `entry-${w}`,
      agentId: agent,
      caKeyId: round >= 8 && w % 2 === 0 ? "x509-B-k2" : "x509-A-k1",
      notBefore: new Date(issued - 10_000),
      notAfter: new Date(issued + TTL_MS),
      issuedAt: new Date(issued),
      selectors: [`unix:uid:${1000 + (w % 50)}`],
      requestedBy: `agent:${agent}`,
    });
    if (batch.length === 10_000) {
      await ds.recordIssuances(batch);
      batch = [];
    }
  }
  console.log(`filled ${RECORDS} records in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  const times: number[] = [];
  let live = 0;
  for (let i = 0; i < 5; i++) {
    const t = process.hrtime.bigint();
    const inv = await ds.issuanceInventory({ caKeyId: "x509-A-k1", now });
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
    live = inv.live;
    if (i === 0) console.log(`K1: live=${inv.live} agents=${inv.agents.length} spiffeIds=${inv.spiffeIds.length} listed=${inv.svids.length}`);
  }
  if (live !== WORKLOADS / 2) throw new Error(`inventory: expected ${WORKLOADS / 2} live SVIDs under K1, got ${live}`);
  await ds.close();

  const raw = new Database(file, { readonly: true });
  const base: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t = process.hrtime.bigint();
    raw.prepare("SELECT COUNT(*) AS n FROM issuances").get();
    base.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  raw.close();
  report({
    name: "inventory-1m-records-sqlite",
    value: median(times),
    unit: "ms",
    baseline: { value: median(base), unit: "ms", what: "SQLite SELECT COUNT(*) FROM issuances (1M rows), median" },
    target: { kind: "absolute", op: "<", bound: 1000 },
  });
} finally {
  rmSync(dir, { recursive: true, force: true });
}
