/**
 * The change notifier recomputes only the agents a change can concern: a
 * change under one agent's ID notices and recomputes that agent alone, a node
 * alias change every agent it matches, a bundle change every agent (also when
 * a new stream saw the new bundle first).
 */
import { describe, expect, it, vi } from "vitest";
import { ChangeNotifier, followAgentEvents } from "../../../../server/api/change-notifier.js";
import type { ChangeFeedListener } from "../../../../server/datastore/change-feed.js";
import type { AttestedAgent, RegistrationEntry } from "../../../../server/datastore/index.js";
import { EntryIndex } from "../../../../server/registration/entry-index.js";
import { toIndexed, type IndexedRecord } from "../../../../server/registration/entry-index-feed.js";
import { createLogger } from "../../../../common/log.js";
import { parseSelector } from "../../../../common/selector.js";

const SERVER = "spiffe://example.org/spire/server";
const agent = (name: string) => `spiffe://example.org/spire/agent/${name}`;
function regEntry(id: string, parentId: string, spiffeId = `spiffe://example.org/w/${id}`, selectors = ["unix:uid:1"]): RegistrationEntry {
  return { id, spiffeId, parentId, selectors: selectors.map(parseSelector), revision: 1, federatesWith: [] } as unknown as RegistrationEntry;
}

