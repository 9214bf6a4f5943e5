/**
 * The SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto package: WAPI-2)
 * served by the agent. Every call is attested out of band from the caller's
 * peer credentials (WEP-13, WAPI-3); nothing is asked of the workload beyond
 * the security header (WEP-12, WEP-14).
 *
 * Status codes follow the spec's table as SPIRE applies it (§2.1):
 * - InvalidArgument: security header missing or not exactly one `true`
 *   (WEP-6); a mandatory request field empty (WAPI-11); a malformed requested
 *   `spiffe_id`; a token ValidateJWTSVID rejects (A14).
 * - Unavailable: the agent has not synced yet (WEP-16); attestation failed.
 * - Unauthenticated: the caller vanished during attestation (pid-reuse guard).
 * - PermissionDenied `caller changed credentials after connecting`: the
 *   process that connected now acts as another user (a setuid exec); checked
 *   at attestation and before every message a stream sends.
 * - PermissionDenied `no identity issued`: no identity for the caller (WAPI-22,
 *   WAPI-29); bundle streams too unless unauthenticated verifiers are allowed
 *   (A15). A stream whose last identity goes away ends with it (A20, WAPI-41).
 * - Unimplemented: the WIT-SVID RPCs (WAPI-38) and a disabled profile (WAPI-1).
 *
 * Streams send their first message at once (WAPI-7), then the complete state
 * again whenever the caller's view changes (WAPI-5, WAPI-6); identical
 * consecutive messages are not repeated.
 */
