import { describe, expect, it } from "vitest";
import {
  compareSelectors,
  formatSelector,
  makeSelector,
  MAX_SELECTOR_VALUE_BYTES,
  normalizeSelectors,
  parseSelector,
  selectorKey,
  selectorsSubsetOf,
} from "../../../common/selector.js";
import { isSigilError } from "../../../spiffe/errors.js";

const sel = (s: string) => parseSelector(s);

function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    expect(isSigilError(e, "ERR_INVALID_ARGUMENT")).toBe(true);
    return e as Error;
  }
  throw new Error("expected an error");
}

describe("parseSelector", () => {
  it("splits at the first colon: the value may contain colons", () => {
    const s = sel("k8s:pod-label:app:web");
    expect(s.type).toBe("k8s");
    expect(s.value).toBe("pod-label:app:web");
    expect(formatSelector(s)).toBe("k8s:pod-label:app:web");
    expect(String(s)).toBe("k8s:pod-label:app:web");
    expect(JSON.stringify([s])).toBe('["k8s:pod-label:app:web"]');
  });

  it("accepts a value of exactly the maximum size and non-ASCII values", () => {
    expect(sel(`docker:${"x".repeat(MAX_SELECTOR_VALUE_BYTES)}`).value).toHaveLength(MAX_SELECTOR_VALUE_BYTES);
    expect(sel("k8s:ns:prodé").value).toBe("ns:prodé");
  });

  it.each([
    ["unix", /selector: "unix" has no value \(expected type:value\)/],
    ["unix:", /selector: "unix" has no value/],
    [":uid:1000", /has an empty type/],
    ["Unix:uid:1", /type "Unix" may contain only a-z 0-9 _/],
    ["un-ix:uid:1", /may contain only a-z 0-9 _/],
    ["unix:uid:\u0000", /control character U\+0000 at offset 4/],
    ["unix:uid\n1", /control character U\+000a/],
    ["unix:uid:\u009b", /control character U\+009b/],
    [`unix:${"x".repeat(MAX_SELECTOR_VALUE_BYTES + 1)}`, /longer than 1024 bytes \(1025\)/],
    [`unix:${"é".repeat(513)}`, /longer than 1024 bytes \(1026\)/],
    [`${"a".repeat(65)}:v`, /longer than 64 characters/],
  ])("refuses %j naming the problem", (input, msg) => {
    expect(errorOf(() => parseSelector(input)).message).toMatch(msg);
  });

  it("refuses non-strings", () => {
    expect(errorOf(() => parseSelector(42 as unknown as string)).message).toMatch(/not a string/);
  });

  it("makeSelector applies the same rules as parseSelector", () => {
    expect(makeSelector("unix", "uid:0").equals(sel("unix:uid:0"))).toBe(true);
    expect(errorOf(() => makeSelector("unix", "")).message).toMatch(/"unix" has no value/);
  });
});

describe("selector sets", () => {
  it("selectorKey is equal exactly when selectors are equal", () => {
    expect(selectorKey(sel("a:b:c"))).toBe(selectorKey(sel("a:b:c")));
    // "a:b" + ":c" vs "a" + "b:c" cannot collide: the type has no colon.
    expect(selectorKey(sel("a:b:c"))).not.toBe(selectorKey(sel("a:bc")));
    expect(new Set([sel("x:1"), sel("x:1"), sel("x:2")].map(selectorKey)).size).toBe(2);
  });

  it("normalizeSelectors sorts by type then value and drops duplicates", () => {
    const out = normalizeSelectors([sel("unix:uid:2"), sel("k8s:ns:a"), sel("unix:uid:1"), sel("unix:uid:2")]);
    expect(out.map(formatSelector)).toEqual(["k8s:ns:a", "unix:uid:1", "unix:uid:2"]);
    expect(compareSelectors(sel("a:x"), sel("a:x"))).toBe(0);
  });

  it("selectorsSubsetOf: an entry matches when all its selectors are among the workload's", () => {
    const workload = [sel("unix:uid:1000"), sel("unix:gid:1000"), sel("k8s:ns:prod")];
    expect(selectorsSubsetOf([sel("unix:uid:1000")], workload)).toBe(true);
    expect(selectorsSubsetOf([sel("unix:uid:1000"), sel("k8s:ns:prod")], workload)).toBe(true);
    expect(selectorsSubsetOf([sel("unix:uid:1000"), sel("k8s:ns:dev")], workload)).toBe(false);
    expect(selectorsSubsetOf([sel("unix:uid:1000")], [])).toBe(false);
    // Compared by value, not object identity.
    expect(selectorsSubsetOf([parseSelector("k8s:ns:prod")], [parseSelector("k8s:ns:prod")])).toBe(true);
  });
});
