/**
 * Issuance records split into what a batch shares and what each credential
 * has of its own. Most SVIDs an agent asks for repeat the same context (kind,
 * SPIFFE ID, entry, agent, CA key, selectors, requester): the log stores each
 * context once and one small row per credential, so the hot path validates and
 * writes a context only the first time it is seen.
 */
import type { IssuanceInput, IssuanceKind } from "./issuance.js";
import { checkSerialHex, checkTime, checkNonEmptyText, invalid, normalizeIssuance, type NormalizedIssuance } from "./validate.js";

/** The shared part of issuance records, normalised as stored (`""` where a field is absent). */
export interface IssuanceContext {
  /** Identity of the context: equal keys mean equal fields. */
  readonly key: string;
  readonly kind: IssuanceKind;
  readonly spiffeId: string;
  /** `""` when the credential has no entry. */
  readonly entryId: string;
  /** `""` when no agent asked for it. */
  readonly agentId: string;
  readonly caKeyId: string;
  /** JSON array of canonical selectors. */
  readonly selectors: string;
  readonly requestedBy: string;
  /** JSON array of audiences for a `jwt-svid`, `""` otherwise. */
  readonly audience: string;
}

/** Fields per row in {@link NormalizedIssuanceBatch.rows}. */
export const ISSUANCE_ROW_WIDTH = 6;

/**
 * A validated batch: distinct contexts, and per record
 * `[contextIndex, serial, notBefore, notAfter, issuedAt, jwtId]` laid out flat
 * (cheap to copy to the writer thread).
 */
export interface NormalizedIssuanceBatch {
  readonly contexts: IssuanceContext[];
  readonly rows: (string | number | null)[];
}

/**
 * Contexts remembered at most; past this the cache starts over. A context
 * costs about 500 bytes of heap (its key, shared with the datastore's context
 * ID cache, and its fields): an agent's SVIDs have one each.
 */
const MAX_CACHED_CONTEXTS = 50_000;

/**
 * Validates issuance records. A record whose context was validated before is
 * only checked for its own fields; any other record gets the full check, so
 * errors read the same either way. The cache is keyed by the record's context
 * fields as given, in the form of {@link IssuanceContext.key}: for a record
 * already in normal form (what the server's own issuer writes) that is the
 * context's key itself, so one string serves both.
 */
export class IssuanceNormalizer {
  readonly #contexts = new Map<string, IssuanceContext>();

  /** @throws SigilError `ERR_INVALID_ARGUMENT` naming the first bad record and field. */
  normalize(records: readonly IssuanceInput[]): NormalizedIssuanceBatch {
    const contexts: IssuanceContext[] = [];
    const indexOf = new Map<IssuanceContext, number>();
    const rows: (string | number | null)[] = [];
    records.forEach((r, i) => {
      const raw = rawContextKey(r);
      let ctx = raw === undefined ? undefined : this.#contexts.get(raw);
      let row: [string, number, number, number, string | null];
      if (ctx) {
        row = normalizeRow(r, i);
      } else {
        const n = normalizeIssuance(r, i);
        ctx = contextOf(n, r, raw);
        if (raw !== undefined) {
          if (this.#contexts.size >= MAX_CACHED_CONTEXTS) this.#contexts.clear();
          this.#contexts.set(raw, ctx);
        }
        row = [n.serial, n.notBefore, n.notAfter, n.issuedAt, n.jwtId];
      }
      let at = indexOf.get(ctx);
      if (at === undefined) {
        at = contexts.push(ctx) - 1;
        indexOf.set(ctx, at);
      }
      rows.push(at, ...row);
    });
    return { contexts, rows };
  }
}

/** The key of a context's fields (stored hashed as the context's identity: its form must not change). */
function keyOf(kind: string, spiffeId: string, entryId: string, agentId: string, caKeyId: string, selectors: string, requestedBy: string, audience: string): string {
  return JSON.stringify([kind, spiffeId, entryId, agentId, caKeyId, selectors, requestedBy, audience]);
}

/** The context of a validated record; `raw` (its cache key) is reused as its key when equal, and the record's strings when unchanged. */
function contextOf(n: NormalizedIssuance, r: IssuanceInput, raw: string | undefined): IssuanceContext {
  const same = (given: unknown, normal: string): string => (given === normal ? (given as string) : normal);
  const entryId = n.entryId ?? "";
  const agentId = n.agentId ?? "";
  const audience = n.audience ?? "";
  const key = keyOf(n.kind, n.spiffeId, entryId, agentId, n.caKeyId, n.selectors, n.requestedBy, audience);
  // One literal in one order: its properties stay in the object (a spread gave each context a separate property array).
  return {
    key: key === raw ? raw : key,
    kind: n.kind,
    spiffeId: same(r.spiffeId, n.spiffeId),
    entryId: same(r.entryId, entryId),
    agentId: same(r.agentId, agentId),
    caKeyId: same(r.caKeyId, n.caKeyId),
    selectors: n.selectors,
    requestedBy: same(r.requestedBy, n.requestedBy),
    audience,
  };
}

/**
 * The record's context fields as given, encoded like {@link IssuanceContext.key}
 * (so for a record in normal form it is that key), or undefined when any is
 * not plain text or is an empty ID (such a record is always checked in full).
 * The encoding is one-to-one on the records it accepts: an absent ID (null)
 * is encoded as "", so a given "" is refused here, and an audience list's
 * JSON is never "", the encoding of no audience.
 */
function rawContextKey(r: IssuanceInput): string | undefined {
  if (r === null || typeof r !== "object") return undefined;
  const { kind, spiffeId, entryId, agentId, caKeyId, requestedBy, selectors, audience } = r;
  if (typeof kind !== "string" || typeof spiffeId !== "string" || typeof caKeyId !== "string" || typeof requestedBy !== "string") return undefined;
  if ((entryId !== null && (typeof entryId !== "string" || entryId === "")) || (agentId !== null && (typeof agentId !== "string" || agentId === ""))) return undefined;
  if (!Array.isArray(selectors) || !selectors.every((s) => typeof s === "string")) return undefined;
  // A non-JWT record must not carry an audience: `undefined` (absent) stays distinct from any list.
  if (audience !== undefined && !(Array.isArray(audience) && audience.every((a) => typeof a === "string"))) return undefined;
  return keyOf(kind, spiffeId, entryId ?? "", agentId ?? "", caKeyId, JSON.stringify(selectors), requestedBy, audience === undefined ? "" : JSON.stringify(audience));
}

/** The per-credential checks of `normalizeIssuance`, in its order. */
function normalizeRow(input: IssuanceInput, index: number): [string, number, number, number, string | null] {
  const at = `issuance[${index}]`;
  const notBefore = checkTime(`${at} notBefore`, input.notBefore);
  const notAfter = checkTime(`${at} notAfter`, input.notAfter);
  if (notAfter <= notBefore) throw invalid(`${at} notAfter must be after notBefore`);
  let jwtId: string | null = null;
  if (input.kind === "jwt-svid") {
    jwtId = input.jwtId === undefined || input.jwtId === null ? null : checkNonEmptyText(`${at} jwtId`, input.jwtId, 256);
  } else if (input.jwtId !== undefined && input.jwtId !== null) {
    throw invalid(`${at} jwtId and audience apply to jwt-svid records only (kind is ${input.kind})`);
  }
  return [checkSerialHex(`${at} serial`, input.serial), notBefore, notAfter, checkTime(`${at} issuedAt`, input.issuedAt), jwtId];
}
