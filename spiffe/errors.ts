/**
 * Sigil's single error hierarchy. Every error a library function raises is a
 * {@link SigilError} with a stable string `code`; messages start with the
 * subsystem (`spiffe id: …`, `x509svid: …`). Each code maps to exactly one gRPC
 * status in the table at the RPC boundary (see `grpcStatusForCode`).
 */

/** Stable error codes. Switch on `err.code`, never on the message. */
export type ErrorCode =
  // SPIFFE ID and trust domain parsing
  | "ERR_SPIFFE_ID_INVALID"
  | "ERR_TRUST_DOMAIN_INVALID"
  // X.509
  | "ERR_X509_SVID_INVALID"
  | "ERR_X509_CHAIN_INVALID"
  | "ERR_X509_BUILD"
  | "ERR_DER_INVALID"
  // JWT
  | "ERR_JWT_MALFORMED"
  | "ERR_JWT_ALG_NOT_ALLOWED"
  | "ERR_JWT_SIGNATURE_INVALID"
  | "ERR_JWT_EXPIRED"
  | "ERR_JWT_AUDIENCE_MISMATCH"
  | "ERR_JWT_CLAIM_INVALID"
  | "ERR_JWT_KEY_NOT_FOUND"
  | "ERR_JWT_SIGN"
  // Bundles
  | "ERR_BUNDLE_INVALID"
  | "ERR_BUNDLE_NOT_FOUND"
  // Keys
  | "ERR_KEY_UNSUPPORTED"
  // Workload API client / endpoint
  | "ERR_ENDPOINT_ADDRESS_INVALID"
  | "ERR_WORKLOAD_API"
  | "ERR_WORKLOAD_API_RESPONSE_INVALID"
  // Transparency log (spiffe/tlog): a note, key, checkpoint, tile or bundle that does not parse
  | "ERR_TLOG_MALFORMED"
  // A signed note without a verified signature from a trusted key, or with a bad one
  | "ERR_TLOG_SIGNATURE_INVALID"
  // An inclusion or consistency proof that does not verify
  | "ERR_TLOG_PROOF_INVALID"
  // Served log data disagrees with itself or with an earlier checkpoint (rewritten entries, a fork)
  | "ERR_TLOG_INCONSISTENT"
  // Generic
  | "ERR_INVALID_ARGUMENT"
  | "ERR_NOT_FOUND"
  | "ERR_ALREADY_EXISTS"
  // The request is well formed but the current state refuses it (e.g. deleting a bundle entries still use).
  | "ERR_FAILED_PRECONDITION"
  | "ERR_PERMISSION_DENIED"
  // The agent API holds no record of the calling agent: it was evicted (or never attested).
  | "ERR_AGENT_NOT_ATTESTED"
  // A rate limit refused the call; `retryAfterMs` says when to try again.
  | "ERR_RESOURCE_EXHAUSTED"
  | "ERR_UNAVAILABLE"
  | "ERR_INTERNAL";

/** Options accepted by {@link SigilError}. */
export interface SigilErrorOptions {
  /** The lower-level error this one wraps. */
  readonly cause?: unknown;
  /** How long the caller should wait before trying again (milliseconds), e.g. after a rate limit. */
  readonly retryAfterMs?: number | undefined;
}

/**
 * The base of every error Sigil raises.
 *
 * @example
 * ```ts
 * try { parseSpiffeId(input) } catch (e) {
 *   if (isSigilError(e) && e.code === "ERR_SPIFFE_ID_INVALID") …
 * }
 * ```
 */
export class SigilError extends Error {
  /** Stable, machine-readable error code. */
  readonly code: ErrorCode;
  /** When set, the caller should wait this many milliseconds before trying again. */
  readonly retryAfterMs: number | undefined;

  constructor(code: ErrorCode, message: string, options?: SigilErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.name = "SigilError";
    this.retryAfterMs = options?.retryAfterMs;
  }
}

/** True when `e` is a {@link SigilError} (optionally with the given code). */
export function isSigilError(e: unknown, code?: ErrorCode): e is SigilError {
  return e instanceof SigilError && (code === undefined || e.code === code);
}

/**
 * Wraps any thrown value into a {@link SigilError}, keeping SigilErrors as they
 * are. Used at layer boundaries so nothing escapes as a bare `Error`.
 */
export function toSigilError(e: unknown, code: ErrorCode, prefix: string): SigilError {
  if (e instanceof SigilError) return e;
  const detail = e instanceof Error ? e.message : String(e);
  return new SigilError(code, `${prefix}: ${detail}`, { cause: e });
}
