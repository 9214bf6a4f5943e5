/**
 * Delta sync memory and change notices on the server: a delta is answered
 * only against the revision last answered to that agent, memory stays within
 * its bound (least recently heard agents forgotten), and notices go only to
 * the agents whose authorized entries changed, one stream per agent.
 */
import { describe, expect, it } from "vitest";
import { AgentSyncHistory } from "../../../../server/api/agent-sync-history.js";
import { ChangeNotifier } from "../../../../server/api/change-notifier.js";
import type { AttestedAgent, RegistrationEntry } from "../../../../server/datastore/index.js";
import { EntryIndex } from "../../../../server/registration/entry-index.js";
import { toIndexed, type IndexedRecord } from "../../../../server/registration/entry-index-feed.js";
import { createLogger } from "../../../../common/log.js";
import { parseSelector } from "../../../../common/selector.js";
import { SigilError } from "../../../../spiffe/errors.js";

const e = (id: string, revision: number) => ({ id, revision });

describe("AgentSyncHistory", () => {
  it("answers added, changed and removed entries against the revision it last answered, and nothing else", () => {
    const h = new AgentSyncHistory();
    expect(h.delta("agent-1", "r1", [e("a", 1)], "b1")).toBeUndefined();
    h.remember("agent-1", "r1", [e("a", 1), e("b", 1), e("c", 1)], "b1");
    const d = h.delta("agent-1", "r1", [e("b", 1), e("c", 2), e("d", 1)], "b1");
    expect(d).toEqual({ changed: [e("c", 2), e("d", 1)], removedIds: ["a"], bundlesChanged: false });
    expect(h.delta("agent-1", "r1", [], "b2")?.bundlesChanged).toBe(true);
    // Another revision, the empty one, another agent: full answers.
    expect(h.delta("agent-1", "r0", [], "b1")).toBeUndefined();
    expect(h.delta("agent-1", "", [], "b1")).toBeUndefined();
    expect(h.delta("agent-2", "r1", [], "b1")).toBeUndefined();
    h.remember("agent-1", "r2", [e("b", 1)], "b1");
    expect(h.delta("agent-1", "r1", [], "b1")).toBeUndefined();
    expect(h.entries).toBe(1);
    h.forget("agent-1");
    expect(h.agents).toBe(0);
    expect(h.entries).toBe(0);
  });

  it("stays within its bound, forgetting the agents heard from longest ago", () => {
    const h = new AgentSyncHistory(5);
    h.remember("a1", "r", [e("x", 1), e("y", 1)], "");
    h.remember("a2", "r", [e("x", 1), e("y", 1)], "");
    h.remember("a1", "r", [e("x", 1), e("y", 1)], ""); // heard again: most recent
    h.remember("a3", "r", [e("x", 1), e("y", 1)], "");
    expect(h.entries).toBeLessThanOrEqual(5);
    expect(h.delta("a2", "r", [], "")).toBeUndefined();
    expect(h.delta("a1", "r", [], "")).toBeDefined();
    expect(h.delta("a3", "r", [], "")).toBeDefined();
    h.remember("big", "r", Array.from({ length: 6 }, (_, i) => e(`z${i}`, 1)), "");
    expect(h.delta("big", "r", [], "")).toBeUndefined();
  });
});

const SERVER = "spiffe://example.org/spire/server";
function regEntry(id: string, parentId: string, revision = 1): RegistrationEntry {
  return { id, spiffeId: `spiffe://example.org/w/${id}`, parentId, selectors: [{ type: "unix", value: "uid:1" }], revision, federatesWith: [] } as unknown as RegistrationEntry;
}
const agentRecord = { selectors: [] } as unknown as AttestedAgent;

