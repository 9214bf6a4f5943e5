/**
 * The one table mapping Sigil error codes to gRPC status codes, used at every
 * RPC boundary (server APIs, Workload API). Anything that is not a SigilError
 * is an internal error whose detail is logged but not sent to the caller.
 */
import { status, type ServiceError, Metadata } from "@grpc/grpc-js";
import { isSigilError, type ErrorCode } from "../../spiffe/errors.js";

const TABLE: Readonly<Record<ErrorCode, status>> = {
  ERR_SPIFFE_ID_INVALID: status.INVALID_ARGUMENT,
  ERR_TRUST_DOMAIN_INVALID: status.INVALID_ARGUMENT,
  ERR_X509_SVID_INVALID: status.INVALID_ARGUMENT,
  ERR_X509_CHAIN_INVALID: status.UNAUTHENTICATED,
  ERR_X509_BUILD: status.INTERNAL,
  ERR_DER_INVALID: status.INVALID_ARGUMENT,
  ERR_JWT_MALFORMED: status.INVALID_ARGUMENT,
  ERR_JWT_ALG_NOT_ALLOWED: status.INVALID_ARGUMENT,
  ERR_JWT_SIGNATURE_INVALID: status.INVALID_ARGUMENT,
  ERR_JWT_EXPIRED: status.INVALID_ARGUMENT,
  ERR_JWT_AUDIENCE_MISMATCH: status.INVALID_ARGUMENT,
  ERR_JWT_CLAIM_INVALID: status.INVALID_ARGUMENT,
  ERR_JWT_KEY_NOT_FOUND: status.INVALID_ARGUMENT,
  ERR_JWT_SIGN: status.INTERNAL,
  ERR_BUNDLE_INVALID: status.INVALID_ARGUMENT,
  ERR_BUNDLE_NOT_FOUND: status.NOT_FOUND,
  ERR_KEY_UNSUPPORTED: status.INVALID_ARGUMENT,
  ERR_ENDPOINT_ADDRESS_INVALID: status.INVALID_ARGUMENT,
  ERR_WORKLOAD_API: status.UNAVAILABLE,
  ERR_WORKLOAD_API_RESPONSE_INVALID: status.INTERNAL,
  ERR_TLOG_MALFORMED: status.INVALID_ARGUMENT,
  ERR_TLOG_SIGNATURE_INVALID: status.INVALID_ARGUMENT,
  ERR_TLOG_PROOF_INVALID: status.INVALID_ARGUMENT,
  ERR_TLOG_INCONSISTENT: status.DATA_LOSS,
  ERR_INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  ERR_NOT_FOUND: status.NOT_FOUND,
  ERR_ALREADY_EXISTS: status.ALREADY_EXISTS,
  ERR_FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  ERR_PERMISSION_DENIED: status.PERMISSION_DENIED,
  ERR_AGENT_NOT_ATTESTED: status.PERMISSION_DENIED,
  ERR_RESOURCE_EXHAUSTED: status.RESOURCE_EXHAUSTED,
  ERR_UNAVAILABLE: status.UNAVAILABLE,
  ERR_INTERNAL: status.INTERNAL,
};

/**
 * Trailing-metadata key of a retry hint: whole milliseconds the caller should
 * wait before trying again. It is gRPC's own server pushback key (gRFC A6),
 * so a grpc client with a retry policy honours it without Sigil code.
 */
export const RETRY_PUSHBACK_METADATA_KEY = "grpc-retry-pushback-ms";

// The same hint in a status message; see retryHintText.
const RETRY_HINT_TEXT = /retry after (\d+)ms/;
const wholeMs = (ms: number): number => Math.max(0, Math.ceil(ms));

/** The gRPC status for an error code. */
export function grpcStatusForCode(code: ErrorCode): status {
  return TABLE[code];
}

/**
 * Longest status message sent, in characters. A message may quote what the
 * caller sent (an entry ID, an attestor name, an OID from a CSR), which can be
 * as large as a gRPC message; unbounded, one refused call would write that
 * much into the audit log, and a header block that large never reaches a
 * client (HTTP/2 header limits), leaving its call hanging.
 */
export const MAX_STATUS_MESSAGE = 2048;

/** The message, or its start and end around a note of what was left out (the quote is in the middle, a retry hint at the end). */
export function boundedStatusMessage(message: string): string {
  if (message.length <= MAX_STATUS_MESSAGE) return message;
  const half = MAX_STATUS_MESSAGE / 2;
  return `${message.slice(0, half)}…[${message.length - 2 * half} characters left out]…${message.slice(-half)}`;
}

/**
 * Converts a thrown value to a grpc-js ServiceError. SigilErrors keep their
 * message (it names the problem for the caller), cut to
 * {@link MAX_STATUS_MESSAGE} characters; other errors become INTERNAL with a
 * generic message, so internals never leak.
 */
export function toServiceError(e: unknown): ServiceError {
  const err = new Error() as ServiceError;
  if (isSigilError(e)) {
    err.code = grpcStatusForCode(e.code);
    err.details = boundedStatusMessage(e.message);
    err.message = err.details;
    const md = new Metadata();
    md.set("sigil-error-code", e.code);
    if (e.retryAfterMs !== undefined) md.set(RETRY_PUSHBACK_METADATA_KEY, String(wholeMs(e.retryAfterMs)));
    err.metadata = md;
  } else if (isServiceError(e)) {
    return e;
  } else {
    err.code = status.INTERNAL;
    err.details = "internal error";
    err.message = "internal error";
    err.metadata = new Metadata();
  }
  return err;
}

function isServiceError(e: unknown): e is ServiceError {
  return e instanceof Error && typeof (e as Partial<ServiceError>).code === "number" && "metadata" in e;
}

/**
 * The retry hint of a failed call, in milliseconds: the
 * {@link RETRY_PUSHBACK_METADATA_KEY} trailer, else `retry after <n>ms` in the
 * status message; undefined when the server gave none.
 *
 * @example
 * ```ts
 * catch (e) { if ((e as ServiceError).code === status.RESOURCE_EXHAUSTED) delayMs = retryAfterMsOf(e) ?? backoffMs; }
 * ```
 */
export function retryAfterMsOf(e: unknown): number | undefined {
  // A client may wrap the ServiceError (e.g. the agent's `sync: <rpc>: …` errors): look inside.
  if (isSigilError(e)) return e.retryAfterMs ?? retryAfterMsOf(e.cause);
  if (!isServiceError(e)) return undefined;
  const raw = e.metadata?.get(RETRY_PUSHBACK_METADATA_KEY)[0];
  const fromMetadata = typeof raw === "string" && /^\d+$/.test(raw) ? Number(raw) : undefined;
  if (fromMetadata !== undefined) return fromMetadata;
  const inText = RETRY_HINT_TEXT.exec(e.details ?? "");
  return inText ? Number(inText[1]) : undefined;
}

/** The retry hint as it ends a status message: `retry after <n>ms` (whole milliseconds, rounded up). */
export function retryHintText(retryAfterMs: number): string {
  return `retry after ${wholeMs(retryAfterMs)}ms`;
}
