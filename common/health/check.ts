/**
 * A gRPC health client: asks a server's `grpc.health.v1.Health/Check`, as
 * `sigil-server healthcheck` does over the admin socket.
 */
import { create } from "@bufbuild/protobuf";
import { Client, credentials as grpcCredentials, Metadata, status as grpcStatus, type ChannelCredentials, type StatusObject } from "@grpc/grpc-js";
import { Health, HealthCheckRequestSchema, type HealthCheckResponse } from "../../proto/gen/grpc/health/v1/health_pb.js";
import { grpcServiceDefinition } from "../../spiffe/grpc/service.js";
import { grpcCodeName } from "../metrics.js";
import { HEALTH_REASON_METADATA_KEY, servingStatusName, type ServingStatus } from "./grpc-health.js";

/** Options of {@link checkHealth}. */
export interface CheckHealthOptions {
  /** Service to ask about (default `""`, the whole server). */
  readonly service?: string;
  /** Deadline of the call (default 5000 ms). */
  readonly timeoutMs?: number;
  /** Channel credentials (default insecure: for Unix sockets and loopback). */
  readonly credentials?: ChannelCredentials;
}

/** What a health check found. */
export interface CheckHealthResult {
  /** True only when the answer was SERVING. */
  readonly healthy: boolean;
  /** The answered status; `SERVICE_UNKNOWN` when the server does not know the service; `UNREACHABLE` when there was no answer. */
  readonly status: ServingStatus | "UNREACHABLE";
  /** A human-readable explanation (`NOT_FOUND: health: unknown service "x"`, `UNAVAILABLE: …`, `NOT_SERVING: <reason>`). */
  readonly detail: string;
  /** The reason the server gave with its status, if any (see `HEALTH_REASON_METADATA_KEY`). */
  readonly reason?: string;
}

/**
 * Calls Health/Check on `target` (a grpc-js target: `unix:/path.sock`,
 * `127.0.0.1:8081`). Never throws: failures come back as
 * `{ healthy: false, status: "UNREACHABLE" }` with the gRPC error in `detail`.
 */
export async function checkHealth(target: string, options: CheckHealthOptions = {}): Promise<CheckHealthResult> {
  const client = new Client(target, options.credentials ?? grpcCredentials.createInsecure());
  const def = grpcServiceDefinition(Health).check;
  try {
    // The status event comes last and carries the trailers, where the reason is.
    const { response, end } = await new Promise<{ response: HealthCheckResponse | undefined; end: StatusObject }>((resolve) => {
      let response: HealthCheckResponse | undefined;
      const call = client.makeUnaryRequest(
        def.path,
        def.requestSerialize,
        def.responseDeserialize,
        create(HealthCheckRequestSchema, { service: options.service ?? "" }),
        new Metadata(),
        { deadline: new Date(Date.now() + (options.timeoutMs ?? 5000)) },
        (_err, value) => (response = value),
      );
      call.on("status", (end: StatusObject) => resolve({ response, end }));
    });
    if (end.code !== grpcStatus.OK || response === undefined) {
      // NOT_FOUND is the protocol's answer for a service the server does not know.
      const status = end.code === grpcStatus.NOT_FOUND ? "SERVICE_UNKNOWN" : "UNREACHABLE";
      return { healthy: false, status, detail: `${grpcCodeName(end.code)}: ${end.details}` };
    }
    const status = servingStatusName(response.status);
    const raw = end.metadata.get(HEALTH_REASON_METADATA_KEY)[0];
    const reason = raw === undefined ? undefined : Buffer.from(raw).toString("utf8");
    return reason === undefined ? { healthy: status === "SERVING", status, detail: status } : { healthy: status === "SERVING", status, detail: `${status}: ${reason}`, reason };
  } finally {
    client.close();
  }
}

/**
 * True when the server behind the Unix socket answers SERVING for `service`
 * (`""` for the whole server).
 */
export async function checkHealthOverSocket(socketPath: string, service = "", options: Omit<CheckHealthOptions, "service"> = {}): Promise<boolean> {
  return (await checkHealth(`unix:${socketPath}`, { ...options, service })).healthy;
}