describe("ChangeNotifier", () => {
  function setup() {
    const index = new EntryIndex<IndexedRecord>(SERVER);
    let bundle = {};
    let now = new Date("2030-01-01");
    const notifier = new ChangeNotifier({ index, bundle: () => bundle, now: () => now, log: createLogger({ level: "error", destination: { write: () => undefined } }), maxWatchers: 2, tickMs: 3_600_000 });
    const sinks = new Map<string, { sent: string[]; ended: SigilError[] }>();
    const watch = (agent: string, record: AttestedAgent = agentRecord, expiresAt = new Date("2030-01-02")) => {
      const s = { sent: [] as string[], ended: [] as SigilError[] };
      sinks.set(agent, s);
      const un = notifier.watch(`spiffe://example.org/spire/agent/${agent}`, record, expiresAt, { send: (d) => s.sent.push(d), end: (r) => void (r && s.ended.push(r)) });
      return { s, un };
    };
    return { index, notifier, watch, newBundle: () => (bundle = {}), setNow: (d: Date) => (now = d) };
  }

  it("sends the current digest at once, then notices only to agents whose entries changed, and to all on a new bundle", () => {
    const { index, notifier, watch, newBundle } = setup();
    const a = watch("a");
    const b = watch("b");
    expect(a.s.sent).toHaveLength(1);
    expect(notifier.check()).toBe(0);
    index.upsert(toIndexed(regEntry("e1", "spiffe://example.org/spire/agent/a")));
    expect(notifier.check()).toBe(1);
    expect(a.s.sent).toHaveLength(2);
    expect(b.s.sent).toHaveLength(1);
    index.upsert(toIndexed(regEntry("e1", "spiffe://example.org/spire/agent/a", 2)));
    index.upsert(toIndexed(regEntry("e2", "spiffe://example.org/spire/agent/b")));
    expect(notifier.check()).toBe(2);
    // Entries of nobody watching: no notice.
    index.upsert(toIndexed(regEntry("e3", "spiffe://example.org/spire/agent/zzz")));
    expect(notifier.check()).toBe(0);
    newBundle();
    expect(notifier.check()).toBe(2);
    b.un();
    index.delete("e2");
    expect(notifier.check()).toBe(0);
    expect(notifier.watchers).toBe(1);
    notifier.close();
    expect(a.s.ended.map((e) => e.code)).toEqual(["ERR_UNAVAILABLE"]);
    expect(() => watch("c")).toThrow(/stopping/);
  });

  it("ends a stream when the SVID chain it was opened with expires, though nothing else changed", () => {
    const { notifier, watch, setNow } = setup();
    const early = watch("early", agentRecord, new Date("2030-01-01T00:10:00Z"));
    const late = watch("late", agentRecord, new Date("2030-01-01T01:00:00Z"));
    setNow(new Date("2030-01-01T00:09:59.999Z"));
    notifier.check();
    expect(early.s.ended).toEqual([]);
    setNow(new Date("2030-01-01T00:10:00Z"));
    notifier.check();
    expect(early.s.ended.map((e) => [e.code, e.message])).toEqual([["ERR_PERMISSION_DENIED", expect.stringMatching(/spire\/agent\/early was opened with expired at 2030-01-01T00:10:00.000Z/)]]);
    expect(late.s.ended).toEqual([]);
    expect(notifier.watchers).toBe(1);
    setNow(new Date("2030-01-01T02:00:00Z"));
    notifier.check();
    expect(late.s.ended.map((e) => e.code)).toEqual(["ERR_PERMISSION_DENIED"]);
    expect(notifier.watchers).toBe(0);
    notifier.close();
  });

  it("keeps one stream per agent and bounds the total", () => {
    const { notifier, watch } = setup();
    const first = watch("a");
    watch("a");
    expect(first.s.ended.map((e) => e.message)).toEqual([expect.stringMatching(/opened a newer change stream/)]);
    expect(notifier.watchers).toBe(1);
    watch("b");
    expect(() => watch("c")).toThrow(expect.objectContaining({ code: "ERR_RESOURCE_EXHAUSTED" }));
    // The replaced stream's unregister does not drop the newer one.
    first.un();
    expect(notifier.watchers).toBe(2);
    notifier.close();
  });

  it("ends the stream of an agent evicted, banned, or no longer holding the stream's SVID; follows its new selectors", () => {
    const { index, notifier, watch } = setup();
    const id = (a: string) => `spiffe://example.org/spire/agent/${a}`;
    const rec = (over: Partial<AttestedAgent> = {}) => ({ selectors: [], certSerial: "s1", newCertSerial: null, banned: false, ...over }) as unknown as AttestedAgent;
    const evicted = watch("evicted", rec());
    const banned = watch("banned", rec());
    notifier.agentChanged(id("evicted"), undefined);
    notifier.agentChanged(id("banned"), rec({ banned: true }));
    expect(evicted.s.ended.map((e) => e.code)).toEqual(["ERR_AGENT_NOT_ATTESTED"]);
    expect(banned.s.ended.map((e) => e.message)).toEqual([expect.stringMatching(/banned/)]);
    expect(notifier.watchers).toBe(0);
    // Renewed: the stream's SVID is still the current one until the new one is used.
    const renewed = watch("renewed", rec());
    notifier.agentChanged(id("renewed"), rec({ newCertSerial: "s2" }));
    expect(renewed.s.ended).toEqual([]);
    // A new selector brings the alias's entries: a notice, no end.
    index.upsert(toIndexed(regEntry("alias", SERVER)));
    index.upsert(toIndexed({ ...regEntry("via-alias", "spiffe://example.org/w/alias") }));
    notifier.agentChanged(id("renewed"), rec({ newCertSerial: "s2", selectors: [parseSelector("unix:uid:1")] }));
    expect(renewed.s.sent).toHaveLength(2);
    notifier.agentChanged(id("renewed"), rec({ certSerial: "s2" }));
    expect(renewed.s.ended.map((e) => e.message)).toEqual([expect.stringMatching(/serial s1.*not its current one/)]);
    // Agents without a stream are ignored.
    notifier.agentChanged(id("nobody"), undefined);
    expect(notifier.watchers).toBe(0);
    notifier.close();
  });
});
