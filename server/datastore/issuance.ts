/**
 * The issuance log: one record per credential the server signs, saying what
 * went into it (who asked, for which entry and selectors, with which CA key,
 * when, valid for how long). It answers "why does this workload have this
 * identity" and "which credentials are still in use".
 *
 * Records are append-only (pruned only once expired) and are not part of the
 * change feed: they are written on the hot issuance path, in batches.
 */
import { SigilError } from "../../spiffe/errors.js";
import type { PageRequest } from "./page.js";

/** What kind of credential was issued. */
export type IssuanceKind = "x509-svid" | "jwt-svid" | "agent-svid";

/** Every {@link IssuanceKind}. */
export const ISSUANCE_KINDS: readonly IssuanceKind[] = ["x509-svid", "jwt-svid", "agent-svid"];

/** Most records one `recordIssuances` call accepts. */
export const MAX_ISSUANCE_BATCH = 10_000;

/** One recorded issuance, as stored (normalised). */
export interface IssuanceRecord {
  /**
   * Serial number: lowercase hex without leading zeros (`"0"` for zero). For
   * a JWT-SVID, whatever unique hex identifier the issuer assigned.
   */
  readonly serial: string;
  readonly kind: IssuanceKind;
  /** The SPIFFE ID the credential asserts. */
  readonly spiffeId: string;
  /** The registration entry it was issued for; `null` when none (admin mints, agent SVIDs). */
  readonly entryId: string | null;
  /** The agent that requested it; `null` for admin mints. */
  readonly agentId: string | null;
  /** The key manager's ID of the signing key. */
  readonly caKeyId: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly issuedAt: Date;
  /** The entry's selectors at issue time, canonical `type:value`, sorted and de-duplicated. */
  readonly selectors: readonly string[];
  /** Who asked, as `<kind>:<principal>`, e.g. `agent:spiffe://example.org/spire/agent/x`, `admin:local`. */
  readonly requestedBy: string;
  /** JWT `jti`; present (possibly `null`) on `jwt-svid` records only. */
  readonly jwtId?: string | null;
  /** JWT audience; present on `jwt-svid` records only. */
  readonly audience?: readonly string[];
}

/**
 * What a caller gives to record an issuance: every field of
 * {@link IssuanceRecord}. `jwtId` and `audience` are accepted for `jwt-svid`
 * only, and a `jwt-svid` needs a non-empty `audience`.
 */
export interface IssuanceInput {
  readonly serial: string;
  readonly kind: IssuanceKind;
  readonly spiffeId: string;
  readonly entryId: string | null;
  readonly agentId: string | null;
  readonly caKeyId: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly issuedAt: Date;
  readonly selectors: readonly string[];
  readonly requestedBy: string;
  readonly jwtId?: string | null | undefined;
  readonly audience?: readonly string[] | undefined;
}

/** Arguments of `Datastore.listIssuances`; every given condition must hold. */
export interface ListIssuancesRequest extends PageRequest {
  readonly spiffeId?: string;
  readonly entryId?: string;
  readonly agentId?: string;
  /** Any hex spelling; compared in canonical form. */
  readonly serial?: string;
  /** Only credentials valid at this instant: `notBefore ≤ liveAt < notAfter`. */
  readonly liveAt?: Date;
}

/** Arguments of `Datastore.issuanceInventory`. */
export interface IssuanceInventoryRequest {
  /** The CA key (key manager ID, as recorded in `caKeyId`) the credentials chain to. */
  readonly caKeyId: string;
  /** Credentials with `notAfter` after this instant are unexpired. */
  readonly now: Date;
  /** Most credentials to list in `svids` (soonest expiry first); 0 for counts only. Default 100, at most 10,000. */
  readonly limit?: number | undefined;
  /**
   * Only count: `live` is filled, `agents`, `spiffeIds` and `svids` are empty.
   * One `COUNT(*)` in the database instead of a row per agent and SPIFFE ID
   * folded in JavaScript (the `sigil_ca_live_svids` gauge: at 100,000 live
   * SVIDs the fold held the event loop for 200–300 ms every 10 s).
   */
  readonly countOnly?: boolean | undefined;
}

/** One live credential in an {@link IssuanceInventory}. */
export interface InventorySvid {
  readonly serial: string;
  readonly kind: IssuanceKind;
  readonly spiffeId: string;
  readonly entryId: string | null;
  readonly agentId: string | null;
  readonly notAfter: Date;
}

