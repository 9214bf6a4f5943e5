/**
 * Datastore load of agents syncing at steady state, counted in the server
 * itself (the `bench/scale/` harness reads the database's own statistics;
 * this needs no database server): an in-process server on SQLite, 50 agents
 * attested over mTLS, then every agent syncing (with its last revision, as
 * agents do) for 5 s. Every datastore method call is counted by wrapping the
 * server's datastore; those made from the agent API's code are the figure.
 * Figure: agent-API datastore calls per second, against SyncAuthorized calls
 * per second in the same window (ratio: datastore calls per sync); target
 * ratio <= 0.01 (agent records and bundles come from change-fed caches).
 * Calls by the server's own timers (change feed, CA rotation, prune) are
 * printed too: they do not depend on the agents.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseServerConfig } from "../server/config/load.js";
import { startServer } from "../server/main.js";
import { testServerConfigYaml } from "../test/integration/support/server-process.js";
import { attestInProcess, type Attested } from "../test/integration/support/test-agent.js";
import { countDatastoreCalls } from "../test/support/datastore-calls.js";
import { report } from "./harness.js";

const AGENTS = 50;
const WINDOW_MS = 5_000;

const sum = (m: Map<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0);
const show = (m: Map<string, number>): string => (m.size === 0 ? "none" : [...m].map(([k, v]) => `${k} ${v}`).join(", "));

const dir = mkdtempSync(path.join(tmpdir(), "sigil-bench-sync-reads-"));
const agents: Attested[] = [];
try {
  const config = parseServerConfig(testServerConfigYaml(dir, { keyManager: "memory", serverExtra: "  audit_log_enabled: false\n  ratelimit:\n    sync: false\n    attestation: false\n" }));
  const server = await startServer(config, { logDestination: { write: () => undefined } });
  try {
    const counts = countDatastoreCalls(server.datastore);
    counts.counting = false;
    for (let i = 0; i < AGENTS; i++) agents.push(await attestInProcess(server, new Date(), `bench-${i}`));
    // Warm: each agent's first sync reads its record once (what a new or changed agent costs).
    counts.counting = true;
    const revisions = await Promise.all(agents.map(async (a) => (await a.api.syncAuthorized({})).revision));
    console.log(`first sync of each of ${AGENTS} agents: agent API datastore calls: ${show(counts.agentApi)}`);
    counts.clear();
    const start = performance.now();
    let syncs = 0;
    await Promise.all(
      agents.map(async (a, i) => {
        while (performance.now() - start < WINDOW_MS) {
          await a.api.syncAuthorized({ knownRevision: revisions[i] as string, acceptDelta: true });
          syncs++;
        }
      }),
    );
    const seconds = (performance.now() - start) / 1000;
    counts.counting = false;
    console.log(`${AGENTS} agents, ${syncs} syncs in ${seconds.toFixed(1)} s; agent API datastore calls: ${show(counts.agentApi)}; other calls (server timers): ${show(counts.other)}`);
    report({
      name: "agent-sync-datastore-calls-per-second",
      value: sum(counts.agentApi) / seconds,
      unit: "datastore calls/s",
      baseline: { value: syncs / seconds, unit: "syncs/s", what: `SyncAuthorized calls of ${AGENTS} agents in the same window (ratio: datastore calls per sync)` },
      target: { kind: "ratio", op: "<=", bound: 0.01 },
    });
  } finally {
    for (const a of agents) a.api.close();
    await server.stop();
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
