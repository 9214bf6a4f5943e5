import { describe, expect, it } from "vitest";
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
});
