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
  ERR_INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  ERR_NOT_FOUND: status.NOT_FOUND,
  ERR_ALREADY_EXISTS: status.ALREADY_EXISTS,
  ERR_FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  ERR_PERMISSION_DENIED: status.PERMISSION_DENIED,
  ERR_UNAVAILABLE: status.UNAVAILABLE,
  ERR_INTERNAL: status.INTERNAL,
};

/** The gRPC status for an error code. */
export function grpcStatusForCode(code: ErrorCode): status {
  return TABLE[code];
}

/**
 * Converts a thrown value to a grpc-js ServiceError. SigilErrors keep their
 * message (it names the problem for the caller); other errors become INTERNAL
 * with a generic message, so internals never leak.
 */
export function toServiceError(e: unknown): ServiceError {
  const err = new Error() as ServiceError;
  if (isSigilError(e)) {
    err.code = grpcStatusForCode(e.code);
    err.details = e.message;
    err.message = e.message;
    const md = new Metadata();
    md.set("sigil-error-code", e.code);
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
