/**
 * Envoy's Secret Discovery Service v3 (`envoy.service.secret.v3.SecretDiscoveryService`)
 * on the Workload Endpoint, beside the Workload API, so service meshes (Envoy,
 * Istio's proxies) get SVIDs and bundles from the same socket.
 *
 * Callers are admitted exactly as Workload API callers (`../admission.ts`):
 * synced agent, attestation from the peer credentials the connection was
 * accepted with, and the same re-check before every message a stream sends,
 * so a caller that exec'd a setuid binary after connecting is refused
 * PermissionDenied. Unlike the Workload API no `workload.spiffe.io` header is
 * asked for (Envoy sends none). A caller with no identity at all is refused
 * PermissionDenied `no identity issued`, as by the Workload API (SPIRE answers
 * InvalidArgument, pitfall A22).
 *
 * - StreamSecrets (bidirectional): the xDS state-of-the-world protocol
 *   (`xds-stream.ts` keeps versions, nonces, ACK and NACK). A response is sent
 *   for the first request, for a request that changes the names, and whenever
 *   the caller's secrets change (rotation, bundle change), on the shared stream
 *   watcher (`../stream-watch.ts`): only when the secrets differ from the last
 *   ones sent, one message in flight. A NACK is logged with its reason; the
 *   rejected secrets are not sent again.
 * - FetchSecrets (unary): the same secrets once, without version or nonce.
 * - DeltaSecrets: Unimplemented.
 *
 * Names and secrets: `secrets.ts`. A name the caller is not entitled to is
 * left out (logged); a request none of whose names can be answered gets no
 * response until one can (Envoy waits for the resource, as for one that does
 * not exist yet).
 */
import { create } from "@bufbuild/protobuf";
import type { GenService } from "@bufbuild/protobuf/codegenv2";
import { status, type sendUnaryData, type ServerDuplexStream, type ServerUnaryCall } from "@grpc/grpc-js";
import type { Logger } from "../../../common/log.js";
import type { Metrics } from "../../../common/metrics.js";
import type { Selector } from "../../../common/selector.js";
import { grpcServiceDefinition, type GrpcServiceDefinition, type GrpcServiceImplementation } from "../../../spiffe/grpc/service.js";
import type { TrustDomain } from "../../../spiffe/id.js";
import {
  DiscoveryResponseSchema,
  type DiscoveryRequest,
  type DiscoveryResponse,
} from "../../../proto/gen/envoy/service/discovery/v3/discovery_pb.js";
import { SecretDiscoveryService } from "../../../proto/gen/envoy/service/secret/v3/sds_pb.js";
import type { AttestedCaller } from "../../attestation/workload.js";
import type { DeliveryRecorder } from "../../cache/deliveries.js";
import type { WorkloadCache } from "../../cache/types.js";
import { callFailure, createEndpointAdmission, errorFailure, failStream, failUnary, type CallFailure } from "../admission.js";
import type { EndpointService } from "../server.js";
import { createStreamWatcher, PENDING, type WatchedStream } from "../stream-watch.js";
import { selectIdentities } from "../workload-api/responses.js";
import { callerViewKey, DEFAULT_SDS_NAMES, SECRET_TYPE_URL, secretsAnswerFor, spiffeValidationFor, type CallerView, type SdsNames } from "./secrets.js";
import { trimNode, XdsStreamState } from "./xds-stream.js";

/**
 * Largest request the endpoint reads while SDS is served. An Envoy's
 * DiscoveryRequest carries its `node` (on every request unless Envoy is told
 * otherwise), which lists every extension compiled into that Envoy (several
 * hundred, some 50 KiB) beside Istio's metadata; the Workload API's 64 KiB
 * would refuse some of them. It doubles what one uid's open calls can make
 * the agent hold (`agent.max_workload_calls_per_uid` × this).
 */
export const SDS_MAX_REQUEST_BYTES = 128 * 1024;

/**
 * Most resource names one request may list. Envoy subscribes to a handful of
 * secrets per stream; a stream's names are kept, and resolved again whenever
 * the caller's secrets change, so tens of thousands of one-character names in
 * a 128 KiB request would cost the agent megabytes per stream and seconds of
 * event loop per cache change across a uid's streams.
 */
