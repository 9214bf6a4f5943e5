/**
 * Kubernetes label selectors (`metav1.LabelSelector`) as `ClusterSPIFFEID`
 * `podSelector` and `namespaceSelector` use them: `matchLabels` and
 * `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`, all ANDed.
 * A missing or empty selector selects everything, as in Kubernetes.
 */
import { SigilError } from "../../spiffe/errors.js";

/** One `matchExpressions` item. */
export interface LabelSelectorRequirement {
  readonly key: string;
  readonly operator: string;
  readonly values?: readonly string[] | undefined;
}

/** A `metav1.LabelSelector` as it arrives in a resource. */
export interface LabelSelector {
  readonly matchLabels?: Readonly<Record<string, string>> | undefined;
  readonly matchExpressions?: readonly LabelSelectorRequirement[] | undefined;
}

/** A checked selector: a predicate over labels. */
export type LabelMatcher = (labels: Readonly<Record<string, string>> | undefined) => boolean;

function invalid(path: string, message: string): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `${path}: ${message}`);
}

/**
 * Checks a selector and returns its predicate. `path` prefixes messages
 * (`spec.podSelector`).
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT`: an unknown operator, `In`/`NotIn`
 * without values, `Exists`/`DoesNotExist` with values, a non-string value.
 */
export function compileLabelSelector(selector: LabelSelector | undefined | null, path: string): LabelMatcher {
  if (selector === undefined || selector === null) return () => true;
  if (typeof selector !== "object") throw invalid(path, "must be an object with matchLabels and/or matchExpressions");
  const tests: LabelMatcher[] = [];
  for (const [key, value] of Object.entries(selector.matchLabels ?? {})) {
    if (typeof value !== "string") throw invalid(`${path}.matchLabels.${key}`, "must be a string");
    tests.push((labels) => labels !== undefined && Object.hasOwn(labels, key) && labels[key] === value);
  }
  const expressions = selector.matchExpressions ?? [];
  if (!Array.isArray(expressions)) throw invalid(`${path}.matchExpressions`, "must be a list");
  expressions.forEach((r: LabelSelectorRequirement, i) => {
    const at = `${path}.matchExpressions[${i}]`;
    if (typeof r?.key !== "string" || r.key === "") throw invalid(`${at}.key`, "is required");
    const values = r.values ?? [];
    if (!Array.isArray(values) || values.some((v) => typeof v !== "string")) throw invalid(`${at}.values`, "must be a list of strings");
    const has = (labels: Readonly<Record<string, string>> | undefined): boolean => labels !== undefined && Object.hasOwn(labels, r.key);
    switch (r.operator) {
      case "In":
      case "NotIn": {
        if (values.length === 0) throw invalid(`${at}.values`, `must not be empty for operator ${r.operator}`);
        const set = new Set(values);
        const inSet = (labels: Readonly<Record<string, string>> | undefined): boolean => has(labels) && set.has(labels?.[r.key] as string);
        tests.push(r.operator === "In" ? inSet : (labels) => !inSet(labels));
        break;
      }
      case "Exists":
      case "DoesNotExist":
        if (values.length !== 0) throw invalid(`${at}.values`, `must be empty for operator ${r.operator}`);
        tests.push(r.operator === "Exists" ? has : (labels) => !has(labels));
        break;
      default:
        throw invalid(`${at}.operator`, `${JSON.stringify(r.operator)} is not one of In, NotIn, Exists, DoesNotExist`);
    }
  });
  return (labels) => tests.every((t) => t(labels));
}
