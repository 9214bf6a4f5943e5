/**
 * The standard gRPC health service (`grpc.health.v1.Health`: Check, Watch,
 * List), served on the server's and agent's gRPC listeners so Kubernetes
 * gRPC probes, `grpc_health_probe` and `sigil-server healthcheck` work
 * unchanged. Status is kept per service name; `""` is the whole server.
 * A status may carry a reason (why NOT_SERVING): Check sends it in the
 * trailing metadata {@link HEALTH_REASON_METADATA_KEY}, which standard clients
 * ignore and `sigil-agent healthcheck` prints.
 */
import { Metadata, status as grpcStatus, type Server, type ServerWritableStream } from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import type { GenService } from "@bufbuild/protobuf/codegenv2";
import {
  Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus,
  HealthListResponseSchema,
  type HealthCheckRequest,
  type HealthCheckResponse,
} from "../../proto/gen/grpc/health/v1/health_pb.js";
import { grpcServiceDefinition, type GrpcServiceDefinition, type GrpcServiceImplementation } from "../../spiffe/grpc/service.js";

/** A serving status, as named by the protocol. */
export type ServingStatus = "UNKNOWN" | "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

/** A status a service can be set to (`SERVICE_UNKNOWN` only describes a name nobody set). */
export type SettableServingStatus = Exclude<ServingStatus, "SERVICE_UNKNOWN">;

/** The protobuf-es method map of `grpc.health.v1.Health`. */
export type HealthMethods = typeof Health extends GenService<infer S> ? S : never;

/** Trailing-metadata key (binary: UTF-8 text) of the reason a Check answer carries. */
export const HEALTH_REASON_METADATA_KEY = "sigil-health-reason-bin";

/** Most services {@link HealthService} lists; more is refused with RESOURCE_EXHAUSTED, as in grpc-health-check. */
export const MAX_LISTED_SERVICES = 100;

const TO_WIRE: Readonly<Record<ServingStatus, HealthCheckResponse_ServingStatus>> = {
  UNKNOWN: HealthCheckResponse_ServingStatus.UNKNOWN,
  SERVING: HealthCheckResponse_ServingStatus.SERVING,
  NOT_SERVING: HealthCheckResponse_ServingStatus.NOT_SERVING,
  SERVICE_UNKNOWN: HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN,
};

/** The {@link ServingStatus} name of a wire value. */
export function servingStatusName(wire: number): ServingStatus {
  switch (wire) {
    case HealthCheckResponse_ServingStatus.SERVING:
      return "SERVING";
    case HealthCheckResponse_ServingStatus.NOT_SERVING:
      return "NOT_SERVING";
    case HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN:
      return "SERVICE_UNKNOWN";
    default:
      return "UNKNOWN";
  }
}

function response(s: ServingStatus): HealthCheckResponse {
  return create(HealthCheckResponseSchema, { status: TO_WIRE[s] });
}

/** A settable health service; add it to a grpc-js server with {@link addHealthService}. */
export interface HealthService {
  /** The grpc-js service definition (paths `/grpc.health.v1.Health/<Method>`). */
  readonly definition: GrpcServiceDefinition<HealthMethods>;
  /** The handlers. */
  readonly implementation: GrpcServiceImplementation<HealthMethods>;
  /**
   * Sets a service's status, with an optional reason for operators, and
   * notifies its watchers. Ignored after {@link HealthService.shutdown}.
   */
  setStatus(service: string, status: SettableServingStatus, reason?: string): void;
  /** Forgets a service: Check answers NOT_FOUND, watchers see SERVICE_UNKNOWN. */
  clearStatus(service: string): void;
  /** A service's status, or `undefined` when it was never set. */
  getStatus(service: string): SettableServingStatus | undefined;
  /** The reason given with a service's status, if any. */
  getReason(service: string): string | undefined;
  /**
   * Marks every service NOT_SERVING, tells watchers, ends their streams, and
   * freezes the statuses: call before shutting the gRPC server down, so
   * open Watch streams do not hold it open.
   */
  shutdown(): void;
}

