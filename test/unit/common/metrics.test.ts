import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { afterAll, describe, expect, it } from "vitest";
import { addHealthService, createHealthService } from "../../../common/health/grpc-health.js";
import { checkHealth } from "../../../common/health/check.js";
import { grpcCodeName, Metrics, rpcMetricsInterceptor, splitMethodPath } from "../../../common/metrics.js";
import { isSigilError } from "../../../spiffe/errors.js";

function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    expect(isSigilError(e, "ERR_INVALID_ARGUMENT"), String(e)).toBe(true);
    return e as Error;
  }
  throw new Error("expected an error");
}

describe("Metrics", () => {
  it("exposes the core Sigil metrics and the default process/nodejs metrics in Prometheus text", async () => {
    const m = new Metrics();
    m.x509SvidsSigned.inc(3);
    m.jwtSvidsSigned.inc();
    m.setCaX509Expiry("A", new Date("2030-01-01T00:00:00Z"));
    m.setCaJwtKeyExpiry("B", new Date("2030-01-02T00:00:00Z"));
    m.recordRpc({ service: "SpiffeWorkloadAPI", method: "FetchX509SVID", code: "OK" }, 0.002);
    const text = await m.registry.metrics();
    expect(m.registry.contentType).toContain("text/plain");
    expect(text).toContain("# TYPE sigil_x509_svids_signed_total counter");
    expect(text).toContain("sigil_x509_svids_signed_total 3");
    expect(text).toContain("sigil_jwt_svids_signed_total 1");
    expect(text).toContain('sigil_ca_x509_expiry_timestamp_seconds{slot="A"} 1893456000');
    expect(text).toContain('sigil_ca_jwt_key_expiry_timestamp_seconds{slot="B"} 1893542400');
    expect(text).toContain('sigil_rpc_requests_total{service="SpiffeWorkloadAPI",method="FetchX509SVID",code="OK"} 1');
    expect(text).toContain('sigil_rpc_duration_seconds_bucket{le="0.0025",service="SpiffeWorkloadAPI",method="FetchX509SVID",code="OK"} 1');
    expect(text).toMatch(/^process_cpu_user_seconds_total /m);
    expect(text).toMatch(/^nodejs_eventloop_lag_seconds /m);
  });

  it("removes a slot's expiry series when the slot is emptied", async () => {
    const m = new Metrics({ defaultMetrics: false });
    m.setCaX509Expiry("A", new Date(1_000_000));
    m.setCaX509Expiry("A", undefined);
    expect(await m.registry.metrics()).not.toContain('slot="A"');
  });

  it("keeps instances apart (no global registry)", async () => {
    const a = new Metrics({ defaultMetrics: false });
    const b = new Metrics({ defaultMetrics: false });
    a.x509SvidsSigned.inc();
    expect(await b.registry.metrics()).toContain("sigil_x509_svids_signed_total 0");
  });

  it("lets subsystems add their own metrics, idempotently", async () => {
    const m = new Metrics({ defaultMetrics: false });
    const cache = m.gauge({ name: "sigil_agent_cache_svids", help: "SVIDs in the agent cache." });
    cache.set(42);
    const rotations = m.counter({ name: "sigil_svid_rotations_total", help: "SVID rotations.", labelNames: ["result"] });
    rotations.inc({ result: "success" });
    expect(m.counter({ name: "sigil_svid_rotations_total", help: "SVID rotations.", labelNames: ["result"] })).toBe(rotations);
    m.histogram({ name: "sigil_workload_attestation_duration_seconds", help: "Attestation latency.", buckets: [0.01, 0.1] }).observe(0.05);
    const text = await m.registry.metrics();
    expect(text).toContain("sigil_agent_cache_svids 42");
    expect(text).toContain('sigil_svid_rotations_total{result="success"} 1');
    expect(text).toContain('sigil_workload_attestation_duration_seconds_bucket{le="0.1"} 1');
  });

  it("refuses identifier labels and badly named metrics", () => {
    const m = new Metrics({ defaultMetrics: false });
    expect(errorOf(() => m.gauge({ name: "sigil_x509_svid_expiry_timestamp_seconds", help: "h", labelNames: ["spiffe_id"] })).message).toMatch(/^metrics: .*"spiffe_id" is an identifier/);
    errorOf(() => m.counter({ name: "sigil_rotations", help: "h" }));
    errorOf(() => m.gauge({ name: "cache_size", help: "h" }));
    errorOf(() => m.gauge({ name: "sigil_x509_svids_signed_total", help: "h" }));
    errorOf(() => new Metrics({ defaultMetrics: false, defaultLabels: { entry_id: "x" } }));
  });

  it("names gRPC codes and splits method paths", () => {
    expect([0, 5, 7, 14, 99].map(grpcCodeName)).toEqual(["OK", "NOT_FOUND", "PERMISSION_DENIED", "UNAVAILABLE", "UNKNOWN"]);
    expect(splitMethodPath("/grpc.health.v1.Health/Check")).toEqual({ service: "grpc.health.v1.Health", method: "Check" });
    expect(splitMethodPath("/SpiffeWorkloadAPI/FetchJWTSVID")).toEqual({ service: "SpiffeWorkloadAPI", method: "FetchJWTSVID" });
  });
});

describe("rpcMetricsInterceptor", () => {
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-metrics-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("counts RPCs and records latency per service, method and status code over a real server", async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    const server = new Server({ interceptors: [rpcMetricsInterceptor(metrics)] });
    addHealthService(server, createHealthService({ "": "SERVING" }));
    const socket = path.join(dir, "m.sock");
    await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
    try {
      expect((await checkHealth(`unix:${socket}`)).healthy).toBe(true);
      expect((await checkHealth(`unix:${socket}`)).healthy).toBe(true);
      expect((await checkHealth(`unix:${socket}`, { service: "nope" })).status).toBe("SERVICE_UNKNOWN");
      const text = await metrics.registry.metrics();
      expect(text).toContain('sigil_rpc_requests_total{service="grpc.health.v1.Health",method="Check",code="OK"} 2');
      expect(text).toContain('sigil_rpc_requests_total{service="grpc.health.v1.Health",method="Check",code="NOT_FOUND"} 1');
      expect(text).toContain('sigil_rpc_duration_seconds_count{service="grpc.health.v1.Health",method="Check",code="OK"} 2');
    } finally {
      server.forceShutdown();
    }
  });
});
