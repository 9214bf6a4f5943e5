/**
 * The Workload API client's error: a {@link SigilError} with code
 * `ERR_WORKLOAD_API` that keeps the gRPC status it came from, because the
 * client's retry policy and its callers branch on it (Workload Endpoint §6).
 */
import { status, type ServiceError } from "@grpc/grpc-js";
import { SigilError } from "../errors.js";

/** A failed Workload API call, carrying the gRPC status code and details. */
export class WorkloadApiError extends SigilError {
  /** The gRPC status code the call ended with. */
  readonly grpcCode: status;
  /** The status details the server sent. */
  readonly grpcDetails: string;
  /** The RPC that failed, e.g. `FetchX509SVID`. */
  readonly rpc: string;

  constructor(rpc: string, grpcCode: status, grpcDetails: string, options?: { readonly cause?: unknown }) {
    super("ERR_WORKLOAD_API", `workloadapi: ${rpc} failed: ${grpcStatusName(grpcCode)}: ${grpcDetails}`, options);
    this.name = "WorkloadApiError";
    this.grpcCode = grpcCode;
    this.grpcDetails = grpcDetails;
    this.rpc = rpc;
  }
}

/** The canonical upper-case name of a gRPC status code, e.g. `PERMISSION_DENIED`. */
export function grpcStatusName(code: status): string {
  return status[code] ?? `status ${code}`;
}

/** Wraps a grpc-js call error, keeping its status. */
export function workloadApiErrorFromServiceError(rpc: string, err: Partial<ServiceError>): WorkloadApiError {
  const code = typeof err.code === "number" ? err.code : status.UNKNOWN;
  return new WorkloadApiError(rpc, code, err.details ?? err.message ?? "", { cause: err });
}

/** True when `e` is a {@link WorkloadApiError}, optionally with the given gRPC code. */
export function isWorkloadApiError(e: unknown, grpcCode?: status): e is WorkloadApiError {
  return e instanceof WorkloadApiError && (grpcCode === undefined || e.grpcCode === grpcCode);
}
