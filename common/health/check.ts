/**
 * A gRPC health client: asks a server's `grpc.health.v1.Health/Check`, as
 * `sigil-server healthcheck` does over the admin socket.
 */
import { credentials as grpcCredentials, status as grpcStatus, type ChannelCredentials, type ServiceError } from "@grpc/grpc-js";
import { Health } from "../../proto/gen/grpc/health/v1/health_pb.js";
import { grpcCodeName } from "../metrics.js";
import { createUnaryClient } from "../rpc/unary-client.js";
import { servingStatusName, type ServingStatus } from "./grpc-health.js";

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
  /** A human-readable explanation (`NOT_FOUND: health: unknown service "x"`, `UNAVAILABLE: …`). */
  readonly detail: string;
}

/**
 * Calls Health/Check on `target` (a grpc-js target: `unix:/path.sock`,
 * `127.0.0.1:8081`). Never throws: failures come back as
 * `{ healthy: false, status: "UNREACHABLE" }` with the gRPC error in `detail`.
 */
export async function checkHealth(target: string, options: CheckHealthOptions = {}): Promise<CheckHealthResult> {
  const client = createUnaryClient(Health, target, options.credentials ?? grpcCredentials.createInsecure());
  try {
    const res = await client.check({ service: options.service ?? "" }, { deadlineMs: options.timeoutMs ?? 5000 });
    const status = servingStatusName(res.status);
    return { healthy: status === "SERVING", status, detail: status };
  } catch (e) {
    const err = e as Partial<ServiceError>;
    const code = typeof err.code === "number" ? grpcCodeName(err.code) : "UNKNOWN";
    // NOT_FOUND is the protocol's answer for a service the server does not know.
    const status = err.code === grpcStatus.NOT_FOUND ? "SERVICE_UNKNOWN" : "UNREACHABLE";
    return { healthy: false, status, detail: `${code}: ${err.details ?? err.message ?? String(e)}` };
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
