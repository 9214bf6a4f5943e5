/**
 * The issuance log: one record per credential the server signs, saying what
 * went into it (who asked, for which entry and selectors, with which CA key,
 * when, valid for how long). It answers "why does this workload have this
 * identity" and "which credentials are still in use".
 *
 * Records are append-only (pruned only once expired) and are not part of the
 * change feed: they are written on the hot issuance path, in batches.
 */
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
