/**
 * What the four admin services share: their dependencies, limits, and the
 * request-field checks whose messages name the field (`filter.by_spiffe_id: …`).
 */
import type { AuditCaller, Logger } from "../../../common/log.js";
import type { Metrics } from "../../../common/metrics.js";
import { checkAgentId, checkNotReserved } from "../../../common/reserved-ids.js";
import { SigilError, isSigilError } from "../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain, parseTrustDomainIdString, type SpiffeId, type TrustDomain } from "../../../spiffe/id.js";
import type { CaManager } from "../../ca/manager.js";
import type { FederationControl } from "../../federation/poller.js";
import type { Datastore, PageRequest } from "../../datastore/index.js";
import type { IssuanceLogSink } from "../../tlog/log-service.js";
import type { LogAdminView } from "./log.js";

/** Dependencies of the admin API (built once, by the `admin-socket` service in `server/api/admin-listener.ts`). */
export interface AdminApiDeps {
  readonly trustDomain: TrustDomain;
  /** The server's SPIFFE ID (`spiffe://<td>/spire/server`), the parent of node-alias entries. */
  readonly serverId: string;
  readonly datastore: Datastore;
  readonly ca: CaManager;
  readonly log: Logger;
  /** SVID counters (`sigil_x509_svids_signed_total`, `sigil_jwt_svids_signed_total`) when given. */
  readonly metrics?: Metrics | undefined;
  readonly auditEnabled: boolean;
  readonly now: () => Date;
  /** TTL of minted X509-SVIDs when the request gives none. */
  readonly defaultX509TtlMs: number;
  /** TTL of minted JWT-SVIDs when the request gives none. */
  readonly defaultJwtTtlMs: number;
  /** Longest TTL a mint request may ask for; unset: only the CA's own expiry caps it. */
  readonly maxTtlMs?: number | undefined;
  /** Whether a configured NodeAttestor gives agents this ID, so entries may name it as parent before it attests. */
  readonly issuesAgentId?: ((id: string) => boolean) | undefined;
  /** The `federation` service: told of relationship changes, asked for fetch status and refreshes; unset: relationships are only stored. */
  readonly federation?: FederationControl | undefined;
  /** The transparency log's read side once its service started (`transparency_log.enabled`); unset: LogAdmin answers FailedPrecondition. */
  readonly tlogView?: (() => LogAdminView | undefined) | undefined;
  /** Where minted credentials' transparency-log entries go (`transparency_log.enabled`); unset: not logged. */
  readonly transparencyLog?: IssuanceLogSink | undefined;
  /** The caller of a call for its audit record (uid, gid, pid and binary on the admin socket); unset: unknown. */
  readonly callerOf?: ((call: { getPeer(): string }) => AuditCaller) | undefined;
}

/** Most items one batch call (create, update, delete entries) may carry. */
export const MAX_ADMIN_BATCH_SIZE = 1000;
/** Page size of list calls that give none. */
export const DEFAULT_ADMIN_PAGE_SIZE = 500;
/** Largest page a list call may ask for (keeps a response well under gRPC's 4 MiB default). */
export const MAX_ADMIN_PAGE_SIZE = 1000;

/** An `ERR_INVALID_ARGUMENT` whose message starts with the field path. */
export function invalidField(field: string, message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `${field}: ${message}`, cause === undefined ? undefined : { cause });
}

/**
 * The error with `path: ` in front of its message (same code, original as
 * cause), unless the message already starts with the path. Non-Sigil errors
 * are returned unchanged, so they stay internal.
 */
export function prefixError(e: unknown, path: string): unknown {
  if (!isSigilError(e) || e.message.startsWith(`${path}:`) || e.message.startsWith(`${path}.`) || e.message.startsWith(`${path}[`)) return e;
  return new SigilError(e.code, `${path}: ${e.message}`, { cause: e });
}

