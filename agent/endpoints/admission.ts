/**
 * Caller admission for every API on the Workload Endpoint: the Workload API
 * today, Envoy SDS and any other socket API next. Each call is admitted the
 * same way, whatever its protocol: the agent must have synced, then the caller
 * is attested out of band from the peer credentials its connection was
 * accepted with (WEP-13); the caller sends nothing that is believed.
 * Protocol-specific checks (the Workload API's `workload.spiffe.io` header,
 * its profiles, request fields) stay with each API and run before.
 *
 * Outcomes map to gRPC status codes in one place ({@link attestationFailure}):
 * - Unavailable: the agent has not synced yet (WEP-16); attestation failed or
 *   timed out.
 * - Unauthenticated: the caller vanished during attestation (pid-reuse guard).
 * - PermissionDenied `caller changed credentials after connecting`: the
 *   process that connected now acts as another user (a setuid exec).
 * - PermissionDenied `no identity issued` ({@link EndpointAdmission.noIdentity}):
 *   the caller matches no entry; counted and logged with the closest entries.
 */
import { performance } from "node:perf_hooks";
import { Metadata, status, type sendUnaryData, type ServerWritableStream, type StatusObject } from "@grpc/grpc-js";
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import { toServiceError } from "../../common/rpc/status.js";
import { formatSelector, type Selector } from "../../common/selector.js";
import { WorkloadAttestationError, type AttestedCaller } from "../attestation/workload.js";
import type { WorkloadCache } from "../cache/types.js";

/** The status a refused or failed call ends with. */
export type CallFailure = Pick<StatusObject, "code" | "details">;

/** Status messages shared by every API on the endpoint; SPIRE's wording where SPIRE has one. */
export const ADMISSION_MESSAGES = {
  notReady: "agent is not ready: no trust bundle or first sync yet",
  noIdentity: "no identity issued",
} as const;

/** A call failure with the given code and message. */
export function callFailure(code: status, details: string): CallFailure {
  return { code, details };
}

/** The failure for any error: a SigilError by its code (`common/rpc/status.ts`), anything else INTERNAL. */
export function errorFailure(e: unknown): CallFailure {
  const se = toServiceError(e);
  return { code: se.code, details: se.details };
}

const ATTESTATION_FAILURE_CODES: Readonly<Record<WorkloadAttestationError["reason"], status>> = {
  attestation_failed: status.UNAVAILABLE,
  caller_gone: status.UNAUTHENTICATED,
  caller_changed: status.PERMISSION_DENIED,
  caller_unknown: status.INTERNAL,
};

/** The failure for an attestation or re-check error (the table above); other errors as {@link errorFailure}. */
export function attestationFailure(e: unknown): CallFailure {
  if (e instanceof WorkloadAttestationError) return callFailure(ATTESTATION_FAILURE_CODES[e.reason], e.message);
  return errorFailure(e);
}

/** Ends a server (or bidirectional) stream with a failure. */
export function failStream(call: Pick<ServerWritableStream<unknown, unknown>, "emit">, f: CallFailure): void {
  call.emit("error", { ...f, metadata: new Metadata() });
}

/** Answers a unary call with a failure. */
export function failUnary<T>(callback: sendUnaryData<T>, f: CallFailure): void {
  callback({ ...f, metadata: new Metadata() });
}

/** The result of {@link EndpointAdmission.admit}: the attested caller, or the failure to end the call with. */
export type Admission = { readonly caller: AttestedCaller } | { readonly failure: CallFailure };

/** Options of {@link createEndpointAdmission}. */
export interface EndpointAdmissionOptions {
  /** What the cache says about readiness and, for diagnostics, the closest entries. */
  readonly cache: Pick<WorkloadCache, "ready" | "closestEntries">;
  /**
   * Attests the caller of a call from its `call.getPeer()` string
   * (`createCallerAttester`). Rejects with a WorkloadAttestationError.
   */
  readonly attest: (callPeer: string) => Promise<AttestedCaller>;
  readonly log: Logger;
  /** Receives `sigil_workload_attestation_duration_seconds` and `sigil_workload_api_no_identity_total` (shared by every API on one Metrics). */
  readonly metrics: Metrics;
}

/** Admission of one API's calls; see the module comment. */
export interface EndpointAdmission {
  /**
   * Admits a call: the cache has synced, and the caller is attested from its
   * peer credentials. Run the API's own checks first. Never rejects.
   */
  admit(call: { getPeer(): string }): Promise<Admission>;
  /**
   * Counts and logs (with the closest entries: registration mistakes are the
   * usual cause) a caller that has no identity; returns the PermissionDenied
   * `no identity issued` failure for the APIs that refuse such callers.
   */
  noIdentity(method: string, callPeer: string, selectors: readonly Selector[]): CallFailure;
}

/**
 * Creates the admission one API's handlers share.
 *
 * @example
 * ```ts
 * const admission = createEndpointAdmission({ cache, attest, log, metrics });
 * const r = await admission.admit(call);
 * if ("failure" in r) return failStream(call, r.failure);
 * // r.caller.selectors; r.caller.recheck() before each message of a stream
 * ```
 */
export function createEndpointAdmission(options: EndpointAdmissionOptions): EndpointAdmission {
  const { cache, attest, log, metrics } = options;
  const attestDuration = metrics.histogram({
    name: "sigil_workload_attestation_duration_seconds",
    help: "Time to attest a Workload Endpoint caller, by outcome (ok, failed, caller_gone, caller_changed, caller_unknown).",
    labelNames: ["outcome"],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  });
  const noIdentityCounter = metrics.counter({
    name: "sigil_workload_api_no_identity_total",
    help: "Workload Endpoint calls refused because the caller matched no registration entry, by method.",
    labelNames: ["method"],
  });
  const noIdentityFailure = callFailure(status.PERMISSION_DENIED, ADMISSION_MESSAGES.noIdentity);
  const notReady = callFailure(status.UNAVAILABLE, ADMISSION_MESSAGES.notReady);

  return {
    async admit(call) {
      if (!cache.ready()) return { failure: notReady };
      const start = performance.now();
      try {
        const caller = await attest(call.getPeer());
        attestDuration.observe({ outcome: "ok" }, (performance.now() - start) / 1000);
        return { caller };
      } catch (e) {
        const outcome = e instanceof WorkloadAttestationError && e.reason !== "attestation_failed" ? e.reason : "failed";
        attestDuration.observe({ outcome }, (performance.now() - start) / 1000);
        return { failure: attestationFailure(e) };
      }
    },

    noIdentity(method, callPeer, selectors) {
      noIdentityCounter.inc({ method });
      const closest = cache.closestEntries?.(selectors, 3) ?? [];
      log.warn(
        {
          method,
          caller: callPeer,
          selectors: selectors.map(formatSelector),
          closest_entries: closest.map((c) => ({ entry_id: c.entry.id, spiffe_id: c.entry.spiffeId, missing_selectors: c.missing })),
        },
        "No identity issued: the caller's selectors match no registration entry",
      );
      return noIdentityFailure;
    },
  };
}