export const SDS_MAX_RESOURCE_NAMES = 256;

/** Longest resource name, in UTF-8 bytes: a SPIFFE ID's limit; no longer name can name a secret. */
export const SDS_MAX_RESOURCE_NAME_BYTES = 2048;

/** Longest NACK reason logged, in characters (an Envoy's is a line or two; the rest is cut). */
const LOGGED_REASON_MAX = 1024;
/** Left-out names logged: at most this many, each cut to {@link LOGGED_NAME_MAX} characters (the count is logged whole). */
const LOGGED_NAMES_MAX = 16;
const LOGGED_NAME_MAX = 256;

/** C0 and C1 controls, DEL, the Unicode line and paragraph separators and bidirectional overrides. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;

/**
 * Client-chosen text fit to log: cut to `max` characters (saying how long it
 * was), control characters written as `\uXXXX` (the text log format prints
 * strings without whitespace raw, and a terminal would obey an escape sequence).
 */
function capped(s: string, max: number): string {
  const cut = s.length <= max ? s : `${s.slice(0, max)}… (${s.length} characters)`;
  return cut.replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** The protobuf-es method map of `SecretDiscoveryService`. */
export type SdsMethods = typeof SecretDiscoveryService extends GenService<infer S> ? S : never;

/** Status messages SDS callers see. */
export const SDS_MESSAGES = {
  deltaUnimplemented: "Method is not implemented",
  typeUrl: `type_url must be empty or ${SECRET_TYPE_URL}`,
  tooManyNames: `a request may name at most ${SDS_MAX_RESOURCE_NAMES} resources`,
  nameTooLong: `a resource name may be at most ${SDS_MAX_RESOURCE_NAME_BYTES} bytes`,
  identityPending: "an identity of the caller is being issued after a registration change; retry",
} as const;

/** Options of {@link createSdsHandler}. */
export interface SdsHandlerOptions {
  readonly cache: WorkloadCache;
  /** Attests the caller of a call from its `call.getPeer()` (the Workload API's attester: the same pinning). */
  readonly attest: (callPeer: string) => Promise<AttestedCaller>;
  readonly trustDomain: TrustDomain;
  /** Resource names; default SPIRE's (`default`, `ROOTCA`, `ALL`). */
  readonly names?: SdsNames;
  /** `disable_spiffe_cert_validation`: `ALL` never uses the SPIFFE validator (a node's metadata may override). Default false. */
  readonly disableSpiffeCertValidation?: boolean;
  /** Told of every SVID about to be sent to a workload (pick-up reporting). */
  readonly deliveries?: DeliveryRecorder | undefined;
  readonly log: Logger;
  readonly metrics: Metrics;
}

/** SDS as a service to put on the Workload Endpoint. */
export interface SdsHandler extends EndpointService {
  readonly definition: GrpcServiceDefinition<SdsMethods>;
  readonly implementation: GrpcServiceImplementation<SdsMethods>;
}

/** The log and status prefix naming this API. */
const API = "SDS";

/**
 * Creates the SDS handlers.
 *
 * @example
 * ```ts
 * const sds = createSdsHandler({ cache, attest, trustDomain, log, metrics });
 * await startWorkloadEndpoint({ socketPath, services: [workloadApi, sds], peers, metrics, log });
 * ```
 */
export function createSdsHandler(options: SdsHandlerOptions): SdsHandler {
  const { cache, trustDomain, log, metrics } = options;
  const names = options.names ?? DEFAULT_SDS_NAMES;
  const disabledByConfig = options.disableSpiffeCertValidation ?? false;
  // The secret options with each validator choice: the same objects on every recomputation (memo keys, see secrets.ts).
  const withValidator = { ...names, spiffeCertValidation: true };
  const withoutValidator = { ...names, spiffeCertValidation: false };
  const admission = createEndpointAdmission({ cache, attest: options.attest, log, metrics });
  const streams = createStreamWatcher({ api: API, cache, noIdentity: admission.noIdentity, log });

  /** Why a request is refused (another resource type, too many or too long names), or undefined. */
  function badRequest(req: DiscoveryRequest): CallFailure | undefined {
    if (req.typeUrl !== "" && req.typeUrl !== SECRET_TYPE_URL) return callFailure(status.INVALID_ARGUMENT, SDS_MESSAGES.typeUrl);
    if (req.resourceNames.length > SDS_MAX_RESOURCE_NAMES) return callFailure(status.INVALID_ARGUMENT, SDS_MESSAGES.tooManyNames);
    for (const n of req.resourceNames) {
      if (n.length > SDS_MAX_RESOURCE_NAME_BYTES || Buffer.byteLength(n, "utf8") > SDS_MAX_RESOURCE_NAME_BYTES) return callFailure(status.INVALID_ARGUMENT, SDS_MESSAGES.nameTooLong);
    }
    return undefined;
  }

  /** True for a name that can only be a bundle (`ROOTCA`, `ALL`, `spiffe://<td>` without a path). */
  function bundleName(n: string): boolean {
    return n === names.defaultBundleName || n === names.defaultAllBundlesName || (n.startsWith("spiffe://") && !n.includes("/", "spiffe://".length));
  }

  /** The caller's view, PENDING while an identity it may ask for is being issued, undefined with no identity at all. */
  function viewOf(selectors: readonly Selector[], requested: readonly string[]): CallerView | undefined | typeof PENDING {
    const identities = selectIdentities(cache.identitiesFor(selectors));
    const waiting = (cache.pendingFor?.(selectors).length ?? 0) > 0;
    // Bundles alone are complete while an identity is being issued.
    if (waiting && (requested.length === 0 || !requested.every(bundleName))) return PENDING;
    if (identities.length === 0) return waiting ? PENDING : undefined;
    return { identities, bundles: cache.bundles(), trustDomain };
  }

  function logLeftOut(method: string, callPeer: string, leftOut: readonly string[]): void {
    if (leftOut.length === 0) return;
    const names = leftOut.slice(0, LOGGED_NAMES_MAX).map((n) => capped(n, LOGGED_NAME_MAX));
    log.info({ method, caller: callPeer, names, names_count: leftOut.length }, `${API}: requested secrets not served (unknown, or not the caller's)`);
  }

  const implementation: GrpcServiceImplementation<SdsMethods> = {
    streamSecrets(call: ServerDuplexStream<DiscoveryRequest, DiscoveryResponse>) {
      const method = "StreamSecrets";
      const state = new XdsStreamState();
      const callPeer = call.getPeer();
      // The last request that arrived while the caller was being attested: nothing was sent yet, so it alone says what is wanted.
      let early: DiscoveryRequest | undefined;
      let clientDone = false;
      let watched: WatchedStream | undefined;
      let lastLeftOut = "";
      // Refused while the caller was being attested: ended once admitted.
      let refused: CallFailure | undefined;
      // The nonce of the last NACK logged: an Envoy repeating a NACK is logged once per response.
      let nackLogged: string | undefined;
      // What the last state was computed from: a cache change that leaves the caller's view and names as they were recomputes nothing.
      let lastBasis: { names: readonly string[]; view: string; result: DiscoveryResponse | typeof PENDING } | undefined;
      let validationNode: DiscoveryRequest["node"];
      let validation: boolean | undefined;

      const onRequest = (req: DiscoveryRequest): void => {
        const bad = badRequest(req);
        if (watched === undefined) {
          // Only the last request counts, and only what it needs of the node is kept.
          refused ??= bad;
          early = bad !== undefined || req.node === undefined ? req : { ...req, node: trimNode(req.node) };
          return;
        }
        if (bad !== undefined) return watched.end(bad);
        const v = state.receive(req);
        switch (v.kind) {
          case "stale":
            log.debug({ method, caller: callPeer, nonce: capped(v.nonce, 64) }, `${API}: stale request ignored (an older response's nonce)`);
            return;
          case "nack":
            if (nackLogged === req.responseNonce) {
              log.debug({ method, caller: callPeer, rejected_version: v.rejectedVersion }, `${API}: NACK repeated`);
              break;
            }
            nackLogged = req.responseNonce;
            log.warn(
              {
                method,
                caller: callPeer,
                rejected_version: v.rejectedVersion,
                applied_version: capped(v.appliedVersion, 64),
                code: v.code,
                reason: capped(v.reason, LOGGED_REASON_MAX),
              },
              `${API}: the client rejected the secrets it was sent (NACK); it keeps its last good version`,
            );
            break;
          case "ack":
            log.debug({ method, caller: callPeer, version: v.version }, `${API}: ACK`);
            break;
          case "initial":
            break;
        }
        if (v.namesChanged) watched.refresh();
      };

      call.on("data", onRequest);
      // The client is done asking: the stream ends (xDS clients never half-close a live subscription).
      call.on("end", () => {
        clientDone = true;
        watched?.end();
      });
      call.on("error", () => watched?.end());

      void admission.admit(call).then((r) => {
        if ("failure" in r) return failStream(call, r.failure);
        if (refused !== undefined) return failStream(call, refused);
        const { selectors } = r.caller;
        watched = streams.watch(
          call,
          method,
          DiscoveryResponseSchema,
          r.caller,
          () => {
            const requested = state.names;
            // Nothing asked yet.
            if (requested === undefined) return PENDING;
            const view = viewOf(selectors, requested);
            if (view === undefined || view === PENDING) return view;
            // The node changes only with a request that carries one: its validator choice is read once.
            if (validationNode !== state.node || validation === undefined) {
              validationNode = state.node;
              validation = spiffeValidationFor(state.node, disabledByConfig);
            }
            const spiffeCertValidation = validation;
            const basis = callerViewKey(view, spiffeCertValidation);
            if (lastBasis !== undefined && lastBasis.names === requested && lastBasis.view === basis) return lastBasis.result;
            const answer = secretsAnswerFor(requested, view, spiffeCertValidation ? withValidator : withoutValidator, basis);
            const leftOut = answer.leftOut.length === 0 ? "" : answer.leftOut.join("\n");
            if (leftOut !== lastLeftOut) logLeftOut(method, callPeer, answer.leftOut);
            lastLeftOut = leftOut;
            // Named secrets none of which exist for this caller: no answer (an empty one would make Envoy reject it).
            const result = answer.content.resources.length === 0 && requested.length > 0 ? PENDING : answer.content;
            if (result !== PENDING) options.deliveries?.x509(answer.svids);
            lastBasis = { names: requested, view: basis, result };
            return result;
          },
          (content) => state.stamp(content),
        );
        if (refused !== undefined) return failStream(call, refused);
        if (early !== undefined) onRequest(early);
        early = undefined;
        if (clientDone) watched.end();
      }).catch((e: unknown) => {
        log.error({ method, err: e }, `${API} stream handler failed`);
        if (!call.cancelled) failStream(call, errorFailure(e));
      });
    },

    fetchSecrets(call: ServerUnaryCall<DiscoveryRequest, DiscoveryResponse>, callback: sendUnaryData<DiscoveryResponse>) {
      const method = "FetchSecrets";
      const req = call.request;
      void (async () => {
        const bad = badRequest(req);
        if (bad !== undefined) return failUnary(callback, bad);
        const r = await admission.admit(call);
        if ("failure" in r) return failUnary(callback, r.failure);
        const { selectors } = r.caller;
        const requested = [...new Set(req.resourceNames)];
        const view = viewOf(selectors, requested);
        if (view === PENDING) return failUnary(callback, callFailure(status.UNAVAILABLE, SDS_MESSAGES.identityPending));
        if (view === undefined) return failUnary(callback, admission.noIdentity(method, call.getPeer(), selectors));
        const answer = secretsAnswerFor(requested, view, { ...names, spiffeCertValidation: spiffeValidationFor(req.node, disabledByConfig) });
        logLeftOut(method, call.getPeer(), answer.leftOut);
        options.deliveries?.x509(answer.svids);
        callback(null, create(DiscoveryResponseSchema, { typeUrl: SECRET_TYPE_URL, resources: answer.content.resources }));
      })().catch((e: unknown) => failUnary(callback, errorFailure(e)));
    },

    deltaSecrets(call) {
      failStream(call, callFailure(status.UNIMPLEMENTED, SDS_MESSAGES.deltaUnimplemented));
    },
  };

  return {
    definition: grpcServiceDefinition(SecretDiscoveryService),
    service: SecretDiscoveryService,
    implementation,
  };
}
