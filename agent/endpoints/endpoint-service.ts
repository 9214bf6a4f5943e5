/**
 * The Workload Endpoint as a service (`workload-endpoint`): at start the
 * configured workload attestors are created, the Workload API is built on the
 * shared admission (peer tracker → attester) and the socket is bound; at stop
 * the socket is closed, open streams cancelled and gRPC health shut down.
 * Envoy SDS (unless `agent.sds.disable_sds_api`) joins the Workload API here,
 * on the same socket, with the same attester.
 */
import type { Clock } from "../../common/clock.js";
import type { HealthService } from "../../common/health/grpc-health.js";
import { subsystemLogger, type Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import type { Service } from "../../common/service.js";
import { createPlugins, PLUGIN_CATALOG, type PluginSection } from "../../plugins/catalog.js";
import { OwnedPlugins } from "../../plugins/descriptor.js";
import { SigilError } from "../../spiffe/errors.js";
import type { TrustDomain } from "../../spiffe/id.js";
import { createCallerAttester } from "../attestation/workload.js";
import type { WorkloadCache } from "../cache/types.js";
import { createPeerTracker, startWorkloadEndpoint, type WorkloadEndpoint } from "./server.js";
import { createSdsHandler, SDS_MAX_REQUEST_BYTES } from "./sds/handler.js";
import { DEFAULT_SDS_NAMES, type SdsNames } from "./sds/secrets.js";
import { createWorkloadApiHandler } from "./workload-api/handler.js";
import type { DeliveryRecorder } from "../cache/deliveries.js";

/** Dependencies of the {@link WorkloadEndpointService}. */
export interface WorkloadEndpointServiceDeps {
  /** Absolute path of the socket (`agent.socket_path`). */
  readonly socketPath: string;
  readonly cache: WorkloadCache;
  /** Told of every SVID handed to a workload (pick-up reporting); omitted: not recorded. */
  readonly deliveries?: DeliveryRecorder | undefined;
  readonly trustDomain: TrustDomain;
  /** `plugins.WorkloadAttestor`: every configured attestor runs on each caller; their selectors are combined. */
  readonly workloadAttestors: PluginSection | undefined;
  /** `agent.workload_attestation_timeout`. */
  readonly attestationTimeoutMs: number;
  /** `agent.max_workload_connections_per_uid`. */
  readonly maxConnectionsPerUid: number;
  /** `agent.max_workload_calls_per_uid`. */
  readonly maxCallsPerUid: number;
  /** `agent.allow_unauthenticated_verifiers`. */
  readonly allowUnauthenticatedVerifiers: boolean;
  /** `agent.sds`: Envoy SDS on the same socket unless `disabled`; default on, with SPIRE's names. */
  readonly sds?: SdsNames & { readonly disabled: boolean; readonly disableSpiffeCertValidation: boolean };
  /** `grpc.health.v1.Health` on the socket. */
  readonly health: HealthService;
  readonly metrics: Metrics;
  readonly clock: Clock;
  /** The agent's logger; subsystem loggers are derived from it. */
  readonly log: Logger;
}

/** The `workload-endpoint` service; see the module comment. */
export class WorkloadEndpointService implements Service {
  readonly name = "workload-endpoint";
  readonly #d: WorkloadEndpointServiceDeps;
  #endpoint: WorkloadEndpoint | undefined;
  /** The WorkloadAttestor instances. */
  readonly #plugins: OwnedPlugins;

  constructor(deps: WorkloadEndpointServiceDeps) {
    this.#d = deps;
    this.#plugins = new OwnedPlugins(deps.log);
  }

  /** The running endpoint, once started. */
  get endpoint(): WorkloadEndpoint {
    if (this.#endpoint === undefined) throw new SigilError("ERR_UNAVAILABLE", "workload endpoint: not started");
    return this.#endpoint;
  }

  start(): Promise<void> {
    return this.#plugins.starting(() => this.#start());
  }

  async #start(): Promise<void> {
    const d = this.#d;
    const attestors = this.#plugins.add(createPlugins("agent", PLUGIN_CATALOG.WorkloadAttestor, d.workloadAttestors, { log: subsystemLogger(d.log, "workload_attestor") }));
    const endpointLog = subsystemLogger(d.log, "endpoints");
    const peers = createPeerTracker({ maxConnectionsPerUid: d.maxConnectionsPerUid, log: endpointLog });
    const attest = createCallerAttester({
      resolvePeer: (p) => peers.lookup(p),
      attestors,
      timeoutMs: d.attestationTimeoutMs,
      log: subsystemLogger(d.log, "workload_attestation"),
    });
    const workloadApi = createWorkloadApiHandler({
      cache: d.cache,
      attest,
      trustDomain: d.trustDomain,
      log: subsystemLogger(d.log, "workload_api"),
      metrics: d.metrics,
      allowUnauthenticatedVerifiers: d.allowUnauthenticatedVerifiers,
      clock: d.clock,
      deliveries: d.deliveries,
    });
    // SDS shares the attester, so the same caller pinning applies on both APIs.
    const sdsConfig = d.sds ?? { ...DEFAULT_SDS_NAMES, disabled: false, disableSpiffeCertValidation: false };
    const sds = sdsConfig.disabled
      ? undefined
      : createSdsHandler({ cache: d.cache, attest, trustDomain: d.trustDomain, names: sdsConfig, disableSpiffeCertValidation: sdsConfig.disableSpiffeCertValidation, deliveries: d.deliveries, log: subsystemLogger(d.log, "sds"), metrics: d.metrics });
    this.#endpoint = await startWorkloadEndpoint({
      socketPath: d.socketPath,
      services: sds === undefined ? [workloadApi] : [workloadApi, sds],
      ...(sds === undefined ? {} : { maxRequestBytes: SDS_MAX_REQUEST_BYTES }),
      peers,
      health: d.health,
      maxCallsPerUid: d.maxCallsPerUid,
      metrics: d.metrics,
      log: endpointLog,
    });
  }

  /** Closes the socket (open streams are cancelled; clients reconnect elsewhere) and shuts gRPC health down, then closes the WorkloadAttestor plugins. */
  async stop(): Promise<void> {
    try {
      await this.#endpoint?.close();
    } finally {
      await this.#plugins.close();
    }
  }
}