/** Refuses an empty or oversized batch. */
export function checkBatchSize(field: string, n: number): void {
  if (n === 0) throw invalidField(field, "is empty");
  if (n > MAX_ADMIN_BATCH_SIZE) throw invalidField(field, `${n} items is more than the maximum ${MAX_ADMIN_BATCH_SIZE} per call`);
}

/** The datastore page request for a list call's `page_size` (0 = default) and `page_token`. */
export function pageRequest(pageSize: number, pageToken: string): PageRequest {
  if (!Number.isInteger(pageSize) || pageSize < 0 || pageSize > MAX_ADMIN_PAGE_SIZE) {
    throw invalidField("page_size", `must be 0 (default ${DEFAULT_ADMIN_PAGE_SIZE}) to ${MAX_ADMIN_PAGE_SIZE}, got ${pageSize}`);
  }
  return { pageSize: pageSize === 0 ? DEFAULT_ADMIN_PAGE_SIZE : pageSize, ...(pageToken ? { pageToken } : {}) };
}

/** Runs a datastore list call, naming `page_token` when the datastore refuses the token. */
export async function withPageToken<T>(pageToken: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (pageToken && isSigilError(e, "ERR_INVALID_ARGUMENT") && e.message.includes("page token")) {
      throw invalidField("page_token", "is not a token from a previous page of this list", e);
    }
    throw e;
  }
}

/** Options of {@link spiffeIdField}. */
export interface SpiffeIdFieldOptions {
  /** Require membership of this trust domain and a non-empty path (an identity the server can issue). */
  readonly issuableIn?: TrustDomain;
  /**
   * What the ID will name: a `workload` (entry, minted SVID) may not use the
   * reserved `/spire` namespace; an `agent` ID must lie under `/spire/agent/`.
   */
  readonly kind?: "workload" | "agent";
}

/**
 * Parses a required SPIFFE ID request field.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the field.
 */
export function spiffeIdField(field: string, value: string, options: SpiffeIdFieldOptions = {}): SpiffeId {
  if (!value) throw invalidField(field, "is required");
  let id: SpiffeId;
  try {
    id = parseSpiffeId(value);
  } catch (e) {
    throw invalidField(field, isSigilError(e) ? e.message : String(e), e);
  }
  const td = options.issuableIn;
  if (td !== undefined) {
    if (!id.memberOf(td)) throw invalidField(field, `${id} is not in trust domain ${td.name}`);
    if (id.isTrustDomainId()) throw invalidField(field, "must have a path (the trust domain's own ID is not a workload identity)");
  }
  if (options.kind !== undefined) {
    try {
      (options.kind === "agent" ? checkAgentId : checkNotReserved)(id);
    } catch (e) {
      throw invalidField(field, (e as Error).message, e);
    }
  }
  return id;
}

/**
 * Parses a required trust-domain field, bare (`example.org`) or as its ID (`spiffe://example.org`).
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the field.
 */
export function trustDomainField(field: string, value: string): TrustDomain {
  if (!value) throw invalidField(field, "is required");
  try {
    return value.startsWith("spiffe://") ? parseTrustDomainIdString(value) : parseTrustDomain(value);
  } catch (e) {
    throw invalidField(field, isSigilError(e) ? e.message : String(e), e);
  }
}

/**
 * A TTL field in seconds as milliseconds: 0 means `defaultMs`.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` for a negative TTL or one above `maxMs`.
 */
export function ttlField(field: string, seconds: number, defaultMs: number, maxMs?: number): number {
  if (!Number.isInteger(seconds) || seconds < 0) throw invalidField(field, `must be a non-negative number of seconds, got ${seconds}`);
  if (seconds === 0) return defaultMs;
  const ms = seconds * 1000;
  if (maxMs !== undefined && ms > maxMs) throw invalidField(field, `${seconds}s is longer than the maximum ${Math.floor(maxMs / 1000)}s`);
  return ms;
}

/** A time as whole Unix seconds, as the wire types carry it. */
export function unixSeconds(d: Date): bigint {
  return BigInt(Math.floor(d.getTime() / 1000));
}
