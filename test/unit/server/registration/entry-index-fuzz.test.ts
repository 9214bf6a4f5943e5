/**
 * Random sequences of entry changes, API calls and watchers (a consumer
 * holding an agent's answer for some selectors, re-asking each time the
 * agent is named): after every step each held answer equals a freshly built
 * index's, compared as sets. Once with the consumer re-asking after the
 * change (as the change notifier does, on its tick), once with a listener
 * that re-asks synchronously from inside the naming (discouraged, but it
 * must not leave a stale answer). From the review of issue 14's per-agent
 * invalidation.
 */
import { describe, expect, it } from "vitest";
import { EntryIndex, type IndexedEntry } from "../../../../server/registration/entry-index.js";

/** xorshift32: the same sequence on every run. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}
const S = "S";
const AGENTS = ["A1", "A2", "A3", "S", "N1"];
const NODES = ["S", "A1", "A2", "A3", "N1", "N2", "N3", "N4"];
const SELS = ["t:a", "t:b", "t:c"];
const key = (list: readonly IndexedEntry[]) => list.map((e) => `${e.id}@${e.revision}@${e.parentId}>${e.spiffeId}`).sort().join(",");

function run(seed: number, reentrant: boolean): void {
  const r = rng(seed);
  const pick = <T>(a: readonly T[]) => a[Math.floor(r() * a.length)] as T;
  const subset = () => {
    const s = SELS.filter(() => r() < 0.5);
    if (s.length > 0 && r() < 0.2) s.push(s[0] as string); // a repeated selector
    return s;
  };
  const index = new EntryIndex<IndexedEntry>(S, [], { onListenerError: (e) => { throw e; } });
  const held = new Map<string, { sels: string[]; k: string }>();
  const named = new Set<string>();
  index.onInvalidate((agents) => {
    for (const a of agents) {
      if (!reentrant) named.add(a);
      else {
        const h = held.get(a);
        if (h) h.k = key(index.authorizedEntries(a, h.sels));
      }
    }
  });
  let rev = 0;
  const agentSels = new Map(AGENTS.map((a) => [a, subset()]));
  const log: string[] = [];
  const fresh = (a: string, sels: string[]) => key(new EntryIndex(S, index.ids().map((id) => index.get(id) as IndexedEntry)).authorizedEntries(a, sels));
  const change = () => {
    const id = `e${Math.floor(r() * 12)}`;
    if (r() < 0.25) {
      log.push(`delete ${id}`);
      index.delete(id);
      return;
    }
    const e = { id, parentId: r() < 0.3 ? S : pick(NODES), spiffeId: pick(NODES), selectors: r() < 0.8 ? subset() : [], revision: ++rev };
    log.push(`upsert ${JSON.stringify(e)}`);
    index.upsert(e);
  };
  for (let step = 0; step < 60; step++) {
    const op = r();
    if (op < 0.5) change();
    else if (op < 0.58) {
      const n = 1 + Math.floor(r() * 4); // a reconcile's batch
      for (let i = 0; i < n; i++) change();
    } else if (op < 0.66) {
      const a = pick(AGENTS);
      agentSels.set(a, subset());
      log.push(`agent ${a} selectors ${agentSels.get(a)}`);
    } else if (op < 0.72) {
      const a = pick(AGENTS);
      log.push(`forget ${a}`);
      held.delete(a);
      index.forget(a);
    } else if (op < 0.86) {
      const a = pick(AGENTS);
      const s = agentSels.get(a) as string[];
      log.push(`api ${a} ${s}`);
      expect(key(index.authorizedEntries(a, s)), log.join("\n")).toBe(fresh(a, s));
    } else {
      // A watcher, possibly with stale selectors.
      const a = pick(AGENTS);
      const s = r() < 0.5 ? (agentSels.get(a) as string[]) : subset();
      log.push(`watch ${a} ${s}`);
      const h = { sels: s, k: "" };
      held.set(a, h);
      h.k = key(index.authorizedEntries(a, s));
    }
    for (let round = 0; named.size > 0 && round < 10; round++) {
      const names = [...named];
      named.clear();
      for (const a of names) {
        const h = held.get(a);
        if (h) h.k = key(index.authorizedEntries(a, h.sels));
      }
    }
    for (const [a, h] of held) expect(h.k, `missed naming of ${a} (seed ${seed})\n${log.join("\n")}`).toBe(fresh(a, h.sels));
  }
}

describe("EntryIndex under random changes", () => {
  it("every held answer equals a fresh index's when the consumer re-asks after each naming", () => {
    for (let seed = 1; seed <= 400; seed++) run(seed, false);
  });
  it("and when a listener re-asks from inside the naming", () => {
    for (let seed = 1; seed <= 400; seed++) run(seed, true);
  });
});
