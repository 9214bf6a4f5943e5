import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { Client, credentials, Metadata, Server, ServerCredentials, status, type ClientReadableStream, type ServiceError } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { checkHealth, checkHealthOverSocket } from "../../../../common/health/check.js";
import { addHealthService, createHealthService, servingStatusName, type HealthService, type ServingStatus } from "../../../../common/health/grpc-health.js";
import { HealthCheckRequestSchema, HealthListRequestSchema, type HealthCheckResponse, type HealthListResponse } from "../../../../proto/gen/grpc/health/v1/health_pb.js";

const dir = mkdtempSync(path.join(tmpdir(), "sigil-health-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
let server: Server;
let health: HealthService;
let socket: string;
let client: Client;

beforeEach(async () => {
  socket = path.join(dir, `h${n++}.sock`);
  server = new Server();
  health = createHealthService();
  addHealthService(server, health);
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
  client = new Client(`unix:${socket}`, credentials.createInsecure());
});

afterEach(() => {
  client.close();
  server.forceShutdown();
});

/** Opens a Watch stream and yields each status as it arrives. */
function watch(service: string): { next: () => Promise<ServingStatus>; ended: Promise<void>; stream: ClientReadableStream<HealthCheckResponse> } {
  const def = health.definition.watch;
  const stream = client.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, create(HealthCheckRequestSchema, { service }), new Metadata());
  const queue: ServingStatus[] = [];
  const waiters: Array<(s: ServingStatus) => void> = [];
  stream.on("data", (r: HealthCheckResponse) => {
    const s = servingStatusName(r.status);
    const w = waiters.shift();
    if (w) w(s);
    else queue.push(s);
  });
  const ended = new Promise<void>((resolve) => {
    stream.on("end", () => resolve());
    stream.on("error", () => resolve());
  });
  return {
    stream,
    ended,
    next: () => {
      const s = queue.shift();
      return s !== undefined ? Promise.resolve(s) : new Promise((resolve) => waiters.push(resolve));
    },
  };
}

describe("grpc.health.v1.Health over a Unix socket", () => {
  it("Check answers SERVING for the server and NOT_FOUND for an unknown service", async () => {
    expect(await checkHealthOverSocket(socket)).toBe(true);
    expect(await checkHealth(`unix:${socket}`)).toEqual({ healthy: true, status: "SERVING", detail: "SERVING" });
    const unknown = await checkHealth(`unix:${socket}`, { service: "sigil.agent.v1.Agent" });
    expect(unknown).toMatchObject({ healthy: false, status: "SERVICE_UNKNOWN" });
    expect(unknown.detail).toMatch(/^NOT_FOUND: health: unknown service "sigil.agent.v1.Agent"/);
  });

  it("follows settable per-service status", async () => {
    health.setStatus("sigil.agent.v1.Agent", "NOT_SERVING");
    expect(await checkHealth(`unix:${socket}`, { service: "sigil.agent.v1.Agent" })).toMatchObject({ healthy: false, status: "NOT_SERVING" });
    health.setStatus("sigil.agent.v1.Agent", "SERVING");
    expect(await checkHealthOverSocket(socket, "sigil.agent.v1.Agent")).toBe(true);
    health.clearStatus("sigil.agent.v1.Agent");
    expect(await checkHealthOverSocket(socket, "sigil.agent.v1.Agent")).toBe(false);
  });

  it("a status set with a reason carries it to Check callers (a UTF-8 trailer), and a new status without one clears it", async () => {
    health.setStatus("", "NOT_SERVING", "agent spiffe://example.org/spire/agent/n was evicted; a new join token is needed — see the log");
    expect(await checkHealth(`unix:${socket}`)).toEqual({
      healthy: false,
      status: "NOT_SERVING",
      detail: "NOT_SERVING: agent spiffe://example.org/spire/agent/n was evicted; a new join token is needed — see the log",
      reason: "agent spiffe://example.org/spire/agent/n was evicted; a new join token is needed — see the log",
    });
    expect(health.getReason("")).toMatch(/evicted/);
    health.setStatus("", "SERVING");
    expect(await checkHealth(`unix:${socket}`)).toEqual({ healthy: true, status: "SERVING", detail: "SERVING" });
    expect(health.getReason("")).toBeUndefined();
  });

  it("reports an unreachable server without throwing", async () => {
    const r = await checkHealth(`unix:${path.join(dir, "absent.sock")}`, { timeoutMs: 2000 });
    expect(r).toMatchObject({ healthy: false, status: "UNREACHABLE" });
    expect(r.detail).toMatch(/^UNAVAILABLE: /);
  });

  it("Watch sends the current status, then each change, and SERVICE_UNKNOWN for unknown services", async () => {
    const w = watch("svc");
    expect(await w.next()).toBe("SERVICE_UNKNOWN");
    health.setStatus("svc", "SERVING");
    expect(await w.next()).toBe("SERVING");
    health.setStatus("svc", "SERVING"); // no change, no message
    health.setStatus("svc", "NOT_SERVING");
    expect(await w.next()).toBe("NOT_SERVING");
    w.stream.cancel();
    await w.ended;
  });

  it("List returns every service's status", async () => {
    health.setStatus("a", "NOT_SERVING");
    const def = health.definition.list;
    const res = await new Promise<HealthListResponse>((resolve, reject) =>
      client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, create(HealthListRequestSchema, {}), (e: ServiceError | null, v?: HealthListResponse) =>
        e || !v ? reject(e) : resolve(v),
      ),
    );
    expect(Object.fromEntries(Object.entries(res.statuses).map(([k, v]) => [k, servingStatusName(v.status)]))).toEqual({ "": "SERVING", a: "NOT_SERVING" });
  });

  it("List refuses more than 100 services", async () => {
    for (let i = 0; i < 101; i++) health.setStatus(`s${i}`, "SERVING");
    const def = health.definition.list;
    const err = await new Promise<ServiceError | null>((resolve) =>
      client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, create(HealthListRequestSchema, {}), (e: ServiceError | null) => resolve(e)),
    );
    expect(err?.code).toBe(status.RESOURCE_EXHAUSTED);
  });

  it("shutdown tells watchers NOT_SERVING and ends their streams", async () => {
    const w = watch("");
    expect(await w.next()).toBe("SERVING");
    health.shutdown();
    expect(await w.next()).toBe("NOT_SERVING");
    await w.ended;
    health.setStatus("", "SERVING"); // frozen after shutdown
    expect(await checkHealth(`unix:${socket}`)).toMatchObject({ healthy: false, status: "NOT_SERVING" });
  });
});