/**
 * What still chains to one CA key. A credential is live when it has not
 * expired and was not superseded: no later credential of the same kind was
 * issued for the same entry and agent (for JWT-SVIDs, also the same audience),
 * whichever key signed it. Admin mints (no entry, no agent) are never superseded.
 */
export interface IssuanceInventory {
  readonly caKeyId: string;
  readonly live: number;
  /** Agents holding live credentials under the key, most first (`null`: admin mints). */
  readonly agents: readonly { readonly agentId: string | null; readonly count: number }[];
  /** SPIFFE IDs of those credentials, most first. */
  readonly spiffeIds: readonly { readonly spiffeId: string; readonly count: number }[];
  /** Up to `limit` of the live credentials, soonest expiry first. */
  readonly svids: readonly InventorySvid[];
}

/** Default and largest `limit` of an inventory. */
export const INVENTORY_DEFAULT_LIMIT = 100;
export const INVENTORY_MAX_LIMIT = 10_000;

/**
 * The WHERE condition (over `issuance_contexts c JOIN issuances i`) of live
 * credentials: shared by every SQL engine. Parameters: caKeyId, now.
 */
export const LIVE_INVENTORY_CONDITION = `c.ca_key_id = ? AND i.not_after > ?
  AND NOT ((c.entry_id <> '' OR c.agent_id <> '') AND EXISTS (
    SELECT 1 FROM issuance_contexts c2 JOIN issuances i2 ON i2.context_id = c2.context_id
    WHERE c2.agent_id = c.agent_id AND c2.entry_id = c.entry_id AND c2.kind = c.kind AND c2.audience = c.audience AND i2.row_id > i.row_id))`;

/** Folds grouped counts (agent, SPIFFE ID) into an inventory. */
export function foldInventory(caKeyId: string, groups: readonly { agentId: string; spiffeId: string; n: number }[], svids: readonly InventorySvid[]): IssuanceInventory {
  const agents = new Map<string, number>();
  const ids = new Map<string, number>();
  let live = 0;
  for (const g of groups) {
    live += g.n;
    agents.set(g.agentId, (agents.get(g.agentId) ?? 0) + g.n);
    ids.set(g.spiffeId, (ids.get(g.spiffeId) ?? 0) + g.n);
  }
  const byCount = <K>(a: [K, number], b: [K, number]) => b[1] - a[1] || String(a[0]).localeCompare(String(b[0]));
  return {
    caKeyId,
    live,
    agents: [...agents].sort(byCount).map(([agentId, count]) => ({ agentId: agentId === "" ? null : agentId, count })),
    spiffeIds: [...ids].sort(byCount).map(([spiffeId, count]) => ({ spiffeId, count })),
    svids,
  };
}

/** Validates an inventory request, naming the bad field. */
export function checkInventoryRequest(r: IssuanceInventoryRequest): { caKeyId: string; now: number; limit: number; countOnly: boolean } {
  const bad = (m: string) => new SigilError("ERR_INVALID_ARGUMENT", `datastore: inventory ${m}`);
  if (r === null || typeof r !== "object") throw bad("request must be an object");
  if (typeof r.caKeyId !== "string" || r.caKeyId.length === 0 || r.caKeyId.length > 256) throw bad("caKeyId must be 1-256 characters");
  if (!(r.now instanceof Date) || Number.isNaN(r.now.getTime())) throw bad("now must be a valid Date");
  const limit = r.limit ?? INVENTORY_DEFAULT_LIMIT;
  if (!Number.isInteger(limit) || limit < 0 || limit > INVENTORY_MAX_LIMIT) throw bad(`limit must be an integer from 0 to ${INVENTORY_MAX_LIMIT}`);
  if (r.countOnly !== undefined && typeof r.countOnly !== "boolean") throw bad("countOnly must be a boolean");
  return { caKeyId: r.caKeyId, now: r.now.getTime(), limit, countOnly: r.countOnly === true };
}

/** The inventory of `countOnly` requests: the live count alone. */
export function countOnlyInventory(caKeyId: string, live: number): IssuanceInventory {
  return { caKeyId, live, agents: [], spiffeIds: [], svids: [] };
}

/** An inventory row as every engine reads it ("" stands for no entry or agent). */
export function toInventorySvid(r: { serial: string; kind: IssuanceKind; spiffe_id: string; entry_id: string; agent_id: string; not_after: number | string }): InventorySvid {
  return { serial: r.serial, kind: r.kind, spiffeId: r.spiffe_id, entryId: r.entry_id === "" ? null : r.entry_id, agentId: r.agent_id === "" ? null : r.agent_id, notAfter: new Date(Number(r.not_after)) };
}
