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
});
