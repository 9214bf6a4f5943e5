import { describe, expect, it } from "vitest";
import { StringSetMap } from "../../../../server/registration/string-set-map.js";

describe("StringSetMap", () => {
  it("adds members once each, in insertion order", () => {
    const m = new StringSetMap();
    m.add("k", "a");
    m.add("k", "a");
    expect(m.get("k")).toEqual(["a"]);
    m.add("k", "b");
    m.add("k", "a");
    m.add("k", "c");
    expect(m.get("k")).toEqual(["a", "b", "c"]);
    expect(m.get("other")).toEqual([]);
    expect(m.size).toBe(1);
  });

  it("says when a delete emptied the key, and only then", () => {
    const m = new StringSetMap();
    expect(m.delete("k", "a")).toBe(false);
    m.add("k", "a");
    expect(m.delete("k", "b")).toBe(false);
    m.add("k", "b");
    expect(m.delete("k", "zzz")).toBe(false);
    expect(m.delete("k", "a")).toBe(false);
    expect(m.get("k")).toEqual(["b"]);
    m.add("k", "a");
    expect(m.get("k")).toEqual(["b", "a"]);
    expect(m.delete("k", "a")).toBe(false);
    expect(m.delete("k", "b")).toBe(true);
    expect(m.get("k")).toEqual([]);
    expect(m.size).toBe(0);
    expect(m.delete("k", "b")).toBe(false);
  });

  it("hands out a copy: changing the map while going through it is safe", () => {
    const m = new StringSetMap();
    for (const r of ["a", "b", "c"]) m.add("k", r);
    const seen: string[] = [];
    for (const r of m.get("k")) {
      seen.push(r);
      m.delete("k", r);
    }
    expect(seen).toEqual(["a", "b", "c"]);
    expect(m.size).toBe(0);
  });
});
