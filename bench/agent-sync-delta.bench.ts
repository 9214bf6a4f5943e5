/**
 * Delta sync on the server, for one agent holding 10,000 entries: the cost of
 * answering a sync in which one entry changed, as a delta (AgentSyncHistory's
 * comparison against the remembered answer, encoding the one entry) and as
 * the full set (encoding every entry, what agents without deltas get), and
 * the bytes on the wire of each. Figure: delta answers per second as a ratio
 * of full answers per second, both measured here; ratio target >= 5. The
 * byte counts and the history's memory are printed.
 */
import { randomUUID } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { SyncAuthorizedResponseSchema } from "../proto/gen/sigil/agent/v1/agent_pb.js";
import { AgentSyncHistory } from "../server/api/agent-sync-history.js";
import { wireEntry } from "../server/api/wire.js";
import type { RegistrationEntry } from "../server/datastore/index.js";
import { median, rateSync, report } from "./harness.js";

const N = 10_000;
const AGENT = "spiffe://example.org/spire/agent/bench";
const entries: RegistrationEntry[] = Array.from({ length: N }, (_, i) => ({
  id: randomUUID(),
  spiffeId: `spiffe://example.org/ns/default/sa/workload-${i}`,
  parentId: AGENT,
  selectors: [
    { type: "k8s", value: "ns:default" },
    { type: "k8s", value: `sa:workload-${i}` },
  ],
  x509SvidTtl: 3600,
  jwtSvidTtl: 300,
  dnsNames: [],
  federatesWith: [],
  admin: false,
  downstream: false,
  hint: "",
  expiresAt: null,
  createdAt: new Date("2030-01-01"),
  updatedAt: new Date("2030-01-01"),
  revision: 1,
})) as unknown as RegistrationEntry[];

const history = new AgentSyncHistory();
globalThis.gc?.();
const heapBefore = process.memoryUsage().heapUsed;
history.remember(AGENT, "r1", entries, "b");
globalThis.gc?.();
const heapMb = (process.memoryUsage().heapUsed - heapBefore) / 1e6;
// One entry changed since r1.
const changedIdx = N >> 1;
const current = entries.map((e, i) => (i === changedIdx ? ({ ...e, revision: 2 } as RegistrationEntry) : e));

function fullAnswer(): Uint8Array {
  return toBinary(SyncAuthorizedResponseSchema, create(SyncAuthorizedResponseSchema, { revision: "r2", entries: current.map(wireEntry) }));
}
function deltaAnswer(): Uint8Array {
  const d = history.delta(AGENT, "r1", current, "b");
  if (!d) throw new Error("no delta");
  return toBinary(SyncAuthorizedResponseSchema, create(SyncAuthorizedResponseSchema, { revision: "r2", delta: true, entries: d.changed.map(wireEntry), removedEntryIds: [...d.removedIds] }));
}
const fullBytes = fullAnswer().length;
const deltaBytes = deltaAnswer().length;

const full: number[] = [];
const delta: number[] = [];
for (let pass = 0; pass < 5; pass++) {
  full.push(rateSync(() => void fullAnswer(), 600));
  delta.push(rateSync(() => void deltaAnswer(), 600));
}
console.log(`10,000 entries, one changed: full answer ${(fullBytes / 1024).toFixed(0)} KiB, delta answer ${deltaBytes} bytes; history holds ${heapMb.toFixed(2)} MB for this agent`);
report({
  name: "sync-delta-vs-full-10k-entries",
  value: median(delta),
  unit: "delta answers/s",
  baseline: { value: median(full), unit: "full answers/s", what: "encoding all 10,000 entries, measured here" },
  target: { kind: "ratio", op: ">=", bound: 5 },
});
