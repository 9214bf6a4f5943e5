/**
 * The server's readiness (what `/ready` answers) is its services' readiness
 * combined by the service group: not ready before every service started,
 * then the reasons of the `datastore` and `ca` services, each named by its
 * service.
 */
import { afterEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../../common/clock.js";
import { createLogger } from "../../../common/log.js";
import { Metrics } from "../../../common/metrics.js";
import { ServiceGroup } from "../../../common/service.js";
import { caSettings, CaService } from "../../../server/ca/service.js";
import { parseServerConfig } from "../../../server/config/load.js";
import { DatastoreService } from "../../../server/datastore/service.js";
import { parseTrustDomain } from "../../../spiffe/id.js";
import { testServerConfigYaml } from "../../integration/support/server-process.js";
import { testTempDir } from "../../support/temp-dir.js";

const HOUR = 3_600_000;
const log = createLogger({ level: "error", destination: { write: () => undefined } });
const groups: ServiceGroup[] = [];

afterEach(async () => {
  for (const g of groups.splice(0)) await g.stop();
});

/** The datastore and CA services of a server config (SQLite in a temp directory, memory key manager), in a group. */
function serverCore(clock: ManualClock): { group: ServiceGroup; datastore: DatastoreService } {
  const dir = testTempDir("sigil-readiness-");
  const config = parseServerConfig(testServerConfigYaml(dir, { keyManager: "memory" }));
  const trustDomain = parseTrustDomain(config.server.trust_domain);
  const datastore = new DatastoreService({ plugin: config.plugins.DataStore, trustDomain, clock });
  const ca = new CaService({ settings: caSettings(config.server, trustDomain), plugins: config.plugins, datastore, signingPool: undefined, clock, metrics: new Metrics({ defaultMetrics: false }), log });
  const group = new ServiceGroup([datastore, ca], log);
  groups.push(group);
  return { group, datastore };
}

describe("server readiness", () => {
  it("is not ready before its services start, and ready once the datastore answers and a CA is active", async () => {
    const { group } = serverCore(new ManualClock(new Date()));
    expect(await group.readiness()).toEqual({ ready: false, reasons: ["datastore: not started", "ca: not started"] });
    await group.start();
    expect(await group.readiness()).toEqual({ ready: true, reasons: [] });
  });

  it("names the CA when no active X.509 CA is left unexpired (the server was down past its rotation)", async () => {
    const clock = new ManualClock(new Date());
    const { group } = serverCore(clock);
    await group.start();
    clock.advance(25 * HOUR); // past the default ca_ttl of 24h, with no rotation step run
    expect(await group.readiness()).toEqual({ ready: false, reasons: ["ca: no active X.509 CA"] });
  });

  it("names the datastore, with its error, when it does not answer", async () => {
    const clock = new ManualClock(new Date());
    const { group, datastore } = serverCore(clock);
    await group.start();
    await datastore.datastore.close();
    clock.advance(25 * HOUR);
    const r = await group.readiness();
    expect(r.ready).toBe(false);
    expect(r.reasons).toHaveLength(2);
    expect(r.reasons[0]).toMatch(/^datastore: \S/);
    expect(r.reasons[1]).toBe("ca: no active X.509 CA");
  });
});