/**
 * Creates a health service. The overall status (`""`) starts as given in
 * `initial`, or SERVING when not given.
 *
 * @example
 * ```ts
 * const health = createHealthService();
 * addHealthService(server, health);
 * health.setStatus("sigil.agent.v1.Agent", "NOT_SERVING");
 * ```
 */
export function createHealthService(initial: Readonly<Record<string, SettableServingStatus>> = { "": "SERVING" }): HealthService {
  const statuses = new Map<string, SettableServingStatus>(Object.entries(initial));
  const reasons = new Map<string, string>();
  const watchers = new Map<string, Set<ServerWritableStream<HealthCheckRequest, HealthCheckResponse>>>();
  const lastSent = new WeakMap<object, ServingStatus>();
  let frozen = false;

  const send = (call: ServerWritableStream<HealthCheckRequest, HealthCheckResponse>, s: ServingStatus): void => {
    if (lastSent.get(call) === s || call.cancelled) return;
    lastSent.set(call, s);
    call.write(response(s));
  };
  const notify = (service: string): void => {
    const s: ServingStatus = statuses.get(service) ?? "SERVICE_UNKNOWN";
    for (const call of watchers.get(service) ?? []) send(call, s);
  };

  const implementation: GrpcServiceImplementation<HealthMethods> = {
    check(call, callback) {
      const s = statuses.get(call.request.service);
      if (s === undefined) {
        callback({ code: grpcStatus.NOT_FOUND, details: `health: unknown service ${JSON.stringify(call.request.service)}` });
        return;
      }
      const reason = reasons.get(call.request.service);
      if (reason === undefined) return callback(null, response(s));
      const trailer = new Metadata();
      trailer.set(HEALTH_REASON_METADATA_KEY, Buffer.from(reason, "utf8"));
      callback(null, response(s), trailer);
    },
    list(_call, callback) {
      if (statuses.size > MAX_LISTED_SERVICES) {
        callback({ code: grpcStatus.RESOURCE_EXHAUSTED, details: `health: more than ${MAX_LISTED_SERVICES} services` });
        return;
      }
      const out: Record<string, HealthCheckResponse> = {};
      for (const [name, s] of statuses) out[name] = response(s);
      callback(null, create(HealthListResponseSchema, { statuses: out }));
    },
    watch(call) {
      const service = call.request.service;
      if (frozen) {
        send(call, statuses.get(service) ?? "SERVICE_UNKNOWN");
        call.end();
        return;
      }
      let set = watchers.get(service);
      if (set === undefined) watchers.set(service, (set = new Set()));
      set.add(call);
      const remove = (): void => {
        const current = watchers.get(service);
        current?.delete(call);
        if (current?.size === 0) watchers.delete(service);
      };
      call.on("cancelled", remove);
      call.on("close", remove);
      send(call, statuses.get(service) ?? "SERVICE_UNKNOWN");
    },
  };

  return {
    definition: grpcServiceDefinition(Health),
    implementation,
    setStatus(service, s, reason) {
      if (frozen) return;
      statuses.set(service, s);
      if (reason === undefined) reasons.delete(service);
      else reasons.set(service, reason);
      notify(service);
    },
    clearStatus(service) {
      if (frozen) return;
      statuses.delete(service);
      reasons.delete(service);
      notify(service);
    },
    getStatus(service) {
      return statuses.get(service);
    },
    getReason(service) {
      return reasons.get(service);
    },
    shutdown() {
      if (frozen) return;
      for (const name of statuses.keys()) statuses.set(name, "NOT_SERVING");
      for (const name of watchers.keys()) notify(name);
      frozen = true;
      for (const [, set] of watchers) for (const call of set) call.end();
      watchers.clear();
    },
  };
}

/** Registers the health service on a grpc-js server. */
export function addHealthService(server: Server, health: HealthService): void {
  server.addService(health.definition, health.implementation);
}
