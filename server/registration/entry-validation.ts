/**
 * Validation of registration entries arriving over the admin API: turns the
 * wire form into the datastore's `EntryInput`, or refuses it with a message
 * naming the field (`entries[2].selectors[0]: selector "unix" has no value`).
 * The datastore re-checks shapes (defence in depth); this layer adds the rules
 * that need the server's context: own trust domain, the reserved `/spire`
 * namespace, known parents, TTL limits.
 */
import { checkNotReserved } from "../../common/reserved-ids.js";
import { parseSelector, type Selector } from "../../common/selector.js";
import { SigilError, isSigilError } from "../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain, type TrustDomain } from "../../spiffe/id.js";
import type { Entry as WireEntry } from "../../proto/gen/sigil/types/v1/types_pb.js";
import type { EntryInput } from "../datastore/entry.js";

/** Longest hint accepted (WAPI-40). */
export const MAX_HINT_BYTES = 1024;
/** Longest TTL accepted for an entry, in seconds (10 years: anything longer is a typo). */
export const MAX_ENTRY_TTL_SECONDS = 10 * 365 * 24 * 3600;

const DNS_LABEL = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;

function invalid(path: string, message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `${path}: ${message}`, cause === undefined ? undefined : { cause });
}

/** Checks a DNS SAN: labels of letters, digits and hyphens; a leading `*.` wildcard label is allowed. */
export function checkDnsName(name: string, path: string): void {
  if (name.length === 0 || name.length > 253) throw invalid(path, `DNS name must be 1-253 characters`);
  const labels = name.split(".");
  labels.forEach((label, i) => {
    if (i === 0 && label === "*" && labels.length > 1) return;
    if (!DNS_LABEL.test(label)) throw invalid(path, `${JSON.stringify(name)} is not a valid DNS name (label ${i + 1} ${JSON.stringify(label)})`);
  });
}

/** Resolves whether a parent ID names something that can deliver SVIDs. */
export interface ParentResolver {
  /** True when `id` is an attested agent, an entry's SPIFFE ID, or the agent ID of an unused join token. */
  parentExists(id: string): Promise<boolean>;
}

/**
 * Converts and validates one wire entry. `path` prefixes messages (`entries[0]`).
 *
 * @throws SigilError ERR_INVALID_ARGUMENT (malformed) or ERR_NOT_FOUND (unknown parent).
 */
export async function validateWireEntry(
  e: WireEntry,
  path: string,
  ctx: { trustDomain: TrustDomain; serverId: string; parents: ParentResolver },
): Promise<EntryInput> {
  const wrap = <T>(field: string, fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      if (isSigilError(err) && err.message.startsWith(`${path}.`)) throw err;
      throw invalid(`${path}.${field}`, isSigilError(err) ? err.message : String(err), err);
    }
  };
  if (!e.spiffeId) throw invalid(`${path}.spiffe_id`, "is required");
  const spiffeId = wrap("spiffe_id", () => parseSpiffeId(e.spiffeId));
  if (!spiffeId.memberOf(ctx.trustDomain)) {
    throw invalid(`${path}.spiffe_id`, `${spiffeId} is not in trust domain ${ctx.trustDomain.name}`);
  }
  if (spiffeId.isTrustDomainId()) throw invalid(`${path}.spiffe_id`, "must have a path (the trust domain's own ID is not a workload identity)");
  // The entry's own ID only: a parent under /spire/agent/ is the normal case.
  wrap("spiffe_id", () => checkNotReserved(spiffeId));
  if (!e.parentId) throw invalid(`${path}.parent_id`, "is required");
  const parentId = wrap("parent_id", () => parseSpiffeId(e.parentId));
  if (!parentId.memberOf(ctx.trustDomain)) throw invalid(`${path}.parent_id`, `${parentId} is not in trust domain ${ctx.trustDomain.name}`);
  if (e.selectors.length === 0) throw invalid(`${path}.selectors`, "at least one selector is required");
  const selectors: Selector[] = e.selectors.map((s, i) => wrap(`selectors[${i}]`, () => parseSelector(`${s.type}:${s.value}`)));
  for (const [field, v] of [["x509_svid_ttl", e.x509SvidTtl], ["jwt_svid_ttl", e.jwtSvidTtl]] as const) {
    if (!Number.isInteger(v) || v < 0) throw invalid(`${path}.${field}`, `must be a non-negative number of seconds, got ${v}`);
    if (v > MAX_ENTRY_TTL_SECONDS) throw invalid(`${path}.${field}`, `${v}s is longer than the maximum ${MAX_ENTRY_TTL_SECONDS}s`);
  }
  e.dnsNames.forEach((d, i) => checkDnsName(d, `${path}.dns_names[${i}]`));
  const federatesWith = e.federatesWith.map((td, i) => {
    const t = wrap(`federates_with[${i}]`, () => parseTrustDomain(td.startsWith("spiffe://") ? td.slice("spiffe://".length) : td));
    if (t.equals(ctx.trustDomain)) throw invalid(`${path}.federates_with[${i}]`, "cannot federate with the server's own trust domain");
    return t.name;
  });
  if (Buffer.byteLength(e.hint, "utf8") > MAX_HINT_BYTES) throw invalid(`${path}.hint`, `is longer than ${MAX_HINT_BYTES} bytes`);
  if (e.expiresAt < 0n) throw invalid(`${path}.expires_at`, "must be a unix time or 0");
  const parent = parentId.toString();
  if (parent !== ctx.serverId && !(await ctx.parents.parentExists(parent))) {
    throw new SigilError(
      "ERR_NOT_FOUND",
      `${path}.parent_id: ${parent} is unknown: it is not the server, an attested agent, a pending join token's agent, or another entry's SPIFFE ID`,
    );
  }
  return {
    ...(e.id ? { id: e.id } : {}),
    spiffeId: spiffeId.toString(),
    parentId: parent,
    selectors,
    x509SvidTtl: e.x509SvidTtl,
    jwtSvidTtl: e.jwtSvidTtl,
    dnsNames: [...e.dnsNames],
    federatesWith,
    admin: e.admin,
    downstream: e.downstream,
    hint: e.hint,
    expiresAt: e.expiresAt === 0n ? null : new Date(Number(e.expiresAt) * 1000),
  };
}
