/**
 * The `workload-endpoint` service owns the WorkloadAttestor plugins it
 * creates: they are closed after the socket is, when the agent's services
 * stop, and when the service's own start fails (here: a socket path longer
 * than `sun_path` holds).
 */
import { existsSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { WorkloadEndpointService } from "../../../../agent/endpoints/endpoint-service.js";
import { systemClock } from "../../../../common/clock.js";
import { createHealthService } from "../../../../common/health/grpc-health.js";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { ServiceGroup } from "../../../../common/service.js";
import { createUnixWorkloadAttestor, unixWorkloadAttestorPlugin } from "../../../../plugins/workloadattestor/unix/index.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import { FakeWorkloadCache } from "../../../fakes/fake-workload-cache.js";
import { testTempDir } from "../../../support/temp-dir.js";

afterEach(() => {
  vi.restoreAllMocks();
});

const log = createLogger({ level: "error", destination: { write: () => undefined } });

/** The service on `socketPath` with the `unix` attestor, whose `close()` records whether the socket was still there. */
function endpointService(socketPath: string): { svc: WorkloadEndpointService; closes: string[] } {
  const closes: string[] = [];
  vi.spyOn(unixWorkloadAttestorPlugin.agent!, "create").mockImplementation(() =>
    Object.assign(createUnixWorkloadAttestor(), { close: () => void closes.push(existsSync(socketPath) ? "closed with the socket bound" : "closed after the socket") }),
  );
  const svc = new WorkloadEndpointService({
    socketPath,
    cache: new FakeWorkloadCache(),
    trustDomain: parseTrustDomain("example.org"),
    workloadAttestors: { unix: {} },
    attestationTimeoutMs: 5_000,
    maxConnectionsPerUid: 16,
    maxCallsPerUid: 16,
    allowUnauthenticatedVerifiers: false,
    health: createHealthService(),
    metrics: new Metrics({ defaultMetrics: false }),
    clock: systemClock,
    log,
  });
  return { svc, closes };
}

describe("workload-endpoint service: its workload attestors are closed", () => {
  it("after the socket, when the services stop", async () => {
    const socketPath = path.join(testTempDir("sigil-endpoint-service-"), "api.sock");
    const { svc, closes } = endpointService(socketPath);
    const group = new ServiceGroup([svc], log);
    await group.start();
    expect(existsSync(socketPath)).toBe(true);
    expect(closes).toEqual([]);
    await group.stop();
    expect(closes).toEqual(["closed after the socket"]);
  });

  it("when the endpoint cannot start", async () => {
    const { svc, closes } = endpointService(path.join(testTempDir("sigil-endpoint-service-"), "x".repeat(200), "api.sock"));
    await expect(new ServiceGroup([svc], log).start()).rejects.toThrow(/socket/);
    expect(closes).toHaveLength(1);
  });
});
