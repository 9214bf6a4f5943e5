/**
 * Server memory at scale: a real `sigil-server run` process given 100,000
 * registration entries through the admin API (batches of 1,000), then
 * restarted so its entry index is loaded from the datastore as in production.
 * Figure: the server's RSS after the restart (and after the creation, the
 * larger is reported), with the same server's RSS when empty as the baseline.
 * Absolute target < 500 MB. The server runs from TypeScript sources through tsx, as
 * the tests do; the compiled `bin/sigil-server` needs less.
 */
import { readFileSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import { createUnaryClient } from "../common/rpc/unary-client.js";
import { EntryAdmin } from "../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../proto/gen/sigil/types/v1/types_pb.js";
import { launchServerProcess, startServerProcess, type ServerProcess } from "../test/integration/support/server-process.js";
import { report } from "./harness.js";

const ENTRIES = 100_000;
const BATCH = 1000;
const ALIASES = 50;

/** The server's resident memory; throws (the benchmark fails) when it cannot be read, rather than report 0 MB as a pass. */
function rssMb(srv: ServerProcess): number {
  const pid = srv.child.pid;
  if (pid === undefined) throw new Error("server-rss: the server process has no pid; cannot read its VmRSS");
  const path = `/proc/${pid}/status`;
  let status: string;
  try {
    status = readFileSync(path, "utf8");
  } catch (e) {
    throw new Error(`server-rss: cannot read ${path} for the server's VmRSS (Linux /proc needed)`, { cause: e });
  }
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
  if (kb === undefined) throw new Error(`server-rss: ${path} has no "VmRSS: <n> kB" line; cannot measure the server's memory`);
  return Number(kb) / 1024;
}

async function settle(srv: ServerProcess): Promise<number> {
  // Let the change feed and GC catch up, then read RSS.
  await new Promise((r) => setTimeout(r, 2000));
  return rssMb(srv);
}

let srv = await startServerProcess("", "example.org");
try {
  const baseline = await settle(srv);
  const admin = createUnaryClient(EntryAdmin, `unix:${srv.socketPath}`, credentials.createInsecure());
  const started = performance.now();
  const aliases = Array.from({ length: ALIASES }, (_, c) =>
    create(EntrySchema, {
      spiffeId: `spiffe://example.org/cluster/c${c}`,
      parentId: "spiffe://example.org/spire/server",
      selectors: [
        { type: "k8s_psat", value: `cluster:c${c}` },
        { type: "k8s_psat", value: "agent_ns:spire" },
      ],
    }),
  );
  await admin.batchCreateEntry({ entries: aliases });
  let made = ALIASES;
  while (made < ENTRIES) {
    const n = Math.min(BATCH, ENTRIES - made);
    const entries = Array.from({ length: n }, (_, i) => {
      const k = made + i;
      return create(EntrySchema, {
        spiffeId: `spiffe://example.org/ns/app-${k}/sa/default`,
        parentId: `spiffe://example.org/cluster/c${k % ALIASES}`,
        selectors: [
          { type: "k8s", value: `ns:app-${k}` },
          { type: "k8s", value: "sa:default" },
          { type: "k8s", value: `pod-label:app:app-${k}` },
        ],
        x509SvidTtl: 3600,
      });
    });
    const res = await admin.batchCreateEntry({ entries });
    const failed = res.results.filter((r) => r.status?.code !== 0);
    if (failed.length > 0) throw new Error(`entry creation failed: ${failed[0]?.status?.message}`);
    if (Math.floor((made + n) / 20_000) > Math.floor(made / 20_000)) process.stderr.write(`server-rss: ${made + n} entries\n`);
    made += n;
  }
  const createSeconds = (performance.now() - started) / 1000;
  const afterCreate = await settle(srv);
  admin.close();

  await srv.stop({ keepDir: true });
  const restartStart = performance.now();
  srv = await launchServerProcess(srv.dir, srv.configPath, srv.socketPath, { ownsDir: true });
  const restartSeconds = (performance.now() - restartStart) / 1000;
  const afterRestart = await settle(srv);

  console.log(
    `server RSS: empty ${baseline.toFixed(0)} MB, after creating ${ENTRIES} entries ${afterCreate.toFixed(0)} MB (${createSeconds.toFixed(1)} s, ${(ENTRIES / createSeconds).toFixed(0)} entries/s), after restart ${afterRestart.toFixed(0)} MB (started in ${restartSeconds.toFixed(1)} s)`,
  );
  const rss = Math.max(afterCreate, afterRestart);
  report({
    name: "server-rss-100k-entries",
    value: rss,
    unit: "MB",
    baseline: { value: baseline, unit: "MB", what: "the same server's RSS with no entries" },
    target: { kind: "absolute", op: "<", bound: 500 },
  });
} finally {
  await srv.stop();
}