describe("ChangeNotifier recomputes only the agents a change concerns", () => {
  function setup() {
    const index = new EntryIndex<IndexedRecord>(SERVER);
    let bundle = {};
    const notifier = new ChangeNotifier({ index, bundle: () => bundle, now: () => new Date("2030-01-01"), log: createLogger({ level: "error", destination: { write: () => undefined } }), tickMs: 3_600_000 });
    const sent: Record<string, string[]> = {};
    const watch = (name: string, selectors: string[] = []) => {
      sent[name] = [];
      const record = { selectors: selectors.map(parseSelector), certSerial: "s1" } as unknown as AttestedAgent;
      notifier.watch(agent(name), record, new Date("2030-01-02"), { send: (d) => sent[name]!.push(d), end: () => undefined });
    };
    // Counts the answers computed or looked up per agent from here on.
    const asked = new Map<string, number>();
    const spy = vi.spyOn(index, "authorizedDigest");
    const count = () => {
      asked.clear();
      for (const [id] of spy.mock.calls) asked.set(id, (asked.get(id) ?? 0) + 1);
      spy.mockClear();
      return Object.fromEntries(asked);
    };
    return { index, notifier, sent, watch, count, newBundle: () => (bundle = {}) };
  }

  it("a change under A's ID: a notice to A only, and B is not recomputed", () => {
    const { index, notifier, sent, watch, count } = setup();
    watch("a");
    watch("b");
    notifier.check();
    count();
    index.upsert(toIndexed(regEntry("web", agent("a"))));
    expect(notifier.check()).toBe(1);
    expect(count()).toEqual({ [agent("a")]: 1 });
    expect(sent.a).toHaveLength(2);
    expect(sent.b).toHaveLength(1);
    // A descendant several levels down under A: still A alone.
    index.upsert(toIndexed(regEntry("child", "spiffe://example.org/w/web")));
    index.upsert(toIndexed(regEntry("grandchild", "spiffe://example.org/w/child")));
    expect(notifier.check()).toBe(1);
    expect(count()).toEqual({ [agent("a")]: 1 });
    // Nothing changed: nothing recomputed.
    expect(notifier.check()).toBe(0);
    expect(count()).toEqual({});
    notifier.close();
  });

  it("a node alias change notices every agent it matches, and only those", () => {
    const { index, notifier, sent, watch, count } = setup();
    watch("gpu1", ["tpm:gpu:yes"]);
    watch("gpu2", ["tpm:gpu:yes", "tpm:rack:7"]);
    watch("cpu", ["tpm:gpu:no"]);
    index.upsert(toIndexed(regEntry("trainer", "spiffe://example.org/nodes/gpu")));
    notifier.check();
    count();
    index.upsert(toIndexed(regEntry("gpu-alias", SERVER, "spiffe://example.org/nodes/gpu", ["tpm:gpu:yes"])));
    expect(notifier.check()).toBe(2);
    expect(count()).toEqual({ [agent("gpu1")]: 1, [agent("gpu2")]: 1 });
    expect([sent.gpu1, sent.gpu2, sent.cpu].map((s) => s?.length)).toEqual([2, 2, 1]);
    // Re-selectored to the rack: gpu1 (matched before only) recomputed and loses the entry; gpu2 matches before and after, so its roots and answer stay.
    index.upsert(toIndexed({ ...regEntry("gpu-alias", SERVER, "spiffe://example.org/nodes/gpu", ["tpm:rack:7"]), revision: 2 }));
    expect(notifier.check()).toBe(1);
    expect(count()).toEqual({ [agent("gpu1")]: 1 });
    expect([sent.gpu1, sent.gpu2, sent.cpu].map((s) => s?.length)).toEqual([3, 2, 1]);
    notifier.close();
  });

  it("a bundle change notices every agent, also when a new stream saw the new bundle first", () => {
    const { index, notifier, sent, watch, count, newBundle } = setup();
    watch("a");
    watch("b");
    index.upsert(toIndexed(regEntry("web", agent("a"))));
    notifier.check();
    count();
    newBundle();
    expect(notifier.check()).toBe(2);
    expect(count()).toEqual({ [agent("a")]: 1, [agent("b")]: 1 });
    newBundle();
    watch("c");
    expect(sent.c).toHaveLength(1);
    expect(notifier.check()).toBe(2);
    expect([sent.a, sent.b, sent.c].map((s) => s?.length)).toEqual([4, 3, 1]);
    notifier.close();
  });
  it("agents sharing a node alias: one change under it notices every one of them and recomputes each once", () => {
    const { index, notifier, sent, watch, count } = setup();
    const names = Array.from({ length: 30 }, (_, i) => `node-${i}`);
    for (const name of names) watch(name, ["k8s_psat:cluster:x"]);
    watch("other", ["k8s_psat:cluster:y"]);
    index.upsert(toIndexed(regEntry("cluster-x", SERVER, "spiffe://example.org/cluster/x", ["k8s_psat:cluster:x"])));
    for (let i = 0; i < 20; i++) index.upsert(toIndexed(regEntry(`w${i}`, "spiffe://example.org/cluster/x")));
    expect(notifier.check()).toBe(30);
    count();
    index.upsert(toIndexed({ ...regEntry("w3", "spiffe://example.org/cluster/x"), revision: 2 }));
    expect(notifier.check()).toBe(30);
    expect(count()).toEqual(Object.fromEntries(names.map((n) => [agent(n), 1])));
    expect(sent.other).toHaveLength(1);
    expect(sent["node-0"]).toHaveLength(3);
    notifier.close();
  });

  it("agent events: a deleted or banned agent's stream ends and the index forgets it; a renewed one stays cached", async () => {
    const { index, notifier, watch } = setup();
    const records = new Map<string, AttestedAgent>();
    let listener: ChangeFeedListener | undefined;
    const log = createLogger({ level: "error", destination: { write: () => undefined } });
    const off = followAgentEvents({ feed: { subscribe: (l) => ((listener = l), () => undefined) }, getAgent: async (id) => records.get(id), notifier, index, log });
    const event = async (id: string) => {
      listener?.onEvent({ eventId: 1, kind: "agent", objectId: id, op: "update", at: new Date() } as never);
      await new Promise((r) => setImmediate(r));
    };
    watch("a");
    index.authorizedEntries(agent("b"), []); // only asked for by the API, not watching
    index.authorizedEntries(agent("c"), []);
    records.set(agent("a"), { selectors: [], certSerial: "s1", banned: true } as unknown as AttestedAgent);
    records.set(agent("c"), { selectors: [], certSerial: "s2" } as unknown as AttestedAgent);
    await event(agent("a"));
    await event(agent("b"));
    await event(agent("c"));
    expect(notifier.watching(agent("a"))).toBe(false);
    expect([index.caches(agent("a")), index.caches(agent("b")), index.caches(agent("c"))]).toEqual([false, false, true]);
    off();
    notifier.close();
  });
});
