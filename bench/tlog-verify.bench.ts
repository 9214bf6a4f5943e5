/**
 * `log verify` of a 1,000,000-entry transparency log (issue 16): entries per
 * second of `verifyLog` — checkpoint signature, every entry bundle and tile,
 * every tree level recomputed and compared — over an in-memory tiled log
 * served through the fetch function (no network). Entries are 250–450-byte
 * JSON-like records, about the size of an issuance entry.
 * Baseline in the same run: one-shot SHA-256 of each of the same entries
 * (the least any verifier must do), read from the same bundles.
 * Three interleaved passes; medians. Ratio target: verification reaches at
 * least 0.3 of the baseline (it hashes every entry once more with its 0x00
 * prefix, one interior node per entry, and parses bundles).
 *
 * A second figure is what `sigil-server log verify --allow-ids` does: the
 * same log served by the server's tiles listener (server/tlog/http.ts) over
 * loopback HTTP, fetched with `httpTlogFetch`, each entry decoded as a Sigil
 * entry and its SPIFFE ID checked against an allow list (certificate chains,
 * `--bundle`, are not part of it). Entries are canonical Sigil credential
 * entries (docs/transparency.md) of 250–450 bytes. Target ratio: ≥ 0.1.
 */
import { hash } from "node:crypto";
import { createLogger } from "../common/log.js";
import { startTlogListener } from "../server/tlog/http.js";
import { SigilEntryAuditor, SpiffeIdAllowList } from "../spiffe/tlog/sigil-audit.js";
import { encodeLogEntry } from "../spiffe/tlog/sigil-entry.js";
import { parseTrustDomain } from "../spiffe/id.js";
import { MemoryTlog } from "../spiffe/tlog/memory-log.js";
import { generateNoteKey, parseVerifierKey } from "../spiffe/tlog/note.js";
import { entryBundlesForSize, entriesPath, forEachBundleEntry } from "../spiffe/tlog/tiles.js";
import { httpTlogFetch, verifyLog } from "../spiffe/tlog/verify.js";
import { median, report } from "./harness.js";

const TARGET = 0.3;
const HTTP_TARGET = 0.1;
const PASSES = 3;
const ENTRIES = 1_000_000;
const ORIGIN = "example.org/sigil/issuance";

const key = generateNoteKey(ORIGIN);
const log = new MemoryTlog(ORIGIN, [key.signer]);
for (let i = 0; i < ENTRIES; i++) {
  const selectors = Array.from({ length: 1 + ((i * 7919) % 5) }, (_, k) => `k8s:pod-label:app-${(i + k) % 5000}-${"x".repeat((i * 31 + k) % 20)}`);
  log.append(
    encodeLogEntry({
      v: 1,
      kind: "x509-svid",
      serial: (i * 2654435761 + 1).toString(16),
      spiffeId: `spiffe://example.org/ns/app-${i % 5000}/sa/default`,
      entryId: `e-${i % 100000}`,
      selectors,
      agentId: `spiffe://example.org/spire/agent/k8s_psat/c1/${i % 3000}`,
      notBefore: 1_700_000_000 + i,
      notAfter: 1_700_003_600 + i,
      issuedAt: 1_700_000_000 + i,
    }),
  );
}
const checkpointNote = log.publish();
const verifiers = [parseVerifierKey(key.vkey)];
const bundles = entryBundlesForSize(ENTRIES).map((b) => log.files.get(entriesPath(b.index, b.width)) as Uint8Array);

function rawPass(): number {
  const start = performance.now();
  let n = 0;
  let sink = 0;
  for (const b of bundles) {
    n += forEachBundleEntry(b, (e) => {
      sink ^= (hash("sha256", e, "buffer")[0] as number);
    });
  }
  if (sink === 256) console.log("unreachable");
  return (n * 1000) / (performance.now() - start);
}

async function verifyPass(): Promise<number> {
  const start = performance.now();
  const r = await verifyLog({ fetch: log.fetch, verifiers });
  return (r.entries * 1000) / (performance.now() - start);
}

const files = log.files;
const listener = await startTlogListener({
  host: "127.0.0.1",
  port: 0,
  log: createLogger({ level: "error", destination: { write: () => undefined } }),
  view: {
    origin: ORIGIN,
    latestCheckpoint: () => ({ note: checkpointNote, size: ENTRIES, rootHash: log.root() }),
    resource: async (p) => {
      const body = files.get(p);
      return body === undefined ? undefined : { body, immutable: !p.includes(".p/") };
    },
    prove: async () => undefined,
    verifierKeys: async () => [key.vkey],
  },
});
const allowIds = new SpiffeIdAllowList("spiffe://example.org/ns/*/sa/default\n");

async function httpAuditPass(): Promise<number> {
  const auditor = new SigilEntryAuditor({ trustDomain: parseTrustDomain("example.org"), allowIds });
  const start = performance.now();
  const r = await verifyLog({ fetch: httpTlogFetch(listener.url), verifiers, onEntry: auditor.onEntry });
  if (auditor.findings !== 0) throw new Error(`bench: ${auditor.findings} unexpected findings`);
  return (r.entries * 1000) / (performance.now() - start);
}

const rawRates: number[] = [];
const verifyRates: number[] = [];
const httpRates: number[] = [];
for (let pass = 0; pass < PASSES; pass++) {
  rawRates.push(rawPass());
  verifyRates.push(await verifyPass());
  httpRates.push(await httpAuditPass());
}
await listener.close();
report({
  name: "tlog-verify-1m",
  value: median(verifyRates),
  unit: "entries/s",
  baseline: { value: median(rawRates), unit: "entries/s", what: "one-shot SHA-256 of each of the same 1,000,000 entries" },
  target: { kind: "ratio", op: ">=", bound: TARGET },
});
report({
  name: "tlog-verify-1m-http-audit",
  value: median(httpRates),
  unit: "entries/s",
  baseline: { value: median(rawRates), unit: "entries/s", what: "one-shot SHA-256 of each of the same 1,000,000 entries" },
  target: { kind: "ratio", op: ">=", bound: HTTP_TARGET },
});
