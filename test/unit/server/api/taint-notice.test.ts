/**
 * The server's side of the taint wire: the taint key is canonical (order and
 * repeats do not matter; empty when nothing is tainted, so revisions do not
 * move), and a change of the tainted authorities sends a change notice to
 * every watching agent, whatever entries it holds.
 */
import { describe, expect, it } from "vitest";
import { canonicalTaint } from "../../../../server/api/agent-api.js";
import { ChangeNotifier } from "../../../../server/api/change-notifier.js";
import type { AttestedAgent } from "../../../../server/datastore/index.js";
import { EntryIndex } from "../../../../server/registration/entry-index.js";
import type { IndexedRecord } from "../../../../server/registration/entry-index-feed.js";
import { createLogger } from "../../../../common/log.js";

const A = "a".repeat(64);
const B = "b".repeat(64);

describe("taint on the agent API", () => {
  it("canonical taint: sorted, de-duplicated, and no key at all when nothing is tainted", () => {
    expect(canonicalTaint(undefined).key).toBe("");
    expect(canonicalTaint({ x509SpkiSha256: [], jwtKeyIds: [] }).key).toBe("");
    const one = canonicalTaint({ x509SpkiSha256: [B, A, B], jwtKeyIds: ["k2", "k1"] });
    expect(one.x509).toEqual([A, B]);
    expect(one.jwt).toEqual(["k1", "k2"]);
    expect(canonicalTaint({ x509SpkiSha256: [A, B], jwtKeyIds: ["k1", "k2"] }).key).toBe(one.key);
    expect(canonicalTaint({ x509SpkiSha256: [A], jwtKeyIds: ["k1", "k2"] }).key).not.toBe(one.key);
  });

  it("a taint change sends every watching agent a notice with a new digest; an unchanged taint sends none", () => {
    let taint = "";
    const notifier = new ChangeNotifier({
      index: new EntryIndex<IndexedRecord>("spiffe://example.org/spire/server"),
      bundle: () => "same bundle",
      taint: () => taint,
      now: () => new Date("2030-01-01"),
      log: createLogger({ level: "error", destination: { write: () => undefined } }),
      tickMs: 3_600_000,
    });
    const sent: Record<string, string[]> = { a: [], b: [] };
    for (const agent of ["a", "b"]) {
      notifier.watch(`spiffe://example.org/spire/agent/${agent}`, { selectors: [] } as unknown as AttestedAgent, new Date("2030-01-02"), { send: (d) => sent[agent]!.push(d), end: () => undefined });
    }
    expect(notifier.check()).toBe(0);
    taint = canonicalTaint({ x509SpkiSha256: [A], jwtKeyIds: [] }).key;
    expect(notifier.check()).toBe(2);
    expect(notifier.check()).toBe(0);
    expect(sent.a).toHaveLength(2);
    expect(sent.a![1]).not.toBe(sent.a![0]);
    notifier.close();
  });
});
