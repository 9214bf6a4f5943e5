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
 *
 * What every API on the Workload Endpoint shares lives beside this folder:
 * caller admission (readiness, attestation, its metrics, the "no identity"
 * log) in `../admission.ts`, and streams that follow the cache (re-check
 * before each message, one message in flight, dedupe) in `../stream-watch.ts`.
 * This file adds the security header, the profiles, request checks and the
 * Workload API's messages.
 */
import { create } from "@bufbuild/protobuf";
import type { GenService } from "@bufbuild/protobuf/codegenv2";
import { status, type Metadata, type sendUnaryData, type ServerUnaryCall, type ServerWritableStream } from "@grpc/grpc-js";
import type { Logger } from "../../../common/log.js";
import type { Metrics } from "../../../common/metrics.js";
import type { Selector } from "../../../common/selector.js";
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
import type { AttestedCaller } from "../../attestation/workload.js";
import type { DeliveryRecorder } from "../../cache/deliveries.js";
import type { BundleSnapshot, CachedIdentity, WorkloadCache } from "../../cache/types.js";
import { ADMISSION_MESSAGES, callFailure, createEndpointAdmission, errorFailure, failStream, failUnary, type Admission, type CallFailure } from "../admission.js";
import type { EndpointService } from "../server.js";
import { createStreamWatcher, PENDING } from "../stream-watch.js";
import {
  buildJwtBundlesResponse,
  buildX509BundlesResponse,
  federatedBundlesFor,
  selectIdentities,
  validatedClaims,
  x509SvidResponseFor,
  type ResponseNote,
} from "./responses.js";

/** The protobuf-es method map of `SpiffeWorkloadAPI`. */
export type WorkloadApiMethods = typeof SpiffeWorkloadAPI extends GenService<infer S> ? S : never;

/** Status messages callers see; SPIRE's wording where SPIRE has one. */
export const WORKLOAD_API_MESSAGES = {
  securityHeader: "security header missing from request",
  notReady: ADMISSION_MESSAGES.notReady,
  noIdentity: ADMISSION_MESSAGES.noIdentity,
  audience: "audience must be specified",
  audienceEmptyValue: "audience must not contain empty values",
  svid: "svid must be specified",
  witUnimplemented: "WIT-SVID profile is not supported",
  identityPending: "an identity of the caller is being issued after a registration change; retry",
} as const;

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
  /** Receives the admission's attestation and no-identity metrics; RPC counts are the endpoint's. */
  readonly metrics: Metrics;
  /** Serve bundles (own trust domain only) to callers with no identity (SPIRE's `allow_unauthenticated_verifiers`, A15). Default false. */
  readonly allowUnauthenticatedVerifiers?: boolean;
  /** Non-standard claims returned when validating tokens of a foreign trust domain (SPIRE's `allowed_foreign_jwt_claims`). */
  readonly allowedForeignJwtClaims?: readonly string[];
  /** Default: both profiles on. */
  readonly profiles?: WorkloadApiProfiles;
  /** Time for JWT-SVID validation; default the system clock. */
  readonly clock?: Clock;
  /** Told of every SVID about to be sent to a workload (pick-up reporting). */
  readonly deliveries?: DeliveryRecorder | undefined;
}

/** The Workload API as a service to put on the Workload Endpoint. */
export interface WorkloadApiHandler extends EndpointService {
  readonly definition: GrpcServiceDefinition<WorkloadApiMethods>;
  readonly implementation: GrpcServiceImplementation<WorkloadApiMethods>;
}

/** The log and status prefix naming this API. */
const API = "Workload API";

/** The exactly-one-`true` rule (WEP-6, SPIRE's interceptor); the one check other APIs on the endpoint do not make. */
function securityHeaderFailure(md: Metadata): CallFailure | undefined {
  const values = md.get(WORKLOAD_API_HEADER);
  if (values.length === 1 && values[0] === "true") return undefined;
  return callFailure(status.INVALID_ARGUMENT, WORKLOAD_API_MESSAGES.securityHeader);
}

/**
 * Creates the Workload API handlers.
 *
 * @example
 * ```ts
 * const handler = createWorkloadApiHandler({ cache, attest, trustDomain: parseTrustDomain("example.org"), log, metrics });
 * await startWorkloadEndpoint({ socketPath, services: [handler], peers, metrics, log });
 * ```
 */
