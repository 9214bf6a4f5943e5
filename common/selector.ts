/**
 * Selectors: the `type:value` facts an attestor states about a node or a
 * workload (`unix:uid:1000`, `k8s:ns:prod`). A registration entry applies to a
 * caller when every one of the entry's selectors is among the caller's.
 *
 * {@link Selector} is a validated value type: the only way to get one is
 * {@link parseSelector}, so holding one proves it is well formed.
 */
import { SigilError } from "../spiffe/errors.js";

/** Longest selector type, in characters (types are plugin names such as `k8s_psat`). */
export const MAX_SELECTOR_TYPE_LENGTH = 64;
/** Longest selector value, in UTF-8 bytes. */
export const MAX_SELECTOR_VALUE_BYTES = 1024;

const TYPE_RE = /^[a-z0-9_]+$/;
// C0 controls, DEL and C1 controls: never meaningful in a selector and unsafe in logs.
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;

function selectorError(message: string): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `selector: ${message}`);
}

function quote(s: string): string {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
}

/** A validated selector. Made only by {@link parseSelector}. */
export class Selector {
  /** The attestor-defined type, e.g. `unix`: `[a-z0-9_]+`. */
  readonly type: string;
  /** Everything after the first `:`, e.g. `uid:1000`; never empty. */
  readonly value: string;

  private constructor(type: string, value: string) {
    this.type = type;
    this.value = value;
  }

  /** @internal constructor for already-validated parts; use {@link parseSelector}. */
  static fromValidated(type: string, value: string): Selector {
    return new Selector(type, value);
  }

  /** The `type:value` form. */
  toString(): string {
    return formatSelector(this);
  }

  /** Serialises as the `type:value` form. */
  toJSON(): string {
    return formatSelector(this);
  }

  /** Equal when type and value are (case-sensitive). */
  equals(other: Selector): boolean {
    return this.type === other.type && this.value === other.value;
  }
}

/**
 * Parses `type:value`: the type is everything up to the first `:`, the value
 * the rest (it may itself contain `:`).
 *
 * @example
 * ```ts
 * const s = parseSelector("k8s:ns:prod");
 * s.type  // "k8s"
 * s.value // "ns:prod"
 * ```
 * @throws SigilError `ERR_INVALID_ARGUMENT`, e.g. `selector: "unix" has no value (expected type:value)`.
 */
export function parseSelector(s: string): Selector {
  if (typeof s !== "string") throw selectorError("not a string");
  const colon = s.indexOf(":");
  if (colon < 0) throw selectorError(`${quote(s)} has no value (expected type:value)`);
  const type = s.slice(0, colon);
  const value = s.slice(colon + 1);
  return makeSelector(type, value);
}

/**
 * Builds a selector from its two parts, under the same rules as
 * {@link parseSelector}. For attestors that produce type and value separately.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming what is wrong.
 */
export function makeSelector(type: string, value: string): Selector {
  if (typeof type !== "string" || typeof value !== "string") throw selectorError("type and value must be strings");
  if (type.length === 0) throw selectorError(`${quote(`${type}:${value}`)} has an empty type (expected type:value)`);
  if (type.length > MAX_SELECTOR_TYPE_LENGTH) {
    throw selectorError(`type ${quote(type)} is longer than ${MAX_SELECTOR_TYPE_LENGTH} characters`);
  }
  if (!TYPE_RE.test(type)) throw selectorError(`type ${quote(type)} may contain only a-z 0-9 _`);
  if (value.length === 0) throw selectorError(`${quote(type)} has no value (expected type:value)`);
  const bytes = Buffer.byteLength(value, "utf8");
  if (bytes > MAX_SELECTOR_VALUE_BYTES) {
    throw selectorError(`value of ${quote(type)} is longer than ${MAX_SELECTOR_VALUE_BYTES} bytes (${bytes})`);
  }
  const ctl = CONTROL_RE.exec(value);
  if (ctl) {
    const code = (ctl[0].codePointAt(0) ?? 0).toString(16).padStart(4, "0");
    throw selectorError(`value of ${quote(type)} contains control character U+${code} at offset ${ctl.index}`);
  }
  return Selector.fromValidated(type, value);
}

/** The `type:value` text of a selector: the inverse of {@link parseSelector}. */
export function formatSelector(s: Selector): string {
  return `${s.type}:${s.value}`;
}

/**
 * A string key identifying the selector, for `Set`/`Map` membership. Two
 * selectors have the same key exactly when they are equal (the type cannot
 * contain `:`, so `type:value` is unambiguous).
 */
export function selectorKey(s: Selector): string {
  return formatSelector(s);
}

/** Orders selectors by type, then value (code-unit order): the canonical order of a selector set. */
export function compareSelectors(a: Selector, b: Selector): number {
  if (a.type !== b.type) return a.type < b.type ? -1 : 1;
  if (a.value !== b.value) return a.value < b.value ? -1 : 1;
  return 0;
}

/** The selectors sorted canonically with duplicates removed. */
export function normalizeSelectors(selectors: Iterable<Selector>): Selector[] {
  const byKey = new Map<string, Selector>();
  for (const s of selectors) byKey.set(selectorKey(s), s);
  return [...byKey.values()].sort(compareSelectors);
}

/**
 * True when every selector of `entrySelectors` is among `workloadSelectors`:
 * the rule deciding whether an entry applies to a workload (or a node alias to
 * a node). An empty `entrySelectors` is a subset of anything, as in set
 * theory; the datastore refuses entries without selectors, so that case never
 * grants anything in practice.
 */
export function selectorsSubsetOf(entrySelectors: Iterable<Selector>, workloadSelectors: Iterable<Selector>): boolean {
  const have = new Set<string>();
  for (const s of workloadSelectors) have.add(selectorKey(s));
  for (const s of entrySelectors) if (!have.has(selectorKey(s))) return false;
  return true;
}
