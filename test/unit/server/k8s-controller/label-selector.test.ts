/**
 * Kubernetes label selectors as ClusterSPIFFEID podSelector and
 * namespaceSelector use them: matchLabels and the four operators, ANDed; an
 * absent or empty selector selects everything; malformed ones are refused.
 */
import { describe, expect, it } from "vitest";
import { compileLabelSelector, type LabelSelector } from "../../../../server/k8s-controller/label-selector.js";
import { isSigilError } from "../../../../spiffe/errors.js";

const api = { app: "api", tier: "back" };
const web = { app: "web", tier: "front" };
const bare = {};

describe("compileLabelSelector", () => {
  it.each<[string, LabelSelector | undefined, [boolean, boolean, boolean, boolean]]>([
    ["absent", undefined, [true, true, true, true]],
    ["empty", {}, [true, true, true, true]],
    ["matchLabels", { matchLabels: { app: "api" } }, [true, false, false, false]],
    ["matchLabels, two keys", { matchLabels: { app: "api", tier: "front" } }, [false, false, false, false]],
    ["In", { matchExpressions: [{ key: "app", operator: "In", values: ["api", "web"] }] }, [true, true, false, false]],
    ["NotIn (a pod without the key matches)", { matchExpressions: [{ key: "app", operator: "NotIn", values: ["api"] }] }, [false, true, true, true]],
    ["Exists", { matchExpressions: [{ key: "tier", operator: "Exists" }] }, [true, true, false, false]],
    ["DoesNotExist", { matchExpressions: [{ key: "tier", operator: "DoesNotExist" }] }, [false, false, true, true]],
    ["matchLabels AND expressions", { matchLabels: { tier: "back" }, matchExpressions: [{ key: "app", operator: "In", values: ["api", "web"] }] }, [true, false, false, false]],
  ])("%s", (_name, selector, expected) => {
    const m = compileLabelSelector(selector, "spec.podSelector");
    expect([m(api), m(web), m(bare), m(undefined)]).toEqual(expected);
  });

  it.each<[LabelSelector, RegExp]>([
    [{ matchExpressions: [{ key: "app", operator: "Equals", values: ["a"] }] }, /spec\.podSelector\.matchExpressions\[0\]\.operator: "Equals" is not one of In, NotIn, Exists, DoesNotExist/],
    [{ matchExpressions: [{ key: "app", operator: "In", values: [] }] }, /matchExpressions\[0\]\.values: must not be empty for operator In/],
    [{ matchExpressions: [{ key: "app", operator: "NotIn" }] }, /values: must not be empty for operator NotIn/],
    [{ matchExpressions: [{ key: "app", operator: "Exists", values: ["x"] }] }, /values: must be empty for operator Exists/],
    [{ matchExpressions: [{ key: "", operator: "Exists" }] }, /matchExpressions\[0\]\.key: is required/],
    [{ matchLabels: { app: 1 as unknown as string } }, /spec\.podSelector\.matchLabels\.app: must be a string/],
  ])("refuses %j", (selector, message) => {
    let err: unknown;
    try {
      compileLabelSelector(selector, "spec.podSelector");
    } catch (e) {
      err = e;
    }
    expect(isSigilError(err, "ERR_INVALID_ARGUMENT")).toBe(true);
    expect((err as Error).message).toMatch(message);
  });
});
