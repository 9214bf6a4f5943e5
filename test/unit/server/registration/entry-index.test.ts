import { describe, expect, it, vi } from "vitest";
import { EntryIndex, type IndexedEntry } from "../../../../server/registration/entry-index.js";

const SERVER = "spiffe://td/spire/server";
let n = 0;
function entry(spiffeId: string, parentId: string, selectors: string[] = []): IndexedEntry {
  return { id: `e${++n}`, spiffeId, parentId, selectors, revision: 0 };
}
const ids = (es: readonly IndexedEntry[]) => es.map((e) => e.spiffeId).sort();

describe("EntryIndex", () => {
  const agentA = "spiffe://td/spire/agent/join_token/a";
  const agentB = "spiffe://td/spire/agent/join_token/b";

  it("returns the direct children of the agent's ID only", () => {
    const idx = new EntryIndex(SERVER, [
      entry("spiffe://td/web", agentA, ["unix:uid:1000"]),
      entry("spiffe://td/db", agentB, ["unix:uid:1001"]),
    ]);
    expect(ids(idx.authorizedEntries(agentA, []))).toEqual(["spiffe://td/web"]);
    expect(ids(idx.authorizedEntries(agentB, []))).toEqual(["spiffe://td/db"]);
    expect(idx.authorizedEntries("spiffe://td/spire/agent/x", [])).toEqual([]);
  });

  it("includes children of node aliases whose selectors are all among the agent's", () => {
    const idx = new EntryIndex(SERVER, [
      entry("spiffe://td/cluster/prod", SERVER, ["k8s_psat:cluster:prod", "k8s_psat:agent_ns:spire"]),
      entry("spiffe://td/ns/prod/web", "spiffe://td/cluster/prod", ["k8s:ns:prod"]),
    ]);
    expect(ids(idx.authorizedEntries(agentA, ["k8s_psat:cluster:prod", "k8s_psat:agent_ns:spire", "x:y"]))).toEqual([
      "spiffe://td/ns/prod/web",
    ]);
    // One selector of the alias missing: not authorized.
    expect(idx.authorizedEntries(agentA, ["k8s_psat:cluster:prod"])).toEqual([]);
    // The alias entry itself is not an SVID the agent gets.
    expect(ids(idx.authorizedEntries(agentA, ["k8s_psat:cluster:prod", "k8s_psat:agent_ns:spire"]))).not.toContain("spiffe://td/cluster/prod");
  });

  it("follows descent through entries' SPIFFE IDs (downstream / nested) without looping", () => {
    const idx = new EntryIndex(SERVER, [
      entry("spiffe://td/downstream", agentA),
      entry("spiffe://td/downstream/child", "spiffe://td/downstream"),
      entry("spiffe://td/loop", "spiffe://td/downstream/child"),
      entry("spiffe://td/downstream", "spiffe://td/loop"), // cycle back
    ]);
    expect(ids(idx.authorizedEntries(agentA, []))).toEqual([
      "spiffe://td/downstream",
      "spiffe://td/downstream",
      "spiffe://td/downstream/child",
      "spiffe://td/loop",
    ]);
  });

  it("finds entries by SPIFFE ID under any parent, following upserts and deletes", () => {
    const a = entry("spiffe://td/child", agentA);
    const b = entry("spiffe://td/child", agentB);
    const idx = new EntryIndex(SERVER, [a, b, entry("spiffe://td/other", agentA)]);
    expect(idx.withSpiffeId("spiffe://td/child").map((e) => e.id).sort()).toEqual([a.id, b.id].sort());
    idx.upsert({ ...a, spiffeId: "spiffe://td/renamed" });
    idx.delete(b.id);
    expect(idx.withSpiffeId("spiffe://td/child")).toEqual([]);
    expect(idx.withSpiffeId("spiffe://td/renamed").map((e) => e.id)).toEqual([a.id]);
  });

  it("reflects upserts and deletes, including a cached agent's result", () => {
    const web = entry("spiffe://td/web", agentA);
    const idx = new EntryIndex(SERVER, [web]);
    expect(ids(idx.authorizedEntries(agentA, []))).toEqual(["spiffe://td/web"]);
    const moved = { ...web, parentId: agentB, revision: 1 };
    idx.upsert(moved);
    expect(idx.authorizedEntries(agentA, [])).toEqual([]);
    expect(idx.authorizedEntries(agentB, [])).toEqual([moved]);
    idx.delete(web.id);
    expect(idx.authorizedEntries(agentB, [])).toEqual([]);
    expect(idx.size).toBe(0);
  });

  it("an alias deleted or re-selectored stops authorizing its children", () => {
    const alias = entry("spiffe://td/nodes/gpu", SERVER, ["tpm:pub_hash:abc"]);
    const child = entry("spiffe://td/trainer", alias.spiffeId);
    const idx = new EntryIndex(SERVER, [alias, child]);
    expect(idx.authorizedEntries(agentA, ["tpm:pub_hash:abc"])).toEqual([child]);
    idx.upsert({ ...alias, selectors: ["tpm:pub_hash:def"], revision: 1 });
    expect(idx.authorizedEntries(agentA, ["tpm:pub_hash:abc"])).toEqual([]);
    expect(idx.authorizedEntries(agentA, ["tpm:pub_hash:def"])).toEqual([child]);
    idx.delete(alias.id);
    expect(idx.authorizedEntries(agentA, ["tpm:pub_hash:def"])).toEqual([]);
  });

  it("a change in the agent's own selectors is seen even with a warm cache", () => {
    const alias = entry("spiffe://td/a1", SERVER, ["s:1"]);
    const child = entry("spiffe://td/c1", alias.spiffeId);
    const idx = new EntryIndex(SERVER, [alias, child]);
    expect(idx.authorizedEntries(agentA, [])).toEqual([]);
    expect(idx.authorizedEntries(agentA, ["s:1"])).toEqual([child]);
  });

  it("drops only the cached answers a change concerns, and names those agents", () => {
    const alias = entry("spiffe://td/nodes/gpu", SERVER, ["tpm:gpu"]);
    const web = entry("spiffe://td/web", agentA);
    const db = entry("spiffe://td/db", agentB);
    const idx = new EntryIndex(SERVER, [alias, web, db]);
    const named: string[][] = [];
    const off = idx.onInvalidate((agents) => named.push([...agents].sort()));
    const a = idx.authorizedEntries(agentA, []);
    const b = idx.authorizedEntries(agentB, ["tpm:gpu"]);
    // A change under A's ID: B's answer is still the cached one.
    idx.upsert({ ...web, revision: 1 });
    expect(named).toEqual([[agentA]]);
    expect(idx.authorizedEntries(agentB, ["tpm:gpu"])).toBe(b);
    expect(idx.authorizedEntries(agentA, [])).not.toBe(a);
    // A child of the alias B matches: B only. A new alias matching nobody cached: nobody.
    idx.upsert(entry("spiffe://td/trainer", alias.spiffeId));
    idx.upsert(entry("spiffe://td/nodes/other", SERVER, ["tpm:other"]));
    expect(named).toEqual([[agentA], [agentB]]);
    // The alias re-selectored: B (it matched before). A, asked with other selectors than it was cached with, is named too.
    idx.authorizedEntries(agentB, ["tpm:gpu"]);
    idx.upsert({ ...alias, selectors: ["tpm:gpu2"], revision: 1 });
    expect(named.at(-1)).toEqual([agentB]);
    idx.authorizedEntries(agentA, ["tpm:gpu2"]);
    expect(named.at(-1)).toEqual([agentA]);
    // An entry moved from B's subtree to A's names both (each cached again first).
    idx.authorizedEntries(agentB, []);
    named.length = 0;
    idx.upsert({ ...db, parentId: agentA, revision: 1 });
    expect(named).toEqual([[agentA, agentB].sort()]);
    off();
    idx.delete(db.id);
    expect(named).toHaveLength(1);
  });

  it("per-agent answers follow random changes exactly as an index built afresh, and every changed answer was named", () => {
    // A small deterministic PRNG (mulberry32): the sequence is the same on every run.
    let seed = 0x5eed;
    const rand = (): number => {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
    const subset = (xs: readonly string[], max: number): string[] => xs.filter(() => rand() < max / xs.length);
    const selectorPool = ["k:a", "k:b", "k:c", "k:d", "k:e"];
    const agents = Array.from({ length: 50 }, (_, i) => ({ id: `spiffe://td/spire/agent/${i}`, selectors: subset(selectorPool, 2) }));
    // Workload IDs are shared between entries, so an ID is an intermediate node many entries hang from (several levels deep).
    const workloadIds = Array.from({ length: 25 }, (_, i) => `spiffe://td/w/${i}`);
    const aliasIds = ["spiffe://td/alias/0", "spiffe://td/alias/1", "spiffe://td/alias/2"];
    const parents = (): string => {
      const r = rand();
      if (r < 0.1) return SERVER;
      if (r < 0.4) return pick(agents).id;
      if (r < 0.55) return pick(aliasIds);
      return pick(workloadIds);
    };
    const fresh = (parentId: string): IndexedEntry => ({
      id: `r${++n}`,
      parentId,
      spiffeId: parentId === SERVER ? pick(aliasIds) : pick(workloadIds),
      selectors: parentId === SERVER ? subset(selectorPool, 1.5) : ["unix:uid:1"],
      revision: 0,
    });
    const model = new Map<string, IndexedEntry>();
    for (let i = 0; i < 60; i++) {
      const e = fresh(parents());
      model.set(e.id, e);
    }
    const idx = new EntryIndex(SERVER, model.values());
    const named = new Set<string>();
    idx.onInvalidate((ids) => ids.forEach((id) => named.add(id)));
    const key = (es: readonly IndexedEntry[]) => es.map((e) => `${e.id}@${e.revision}>${e.parentId}>${e.spiffeId}`).sort();
    const lastSeen = new Map<string, string[]>();
    const compare = (all: boolean) => {
      const expected = new EntryIndex(SERVER, model.values());
      for (const a of agents) {
        if (!all && rand() < 0.5) continue;
        const got = key(idx.authorizedEntries(a.id, a.selectors));
        expect(got, `${a.id} ${a.selectors.join(",")}`).toEqual(key(expected.authorizedEntries(a.id, a.selectors)));
        // An agent asked before (so cached) whose answer changed since must have been named since.
        const before = lastSeen.get(a.id);
        if (before !== undefined && before.join("|") !== got.join("|")) expect(named.has(a.id), `${a.id} changed without being named`).toBe(true);
        lastSeen.set(a.id, got);
        named.delete(a.id);
      }
    };
    compare(true);
    let aliasChanges = 0;
    let moves = 0;
    for (let step = 0; step < 400; step++) {
      const ids = [...model.keys()];
      const r = rand();
      const old = model.get(pick(ids));
      if (r < 0.15 && old) {
        model.delete(old.id);
        idx.delete(old.id);
      } else if (r < 0.35 || !old) {
        const e = fresh(parents());
        model.set(e.id, e);
        idx.upsert(e);
      } else {
        // A changed entry: moved to another parent, renamed (an intermediate node's descendants move with it), re-selectored, or a new revision.
        const what = rand();
        const parentId = what < 0.35 ? parents() : old.parentId;
        const spiffeId = what >= 0.35 && what < 0.65 ? (parentId === SERVER ? pick(aliasIds) : pick(workloadIds)) : old.spiffeId;
        const selectors = what >= 0.65 && what < 0.8 ? subset(selectorPool, 1.5) : old.selectors;
        const e: IndexedEntry = { ...old, parentId, spiffeId, selectors, revision: old.revision + 1 };
        if (old.parentId === SERVER || parentId === SERVER) aliasChanges++;
        if (old.parentId !== parentId) moves++;
        model.set(e.id, e);
        idx.upsert(e);
      }
      compare(step % 50 === 49);
    }
    expect(idx.size).toBe(model.size);
    // The sequence exercised what it is meant to.
    expect(aliasChanges).toBeGreaterThan(10);
    expect(moves).toBeGreaterThan(20);
  });
  it("agents sharing a node alias share its traversal; a change under it names each of them, and each answer equals a fresh index's", () => {
    const cluster = entry("spiffe://td/cluster/x", SERVER, ["k8s_psat:cluster:x"]);
    const workloads = Array.from({ length: 50 }, (_, i) => entry(`spiffe://td/x/w${i}`, cluster.spiffeId));
    const pinned = entry("spiffe://td/pinned", agentA);
    const idx = new EntryIndex(SERVER, [cluster, ...workloads, pinned, entry("spiffe://td/y/w", "spiffe://td/cluster/y")]);
    const agents = Array.from({ length: 40 }, (_, i) => `spiffe://td/spire/agent/k8s_psat/x/${i}`);
    const named: string[][] = [];
    idx.onInvalidate((a) => named.push([...a].sort()));
    const first = agents.map((a) => idx.authorizedEntries(a, ["k8s_psat:cluster:x", `k8s_psat:node:${a}`]));
    // No entry of their own: the alias's array itself, not a copy per agent.
    for (const answer of first) expect(answer).toBe(first[0]);
    expect(ids(idx.authorizedEntries(agentA, ["k8s_psat:cluster:x"]))).toEqual([pinned, ...workloads].map((e) => e.spiffeId).sort());
    idx.authorizedEntries(agentB, ["k8s_psat:cluster:y"]);
    idx.upsert({ ...workloads[7]!, revision: 1 });
    expect(named).toEqual([[...agents, agentA].sort()]);
    // A change under A's own ID names A alone; the alias's traversal stays cached.
    idx.upsert(entry("spiffe://td/pinned2", agentA));
    expect(named.at(-1)).toEqual([agentA]);
    const expected = new EntryIndex(SERVER, idx.ids().map((id) => idx.get(id)!));
    const key = (es: readonly IndexedEntry[]) => es.map((e) => `${e.id}@${e.revision}`).sort();
    for (const a of [...agents, agentA]) {
      expect(key(idx.authorizedEntries(a, ["k8s_psat:cluster:x"]))).toEqual(key(expected.authorizedEntries(a, ["k8s_psat:cluster:x"])));
    }
    // The alias re-selectored away from cluster x: every agent using it is named (their roots changed).
    named.length = 0;
    idx.upsert({ ...cluster, selectors: ["k8s_psat:cluster:z"], revision: 1 });
    expect(named).toEqual([[...agents, agentA].sort()]);
    expect(idx.authorizedEntries(agents[0]!, ["k8s_psat:cluster:x"])).toEqual([]);
  });

  it("a digest per agent that changes with its entries' IDs or revisions, and only the agent's", () => {
    const cluster = entry("spiffe://td/cluster/x", SERVER, ["c:x"]);
    const w = entry("spiffe://td/x/w", cluster.spiffeId);
    const idx = new EntryIndex(SERVER, [cluster, w, entry("spiffe://td/a", agentA)]);
    const dA = idx.authorizedDigest(agentA, ["c:x"]);
    const dB = idx.authorizedDigest(agentB, ["c:x"]);
    expect(dA).not.toBe(dB);
    expect(idx.authorizedDigest(agentB, ["c:x"])).toBe(dB);
    idx.upsert({ ...w, revision: 1 });
    expect(idx.authorizedDigest(agentA, ["c:x"])).not.toBe(dA);
    expect(idx.authorizedDigest(agentB, ["c:x"])).not.toBe(dB);
    const dB2 = idx.authorizedDigest(agentB, ["c:x"]);
    idx.upsert(entry("spiffe://td/a2", agentA));
    expect(idx.authorizedDigest(agentB, ["c:x"])).toBe(dB2);
    // Without the alias's selector B holds nothing: the empty answer's digest.
    expect(idx.authorizedDigest(agentB, [])).toBe(idx.authorizedDigest("spiffe://td/spire/agent/none", []));
  });

  it("forget drops a gone agent: it is no longer named, and the alias traversal only it used is freed", () => {
    const cluster = entry("spiffe://td/cluster/x", SERVER, ["c:x"]);
    const idx = new EntryIndex(SERVER, [cluster]);
    const named: string[] = [];
    idx.onInvalidate((a) => named.push(...a));
    idx.authorizedEntries(agentA, ["c:x"]);
    expect(idx.caches(agentA)).toBe(true);
    idx.forget(agentA);
    expect(idx.caches(agentA)).toBe(false);
    idx.upsert(entry("spiffe://td/x/w", cluster.spiffeId));
    idx.upsert(entry("spiffe://td/a", agentA));
    expect(named).toEqual([]);
    // Asked again (it attested again): cached and followed again.
    expect(ids(idx.authorizedEntries(agentA, ["c:x"]))).toEqual(["spiffe://td/a", "spiffe://td/x/w"]);
    idx.upsert(entry("spiffe://td/x/w2", cluster.spiffeId));
    expect(named).toEqual([agentA]);
  });

  it("a throwing listener is reported; the change, the answers and the other listeners are unaffected", () => {
    const errors: unknown[] = [];
    const web = entry("spiffe://td/web", agentA);
    const idx = new EntryIndex(SERVER, [web], { onListenerError: (e) => errors.push(e) });
    const seen: string[][] = [];
    idx.onInvalidate(() => {
      throw new Error("boom");
    });
    idx.onInvalidate((a) => seen.push([...a]));
    expect(idx.authorizedEntries(agentA, [])).toEqual([web]);
    expect(() => idx.delete(web.id)).not.toThrow();
    expect(seen).toEqual([[agentA]]);
    expect(errors.map(String)).toEqual(["Error: boom"]);
    expect(idx.authorizedEntries(agentA, [])).toEqual([]);
    expect(idx.authorizedEntries(agentA, ["t:x"])).toEqual([]);
    expect(seen).toEqual([[agentA], [agentA]]);
    // Without the option: a process warning naming the index.
    const warn = vi.spyOn(process, "emitWarning").mockImplementation(() => undefined);
    try {
      const plain = new EntryIndex(SERVER, [web]);
      plain.onInvalidate(() => {
        throw new Error("boom");
      });
      plain.authorizedEntries(agentA, []);
      plain.delete(web.id);
      expect(warn).toHaveBeenCalledTimes(1);
      expect(String(warn.mock.calls[0]?.[0])).toContain("entry index: an invalidation listener threw: boom");
    } finally {
      warn.mockRestore();
    }
  });

  it("a listener calling back into the index sees it updated, and names it raises are delivered after the current round", () => {
    const web = entry("spiffe://td/web", agentA);
    const db = entry("spiffe://td/db", agentB);
    const idx = new EntryIndex(SERVER, [web, db]);
    const order: string[] = [];
    const answers: string[][] = [];
    idx.onInvalidate((a) => {
      order.push(`1:${[...a].sort().join(",")}`);
      if (a.has(agentA)) {
        answers.push(ids(idx.authorizedEntries(agentA, [])));
        // A change made from a listener: its names come after this round, not nested in it.
        if (!idx.get("moved")) idx.upsert({ ...entry("spiffe://td/moved", agentB), id: "moved" });
      }
    });
    idx.onInvalidate((a) => order.push(`2:${[...a].sort().join(",")}`));
    idx.authorizedEntries(agentA, []);
    idx.authorizedEntries(agentB, []);
    idx.upsert({ ...web, spiffeId: "spiffe://td/web2", revision: 1 });
    expect(answers).toEqual([["spiffe://td/web2"]]);
    expect(order).toEqual([`1:${agentA}`, `2:${agentA}`, `1:${agentB}`, `2:${agentB}`]);
  });

  it("listeners that keep asking with other selectors stop after a bounded number of rounds, reported", () => {
    const errors: unknown[] = [];
    const idx = new EntryIndex(SERVER, [], { onListenerError: (e) => errors.push(e) });
    idx.authorizedEntries(agentA, []);
    idx.onInvalidate(() => void idx.authorizedEntries(agentA, []));
    idx.onInvalidate(() => void idx.authorizedEntries(agentA, ["t:a"]));
    expect(() => idx.authorizedEntries(agentA, ["t:a"])).not.toThrow();
    expect(errors.map(String)).toEqual([expect.stringContaining("invalidation listeners kept changing the index")]);
  });
});
