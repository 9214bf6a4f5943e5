/**
 * SDS joins the Workload API on the agent's socket (`workload-endpoint`
 * service) unless `agent.sds.disable_sds_api`, with the configured names.
 */
import path from "node:path";
import { status, type ServiceError } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { WorkloadEndpointService } from "../../../../../agent/endpoints/endpoint-service.js";
import { DEFAULT_SDS_NAMES } from "../../../../../agent/endpoints/sds/secrets.js";
import { systemClock } from "../../../../../common/clock.js";
import { createHealthService } from "../../../../../common/health/grpc-health.js";
import { createLogger } from "../../../../../common/log.js";
import { Metrics } from "../../../../../common/metrics.js";
import { FakeWorkloadCache, ownUidSelector } from "../../../../fakes/fake-workload-cache.js";
import { fetchSecrets, sdsChannel, secretsOf } from "../../../../support/sds-client.js";
import { testTempDir } from "../../../../support/temp-dir.js";

const log = createLogger({ level: "error", destination: { write: () => undefined } });
const stops: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const s of stops.splice(0)) await s();
});

async function start(sds: { disabled: boolean; defaultSvidName?: string }): Promise<string> {
  const cache = new FakeWorkloadCache();
  cache.addIdentity({ spiffeId: "spiffe://example.org/me", selectors: [ownUidSelector()] });
  const socketPath = path.join(testTempDir("sigil-sds-service-"), "api.sock");
  const svc = new WorkloadEndpointService({
    socketPath,
    cache,
    trustDomain: cache.own.trustDomain,
    workloadAttestors: { unix: {} },
    attestationTimeoutMs: 5_000,
    maxConnectionsPerUid: 16,
    maxCallsPerUid: 16,
    allowUnauthenticatedVerifiers: false,
    sds: { ...DEFAULT_SDS_NAMES, defaultSvidName: sds.defaultSvidName ?? "default", disabled: sds.disabled, disableSpiffeCertValidation: false },
    health: createHealthService(),
    metrics: new Metrics({ defaultMetrics: false }),
    clock: systemClock,
    log,
  });
  await svc.start();
  stops.push(() => svc.stop());
  return socketPath;
}

describe("workload-endpoint service: SDS", () => {
  it("is served on the socket, with the configured default SVID name", async () => {
    const client = sdsChannel(await start({ disabled: false, defaultSvidName: "mine" }));
    try {
      expect(secretsOf(await fetchSecrets(client, ["mine", "default"])).map((s) => s.name)).toEqual(["mine"]);
    } finally {
      client.close();
    }
  });

  it("answers Unimplemented with disable_sds_api", async () => {
    const client = sdsChannel(await start({ disabled: true }));
    try {
      await expect(fetchSecrets(client, ["default"])).rejects.toSatisfy((e: ServiceError) => e.code === status.UNIMPLEMENTED);
    } finally {
      client.close();
    }
  });
});