import { performance } from "node:perf_hooks";
import { create, equals, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import type { GenService } from "@bufbuild/protobuf/codegenv2";
import {
  Metadata,
  status,
  type sendUnaryData,
  type ServerInterceptor,
  type ServerUnaryCall,
  type ServerWritableStream,
  type StatusObject,
} from "@grpc/grpc-js";
import type { Logger } from "../../../common/log.js";
import { rpcMetricsInterceptor, type Metrics } from "../../../common/metrics.js";
import { toServiceError } from "../../../common/rpc/status.js";
import { formatSelector, type Selector } from "../../../common/selector.js";
import { systemClock, type Clock } from "../../../common/clock.js";
import { BundleSet } from "../../../spiffe/bundle/bundle-set.js";
import { isSigilError } from "../../../spiffe/errors.js";
import { grpcServiceDefinition, type GrpcServiceDefinition, type GrpcServiceImplementation } from "../../../spiffe/grpc/service.js";
import { parseSpiffeId, type TrustDomain } from "../../../spiffe/id.js";
import type { JwtSvid } from "../../../spiffe/jwt/jwt-svid.js";
import { validateJwtSvid } from "../../../spiffe/jwt/validate.js";
import { WORKLOAD_API_HEADER } from "../../../spiffe/workloadapi/client.js";
import {
  JWTBundlesResponseSchema,
  JWTSVIDResponseSchema,
  JWTSVIDSchema,
  SpiffeWorkloadAPI,
  ValidateJWTSVIDResponseSchema,
  X509BundlesResponseSchema,
  X509SVIDResponseSchema,
  type JWTSVID,
  type JWTSVIDRequest,
  type JWTSVIDResponse,
  type ValidateJWTSVIDRequest,
  type ValidateJWTSVIDResponse,
} from "../../../proto/gen/spiffe/workload_pb.js";
import { WorkloadAttestationError, type AttestedCaller } from "../../attestation/workload.js";
import type { BundleSnapshot, CachedIdentity, WorkloadCache } from "../../cache/types.js";
import type { EndpointService } from "../server.js";
import {
  buildJwtBundlesResponse,
  buildX509BundlesResponse,
  buildX509SvidResponse,
  federatedBundlesFor,
  selectIdentities,
  validatedClaims,
  type ResponseNote,
} from "./responses.js";

/** The protobuf-es method map of `SpiffeWorkloadAPI`. */
export type WorkloadApiMethods = typeof SpiffeWorkloadAPI extends GenService<infer S> ? S : never;

/** Status messages callers see; SPIRE's wording where SPIRE has one. */
export const WORKLOAD_API_MESSAGES = {
  securityHeader: "security header missing from request",
  notReady: "agent is not ready: no trust bundle or first sync yet",
  noIdentity: "no identity issued",
  audience: "audience must be specified",
  audienceEmptyValue: "audience must not contain empty values",
  svid: "svid must be specified",
  witUnimplemented: "WIT-SVID profile is not supported",
  identityPending: "an identity of the caller is being issued after a registration change; retry",
} as const;

/** What a stream's `compute` returns while an identity of the caller is being (re)issued: send nothing, keep the stream open. */
const PENDING = Symbol("pending");

/** Which SVID profiles are served (WAPI-1: operators may disable one). */
export interface WorkloadApiProfiles {
  /** FetchX509SVID and FetchX509Bundles; default true. */
  readonly x509?: boolean;
  /** FetchJWTSVID, FetchJWTBundles and ValidateJWTSVID; default true. */
  readonly jwt?: boolean;
}

/** Options of {@link createWorkloadApiHandler}. */
export interface WorkloadApiHandlerOptions {
  readonly cache: WorkloadCache;
  /**
   * Attests the caller of a call from its `call.getPeer()` string
   * (`createCallerAttester`). Rejects with a WorkloadAttestationError.
   */
  readonly attest: (callPeer: string) => Promise<AttestedCaller>;
  /** The agent's trust domain. */
  readonly trustDomain: TrustDomain;
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Serve bundles (own trust domain only) to callers with no identity (SPIRE's `allow_unauthenticated_verifiers`, A15). Default false. */
  readonly allowUnauthenticatedVerifiers?: boolean;
  /** Non-standard claims returned when validating tokens of a foreign trust domain (SPIRE's `allowed_foreign_jwt_claims`). */
  readonly allowedForeignJwtClaims?: readonly string[];
  /** Default: both profiles on. */
  readonly profiles?: WorkloadApiProfiles;
  /** Time for JWT-SVID validation; default the system clock. */
  readonly clock?: Clock;
}

/** The Workload API as a service to put on the Workload Endpoint. */
export interface WorkloadApiHandler extends EndpointService {
  readonly definition: GrpcServiceDefinition<WorkloadApiMethods>;
  readonly implementation: GrpcServiceImplementation<WorkloadApiMethods>;
  /** RPC metrics (`sigil_rpc_requests_total`, `sigil_rpc_duration_seconds`). */
  readonly interceptors: readonly ServerInterceptor[];
}

type GrpcFailure = Pick<StatusObject, "code" | "details">;

function failure(code: status, details: string): GrpcFailure {
  return { code, details };
}

/** The exactly-one-`true` rule (WEP-6, SPIRE's interceptor). */
function securityHeaderFailure(md: Metadata): GrpcFailure | undefined {
  const values = md.get(WORKLOAD_API_HEADER);
  if (values.length === 1 && values[0] === "true") return undefined;
  return failure(status.INVALID_ARGUMENT, WORKLOAD_API_MESSAGES.securityHeader);
}

const ATTESTATION_FAILURE_CODES: Readonly<Record<WorkloadAttestationError["reason"], status>> = {
  attestation_failed: status.UNAVAILABLE,
  caller_gone: status.UNAUTHENTICATED,
  caller_changed: status.PERMISSION_DENIED,
  caller_unknown: status.INTERNAL,
};

function attestationFailure(e: unknown): GrpcFailure {
  if (e instanceof WorkloadAttestationError) {
    return failure(ATTESTATION_FAILURE_CODES[e.reason], e.message);
  }
  const se = toServiceError(e);
  return failure(se.code, se.details);
}

function toFailure(e: unknown): GrpcFailure {
  const se = toServiceError(e);
  return failure(se.code, se.details);
}

/**
 * Creates the Workload API handlers.
 *
 * @example
 * ```ts
 * const handler = createWorkloadApiHandler({ cache, attest, trustDomain: parseTrustDomain("example.org"), log, metrics });
 * await startWorkloadEndpoint({ socketPath, handler, peers, log });
 * ```
 */
export function createWorkloadApiHandler(options: WorkloadApiHandlerOptions): WorkloadApiHandler {
  const { cache, trustDomain, metrics } = options;
  const log = options.log;
  const clock = options.clock ?? systemClock;
  const x509Enabled = options.profiles?.x509 ?? true;
  const jwtEnabled = options.profiles?.jwt ?? true;
  const allowUnauthenticated = options.allowUnauthenticatedVerifiers ?? false;
  const attestDuration = metrics.histogram({
    name: "sigil_workload_attestation_duration_seconds",
    help: "Time to attest a Workload API caller, by outcome (ok, failed, caller_gone, caller_changed, caller_unknown).",
    labelNames: ["outcome"],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  });
  const noIdentityCounter = metrics.counter({
    name: "sigil_workload_api_no_identity_total",
    help: "Workload API calls refused because the caller matched no registration entry, by method.",
    labelNames: ["method"],
  });

  /** Common checks; returns the caller's selectors, or a failure to answer with. */
  async function admit(
    call: { getPeer(): string; metadata: Metadata },
    profileEnabled: boolean,
    profileName: string,
    requestCheck?: () => GrpcFailure | undefined,
  ): Promise<{ caller: AttestedCaller; selectors: readonly Selector[] } | { failure: GrpcFailure }> {
    const header = securityHeaderFailure(call.metadata);
    if (header !== undefined) return { failure: header };
    if (!profileEnabled) return { failure: failure(status.UNIMPLEMENTED, `${profileName} profile is disabled on this agent`) };
    const bad = requestCheck?.();
    if (bad !== undefined) return { failure: bad };
    if (!cache.ready()) return { failure: failure(status.UNAVAILABLE, WORKLOAD_API_MESSAGES.notReady) };
    const start = performance.now();
    try {
      const caller = await options.attest(call.getPeer());
      attestDuration.observe({ outcome: "ok" }, (performance.now() - start) / 1000);
      return { caller, selectors: caller.selectors };
    } catch (e) {
      const outcome = e instanceof WorkloadAttestationError ? (e.reason === "attestation_failed" ? "failed" : e.reason) : "failed";
      attestDuration.observe({ outcome }, (performance.now() - start) / 1000);
      return { failure: attestationFailure(e) };
    }
  }

  function logNoIdentity(method: string, callPeer: string, selectors: readonly Selector[]): void {
    noIdentityCounter.inc({ method });
    // Registration mistakes are the usual cause: show what the caller looks like.
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
  }

  function logNotes(method: string, notes: readonly ResponseNote[]): void {
    for (const n of notes) log.warn({ method, entry_id: n.entryId }, `Workload API: ${n.message}`);
  }

  /**
   * Runs a server stream: `compute` gives the current message, `undefined`
   * meaning "no identity" (the stream ends PermissionDenied), or throws (the
   * stream ends with the mapped status). Recomputed after every cache change;
   * an identical message is not sent again. Before each message the caller is
   * re-checked: one that exited or exec'd into another owner since it was
   * attested gets its stream ended instead.
   */
  function runStream<D extends DescMessage>(
    call: ServerWritableStream<unknown, MessageShape<D>>,
    method: string,
    schema: D,
    caller: AttestedCaller,
    compute: () => MessageShape<D> | undefined | typeof PENDING,
  ): void {
    const { selectors } = caller;
    // The client may have gone while it was being attested.
    if (call.cancelled) return;
    // Read once: the socket behind getPeer() may be gone by the time the last identity is.
    const callPeer = call.getPeer();
    let last: MessageShape<D> | undefined;
    let done = false;
    let scheduled = false;
    // While a message is still on its way (the client reads slowly, or not at all), updates are not
    // queued behind it: each message is the complete state, so once it is out the latest is computed
    // and sent. The agent holds at most one message per stream.
    let sending = false;
    let missed = false;
    let unsubscribe: (() => void) | undefined;
    const finish = (f: GrpcFailure | undefined): void => {
      if (done) return;
      done = true;
      unsubscribe?.();
      if (call.cancelled) return;
      if (f === undefined) call.end();
      else call.emit("error", { ...f, metadata: new Metadata() });
    };
    const push = (): void => {
      if (done) return;
      let msg: MessageShape<D> | undefined | typeof PENDING;
      try {
        msg = compute();
      } catch (e) {
        log.error({ method, err: e }, "Workload API stream update failed");
        finish(toFailure(e));
        return;
      }
      // The caller's view is incomplete until the new SVID arrives; the next cache change recomputes it.
      if (msg === PENDING) return;
      if (msg === undefined) {
        logNoIdentity(method, callPeer, selectors);
        finish(failure(status.PERMISSION_DENIED, WORKLOAD_API_MESSAGES.noIdentity));
        return;
      }
      if (last !== undefined && equals(schema, last, msg)) return;
      if (sending) {
        missed = true;
        return;
      }
      try {
        caller.recheck();
      } catch (e) {
        log.warn({ method, caller: callPeer }, "Workload API stream ended: its caller changed since it was attested");
        finish(attestationFailure(e));
        return;
      }
      last = msg;
      sending = true;
      call.write(msg, () => {
        sending = false;
        if (!missed) return;
        missed = false;
        push();
      });
    };
    call.on("cancelled", () => finish(undefined));
    // Changes often come in bursts (a sync rotates many SVIDs): recompute once per burst.
    unsubscribe = cache.subscribe(() => {
      if (scheduled || done) return;
      scheduled = true;
      queueMicrotask(() => {
        scheduled = false;
        push();
      });
    });
    push();
  }

  /** Last resort for a stream handler that threw: log it and end the call. */
  function streamCrash(call: ServerWritableStream<unknown, unknown>): (e: unknown) => void {
    return (e) => {
      log.error({ method: call.getPath(), err: e }, "Workload API stream handler failed");
      if (!call.cancelled) streamFailure(call, toFailure(e));
    };
  }

  function streamFailure(call: ServerWritableStream<unknown, unknown>, f: GrpcFailure): void {
    call.emit("error", { ...f, metadata: new Metadata() });
  }

  function unaryFailure<T>(callback: sendUnaryData<T>, f: GrpcFailure): void {
    callback({ ...f, metadata: new Metadata() });
  }

  /** The identities a caller may receive, hints de-duplicated. */
  function identitiesOf(selectors: readonly Selector[], notes: ResponseNote[]): CachedIdentity[] {
    return selectIdentities(cache.identitiesFor(selectors), notes);
  }

  /** True while an entry of the caller has no SVID for its current revision (just created or edited). */
  function pending(selectors: readonly Selector[]): boolean {
    return (cache.pendingFor?.(selectors).length ?? 0) > 0;
  }

  /** Bundle streams: own + federated; callers without identity only when allowed (A15). */
  function bundleView(selectors: readonly Selector[]): { identities: CachedIdentity[]; bundles: BundleSnapshot } | undefined | typeof PENDING {
    if (pending(selectors)) return PENDING;
    const identities = identitiesOf(selectors, []);
    if (identities.length === 0 && !allowUnauthenticated) return undefined;
    return { identities, bundles: cache.bundles() };
  }

  const implementation: GrpcServiceImplementation<WorkloadApiMethods> = {
    fetchX509SVID(call) {
      const method = "FetchX509SVID";
      void admit(call, x509Enabled, "X509-SVID").then((r) => {
        if ("failure" in r) return streamFailure(call, r.failure);
        runStream(call, method, X509SVIDResponseSchema, r.caller, () => {
          if (pending(r.selectors)) return PENDING;
          const notes: ResponseNote[] = [];
          const identities = identitiesOf(r.selectors, notes);
          const resp = identities.length === 0 ? undefined : buildX509SvidResponse(identities, cache.bundles(), trustDomain, notes);
          logNotes(method, notes);
          return resp;
        });
      }).catch(streamCrash(call));
    },

    fetchX509Bundles(call) {
      const method = "FetchX509Bundles";
      void admit(call, x509Enabled, "X509-SVID").then((r) => {
        if ("failure" in r) return streamFailure(call, r.failure);
        runStream(call, method, X509BundlesResponseSchema, r.caller, () => {
          const view = bundleView(r.selectors);
          return view === undefined || view === PENDING ? view : buildX509BundlesResponse(view.identities, view.bundles, trustDomain);
        });
      }).catch(streamCrash(call));
    },

    fetchJWTBundles(call) {
      const method = "FetchJWTBundles";
      void admit(call, jwtEnabled, "JWT-SVID").then((r) => {
        if ("failure" in r) return streamFailure(call, r.failure);
        runStream(call, method, JWTBundlesResponseSchema, r.caller, () => {
          const view = bundleView(r.selectors);
          return view === undefined || view === PENDING ? view : buildJwtBundlesResponse(view.identities, view.bundles, trustDomain);
        });
      }).catch(streamCrash(call));
    },

    fetchJWTSVID(call: ServerUnaryCall<JWTSVIDRequest, JWTSVIDResponse>, callback: sendUnaryData<JWTSVIDResponse>) {
      const method = "FetchJWTSVID";
      const req = call.request;
      let requested: string | undefined;
      const check = (): GrpcFailure | undefined => {
        if (req.audience.length === 0) return failure(status.INVALID_ARGUMENT, WORKLOAD_API_MESSAGES.audience);
        if (req.audience.some((a) => a === "")) return failure(status.INVALID_ARGUMENT, WORKLOAD_API_MESSAGES.audienceEmptyValue);
        if (req.spiffeId !== "") {
          try {
            requested = parseSpiffeId(req.spiffeId).toString();
          } catch (e) {
            return failure(status.INVALID_ARGUMENT, `invalid requested SPIFFE ID: ${isSigilError(e) ? e.message : String(e)}`);
          }
        }
        return undefined;
      };
      void (async () => {
        const r = await admit(call, jwtEnabled, "JWT-SVID", check);
        if ("failure" in r) return unaryFailure(callback, r.failure);
        // An entry the caller matches is being (re)issued: its old SVID is gone and the new one is not there yet.
        const waiting = (cache.pendingFor?.(r.selectors) ?? []).filter((e) => requested === undefined || e.spiffeId === requested);
        if (waiting.length > 0) {
          log.info({ method, entry_ids: waiting.map((e) => e.id) }, "Caller's identity is being issued after a registration change; answering Unavailable");
          return unaryFailure(callback, failure(status.UNAVAILABLE, WORKLOAD_API_MESSAGES.identityPending));
        }
        const notes: ResponseNote[] = [];
        const all = cache.identitiesFor(r.selectors);
        const matching = selectIdentities(
          requested === undefined ? all : all.filter((i) => i.entry.spiffeId === requested),
          notes,
        );
        logNotes(method, notes);
        if (matching.length === 0) {
          logNoIdentity(method, call.getPeer(), r.selectors);
          if (requested !== undefined && all.length > 0) log.warn({ method, requested }, "Caller is not entitled to the requested SPIFFE ID");
          return unaryFailure(callback, failure(status.PERMISSION_DENIED, WORKLOAD_API_MESSAGES.noIdentity));
        }
        const svids: JWTSVID[] = [];
        const seen = new Set<string>();
        try {
          for (const { entry } of matching) {
            // One token per SPIFFE ID: two entries naming the same ID would yield interchangeable tokens.
            if (seen.has(entry.spiffeId)) continue;
            seen.add(entry.spiffeId);
            const jwt = await cache.fetchJwtSvid(entry.id, req.audience);
            svids.push(create(JWTSVIDSchema, { spiffeId: jwt.spiffeId, svid: jwt.token, hint: entry.hint }));
          }
        } catch (e) {
          log.error({ method, err: e }, "Could not get a JWT-SVID for the caller");
          return unaryFailure(callback, toFailure(e));
        }
        callback(null, create(JWTSVIDResponseSchema, { svids }));
      })().catch((e: unknown) => unaryFailure(callback, toFailure(e)));
    },

    validateJWTSVID(call: ServerUnaryCall<ValidateJWTSVIDRequest, ValidateJWTSVIDResponse>, callback: sendUnaryData<ValidateJWTSVIDResponse>) {
      const method = "ValidateJWTSVID";
      const req = call.request;
      const check = (): GrpcFailure | undefined => {
        if (req.audience === "") return failure(status.INVALID_ARGUMENT, WORKLOAD_API_MESSAGES.audience);
        if (req.svid === "") return failure(status.INVALID_ARGUMENT, WORKLOAD_API_MESSAGES.svid);
        return undefined;
      };
      void (async () => {
        const r = await admit(call, jwtEnabled, "JWT-SVID", check);
        if ("failure" in r) return unaryFailure(callback, r.failure);
        // A verifier needs no identity of its own; its entries only widen the federated bundles it trusts (as in SPIRE).
        const bundles = cache.bundles();
        const identities = cache.identitiesFor(r.selectors);
        const source = new BundleSet([bundles.own, ...federatedBundlesFor(identities, bundles, trustDomain)]);
        let svid: JwtSvid;
        try {
          svid = validateJwtSvid(req.svid, source, { audience: req.audience, now: clock.now() });
        } catch (e) {
          const message = isSigilError(e) ? e.message : "token validation failed";
          log.debug({ method, reason: message }, "JWT-SVID rejected");
          return unaryFailure(callback, failure(status.INVALID_ARGUMENT, message));
        }
        callback(
          null,
          create(ValidateJWTSVIDResponseSchema, {
            spiffeId: svid.spiffeId.toString(),
            claims: validatedClaims(svid, trustDomain, options.allowedForeignJwtClaims),
          }),
        );
      })().catch((e: unknown) => unaryFailure(callback, toFailure(e)));
    },

    fetchWITSVID(call) {
      streamFailure(call, securityHeaderFailure(call.metadata) ?? failure(status.UNIMPLEMENTED, WORKLOAD_API_MESSAGES.witUnimplemented));
    },

    fetchWITBundles(call) {
      streamFailure(call, securityHeaderFailure(call.metadata) ?? failure(status.UNIMPLEMENTED, WORKLOAD_API_MESSAGES.witUnimplemented));
    },
  };

  return {
    definition: grpcServiceDefinition(SpiffeWorkloadAPI),
    implementation,
    interceptors: [rpcMetricsInterceptor(metrics)],
  };
}
