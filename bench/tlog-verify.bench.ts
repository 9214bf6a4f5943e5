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
 */
import { hash } from "node:crypto";
import { MemoryTlog } from "../spiffe/tlog/memory-log.js";
import { generateNoteKey, parseVerifierKey } from "../spiffe/tlog/note.js";
import { entryBundlesForSize, entriesPath, forEachBundleEntry } from "../spiffe/tlog/tiles.js";
import { verifyLog } from "../spiffe/tlog/verify.js";
import { median, report } from "./harness.js";

const TARGET = 0.3;
const PASSES = 3;
const ENTRIES = 1_000_000;
const ORIGIN = "example.org/sigil/issuance";

const key = generateNoteKey(ORIGIN);
const log = new MemoryTlog(ORIGIN, [key.signer]);
for (let i = 0; i < ENTRIES; i++) {
  const json = `{"kind":"x509-svid","serial":"${(i * 2654435761).toString(16)}","spiffe_id":"spiffe://example.org/ns/app-${i % 5000}/sa/default","entry_id":"e-${i % 100000}","agent_id":"spiffe://example.org/spire/agent/k8s_psat/c1/${i % 3000}","issued_at":${1_700_000_000 + i},"pad":"`;
  log.append(Buffer.from(json.padEnd(250 + ((i * 7919) % 200), "x") + '"}'));
}
log.publish();
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

const rawRates: number[] = [];
const verifyRates: number[] = [];
for (let pass = 0; pass < PASSES; pass++) {
  rawRates.push(rawPass());
  verifyRates.push(await verifyPass());
}
report({
  name: "tlog-verify-1m",
  value: median(verifyRates),
  unit: "entries/s",
  baseline: { value: median(rawRates), unit: "entries/s", what: "one-shot SHA-256 of each of the same 1,000,000 entries" },
  target: { kind: "ratio", op: ">=", bound: TARGET },
});