export function createWorkloadApiHandler(options: WorkloadApiHandlerOptions): WorkloadApiHandler {
  const { cache, trustDomain, metrics } = options;
  const log = options.log;
  const clock = options.clock ?? systemClock;
  const x509Enabled = options.profiles?.x509 ?? true;
  const jwtEnabled = options.profiles?.jwt ?? true;
  const allowUnauthenticated = options.allowUnauthenticatedVerifiers ?? false;
  const admission = createEndpointAdmission({ cache, attest: options.attest, log, metrics });
  const streams = createStreamWatcher({ api: API, cache, noIdentity: admission.noIdentity, log });

  /**
   * The Workload API's own checks (security header, profile, request fields),
   * then the endpoint's admission (synced, caller attested).
   */
  async function admit(
    call: { getPeer(): string; metadata: Metadata },
    profileEnabled: boolean,
    profileName: string,
    requestCheck?: () => CallFailure | undefined,
  ): Promise<Admission> {
    const header = securityHeaderFailure(call.metadata);
    if (header !== undefined) return { failure: header };
    if (!profileEnabled) return { failure: callFailure(status.UNIMPLEMENTED, `${profileName} profile is disabled on this agent`) };
    const bad = requestCheck?.();
    if (bad !== undefined) return { failure: bad };
    return admission.admit(call);
  }

  function logNotes(method: string, notes: readonly ResponseNote[]): void {
    for (const n of notes) log.warn({ method, entry_id: n.entryId }, `${API}: ${n.message}`);
  }

  /** Last resort for a stream handler that threw: log it and end the call. */
  function streamCrash(call: ServerWritableStream<unknown, unknown>): (e: unknown) => void {
    return (e) => {
      log.error({ method: call.getPath(), err: e }, `${API} stream handler failed`);
      if (!call.cancelled) failStream(call, errorFailure(e));
    };
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
        if ("failure" in r) return failStream(call, r.failure);
        const { selectors } = r.caller;
        streams.watch(call, method, X509SVIDResponseSchema, r.caller, () => {
          if (pending(selectors)) return PENDING;
          const notes: ResponseNote[] = [];
          const identities = identitiesOf(selectors, notes);
          // The response's own notes name the SVIDs it leaves out.
          const notSent: ResponseNote[] = [];
          const resp = identities.length === 0 ? undefined : x509SvidResponseFor(identities, cache.bundles(), trustDomain, notSent);
          logNotes(method, [...notes, ...notSent]);
          if (resp !== undefined && options.deliveries !== undefined) {
            const skipped = new Set(notSent.map((n) => n.entryId));
            options.deliveries.x509(identities.filter((i) => !skipped.has(i.entry.id)).map((i) => i.svid));
          }
          return resp;
        });
      }).catch(streamCrash(call));
    },

    fetchX509Bundles(call) {
      const method = "FetchX509Bundles";
      void admit(call, x509Enabled, "X509-SVID").then((r) => {
        if ("failure" in r) return failStream(call, r.failure);
        const { selectors } = r.caller;
        streams.watch(call, method, X509BundlesResponseSchema, r.caller, () => {
          const view = bundleView(selectors);
          return view === undefined || view === PENDING ? view : buildX509BundlesResponse(view.identities, view.bundles, trustDomain);
        });
      }).catch(streamCrash(call));
    },

    fetchJWTBundles(call) {
      const method = "FetchJWTBundles";
      void admit(call, jwtEnabled, "JWT-SVID").then((r) => {
        if ("failure" in r) return failStream(call, r.failure);
        const { selectors } = r.caller;
        streams.watch(call, method, JWTBundlesResponseSchema, r.caller, () => {
          const view = bundleView(selectors);
          return view === undefined || view === PENDING ? view : buildJwtBundlesResponse(view.identities, view.bundles, trustDomain);
        });
      }).catch(streamCrash(call));
    },

    fetchJWTSVID(call: ServerUnaryCall<JWTSVIDRequest, JWTSVIDResponse>, callback: sendUnaryData<JWTSVIDResponse>) {
      const method = "FetchJWTSVID";
      const req = call.request;
      let requested: string | undefined;
      const check = (): CallFailure | undefined => {
        if (req.audience.length === 0) return callFailure(status.INVALID_ARGUMENT, WORKLOAD_API_MESSAGES.audience);
        if (req.audience.some((a) => a === "")) return callFailure(status.INVALID_ARGUMENT, WORKLOAD_API_MESSAGES.audienceEmptyValue);
        if (req.spiffeId !== "") {
          try {
            requested = parseSpiffeId(req.spiffeId).toString();
          } catch (e) {
            return callFailure(status.INVALID_ARGUMENT, `invalid requested SPIFFE ID: ${isSigilError(e) ? e.message : String(e)}`);
          }
        }
        return undefined;
      };
      void (async () => {
        const r = await admit(call, jwtEnabled, "JWT-SVID", check);
        if ("failure" in r) return failUnary(callback, r.failure);
        const { selectors } = r.caller;
        // An entry the caller matches is being (re)issued: its old SVID is gone and the new one is not there yet.
        const waiting = (cache.pendingFor?.(selectors) ?? []).filter((e) => requested === undefined || e.spiffeId === requested);
        if (waiting.length > 0) {
          log.info({ method, entry_ids: waiting.map((e) => e.id) }, "Caller's identity is being issued after a registration change; answering Unavailable");
          return failUnary(callback, callFailure(status.UNAVAILABLE, WORKLOAD_API_MESSAGES.identityPending));
        }
        const notes: ResponseNote[] = [];
        const all = cache.identitiesFor(selectors);
        const matching = selectIdentities(
          requested === undefined ? all : all.filter((i) => i.entry.spiffeId === requested),
          notes,
        );
        logNotes(method, notes);
        if (matching.length === 0) {
          const refused = admission.noIdentity(method, call.getPeer(), selectors);
          if (requested !== undefined && all.length > 0) log.warn({ method, requested }, "Caller is not entitled to the requested SPIFFE ID");
          return failUnary(callback, refused);
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
          return failUnary(callback, errorFailure(e));
        }
        for (const s of svids) options.deliveries?.jwt(s.svid);
        callback(null, create(JWTSVIDResponseSchema, { svids }));
      })().catch((e: unknown) => failUnary(callback, errorFailure(e)));
    },

    validateJWTSVID(call: ServerUnaryCall<ValidateJWTSVIDRequest, ValidateJWTSVIDResponse>, callback: sendUnaryData<ValidateJWTSVIDResponse>) {
      const method = "ValidateJWTSVID";
      const req = call.request;
      const check = (): CallFailure | undefined => {
        if (req.audience === "") return callFailure(status.INVALID_ARGUMENT, WORKLOAD_API_MESSAGES.audience);
        if (req.svid === "") return callFailure(status.INVALID_ARGUMENT, WORKLOAD_API_MESSAGES.svid);
        return undefined;
      };
      void (async () => {
        const r = await admit(call, jwtEnabled, "JWT-SVID", check);
        if ("failure" in r) return failUnary(callback, r.failure);
        // A verifier needs no identity of its own; its entries only widen the federated bundles it trusts (as in SPIRE).
        const bundles = cache.bundles();
        const identities = cache.identitiesFor(r.caller.selectors);
        const source = new BundleSet([bundles.own, ...federatedBundlesFor(identities, bundles, trustDomain)]);
        let svid: JwtSvid;
        try {
          svid = validateJwtSvid(req.svid, source, { audience: req.audience, now: clock.now() });
        } catch (e) {
          const message = isSigilError(e) ? e.message : "token validation failed";
          log.debug({ method, reason: message }, "JWT-SVID rejected");
          return failUnary(callback, callFailure(status.INVALID_ARGUMENT, message));
        }
        callback(
          null,
          create(ValidateJWTSVIDResponseSchema, {
            spiffeId: svid.spiffeId.toString(),
            claims: validatedClaims(svid, trustDomain, options.allowedForeignJwtClaims),
          }),
        );
      })().catch((e: unknown) => failUnary(callback, errorFailure(e)));
    },

    fetchWITSVID(call) {
      failStream(call, securityHeaderFailure(call.metadata) ?? callFailure(status.UNIMPLEMENTED, WORKLOAD_API_MESSAGES.witUnimplemented));
    },

    fetchWITBundles(call) {
      failStream(call, securityHeaderFailure(call.metadata) ?? callFailure(status.UNIMPLEMENTED, WORKLOAD_API_MESSAGES.witUnimplemented));
    },
  };

  return {
    definition: grpcServiceDefinition(SpiffeWorkloadAPI),
    service: SpiffeWorkloadAPI,
    implementation,
  };
}
