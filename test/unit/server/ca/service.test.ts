/**
 * The `ca` service owns the KeyManager and UpstreamAuthority plugins it
 * creates: it closes them in reverse order of creation when the server's
 * service group stops (after the services started after it, which use them),
 * when a later service fails to start, and when its own start fails. A close
 * that throws is logged and the other plugin still closes.
 */
import { generateKeyPairSync } from "node:crypto";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { service, ServiceGroup, type Service } from "../../../../common/service.js";
import { createMemoryKeyManager, memoryKeyManagerPlugin } from "../../../../plugins/keymanager/memory/index.js";
import { createDiskUpstreamAuthority, diskUpstreamAuthorityPlugin, type DiskUpstreamAuthorityConfig } from "../../../../plugins/upstreamauthority/disk/index.js";
import type { UpstreamAuthority } from "../../../../plugins/upstreamauthority/types.js";
import { caSettings, CaService } from "../../../../server/ca/service.js";
import { parseServerConfig } from "../../../../server/config/load.js";
import { DatastoreService } from "../../../../server/datastore/service.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import { encodePemCertificates } from "../../../../spiffe/pem.js";
import { createKeyObjectSigner } from "../../../../spiffe/signer.js";
import { createRootCa } from "../../../../spiffe/x509/ca.js";
import { testServerConfigYaml } from "../../../integration/support/server-process.js";
import { testTempDir } from "../../../support/temp-dir.js";

const td = parseTrustDomain("example.org");

afterEach(() => {
  vi.restoreAllMocks();
});

/** What happened, in order: plugin closes and the stops of the services around `ca`. */
let events: string[] = [];
/** The error records the group's logger wrote. */
let errors: Record<string, unknown>[] = [];

/** Adds a `close()` that records itself (and throws, with `fail`) to a real plugin instance. */
function closable<T extends object>(label: string, instance: T, fail = false): T {
  return Object.assign(instance, {
    close: async () => {
      events.push(`close ${label}`);
      if (fail) throw new Error(`${label}: cannot close`);
    },
  });
}

/** An upstream root on disk, as an operator provides it. */
function upstreamConfig(dir: string): DiskUpstreamAuthorityConfig {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const now = Date.now();
  const rootDer = createRootCa({ trustDomain: td, signer: createKeyObjectSigner(privateKey, "upstream"), notBefore: new Date(now - 3_600_000), notAfter: new Date(now + 365 * 86_400_000) });
  writeFileSync(path.join(dir, "up.pem"), encodePemCertificates([rootDer]));
  writeFileSync(path.join(dir, "up.key"), privateKey.export({ format: "pem", type: "pkcs8" }));
  return { cert_file_path: path.join(dir, "up.pem"), key_file_path: path.join(dir, "up.key") };
}

/**
 * The server's first services (datastore, ca) and then `after`, in a group;
 * the memory KeyManager and the disk UpstreamAuthority the catalog creates get
 * a recording `close()`.
 */
function serverGroup(opts: { after: Service[]; failClose?: "KeyManager" | "UpstreamAuthority"; upstream?: (config: DiskUpstreamAuthorityConfig) => UpstreamAuthority }): ServiceGroup {
  events = [];
  errors = [];
  const dir = testTempDir("sigil-ca-service-");
  const config = parseServerConfig(testServerConfigYaml(dir, { keyManager: "memory" }));
  vi.spyOn(memoryKeyManagerPlugin.server!, "create").mockImplementation(() => closable("KeyManager", createMemoryKeyManager(), opts.failClose === "KeyManager"));
  vi.spyOn(diskUpstreamAuthorityPlugin.server!, "create").mockImplementation((c) =>
    closable("UpstreamAuthority", (opts.upstream ?? createDiskUpstreamAuthority)(c as DiskUpstreamAuthorityConfig), opts.failClose === "UpstreamAuthority"),
  );
  const clock = new ManualClock(new Date());
  const log = createLogger({ level: "error", destination: { write: (line: string) => void errors.push(JSON.parse(line) as Record<string, unknown>) } });
  const datastore = new DatastoreService({ plugin: config.plugins.DataStore, trustDomain: td, clock });
  const ca = new CaService({
    settings: caSettings(config.server, td),
    plugins: { KeyManager: config.plugins.KeyManager, UpstreamAuthority: { disk: upstreamConfig(dir) } },
    datastore,
    signingPool: undefined,
    clock,
    metrics: new Metrics({ defaultMetrics: false }),
    log,
  });
  return new ServiceGroup([datastore, ca, ...opts.after], log);
}

/** A service after `ca` (as agent-api, admin-socket and ca-rotation are) that records its stop. */
const user = service("ca-user", () => undefined, () => void events.push("stop ca-user"));

describe("ca service: its plugins are closed", () => {
  it("on stop, in reverse order of creation, after the services started after it have stopped", async () => {
    const group = serverGroup({ after: [user] });
    await group.start();
    expect(events).toEqual([]);
    await group.stop();
    expect(events).toEqual(["stop ca-user", "close UpstreamAuthority", "close KeyManager"]);
    expect(errors).toEqual([]);
  });

  it("when a later service fails to start", async () => {
    const failing = service("agent-api", () => {
      throw new Error("agent api: cannot listen");
    });
    const group = serverGroup({ after: [user, failing] });
    await expect(group.start()).rejects.toThrow("agent api: cannot listen");
    expect(events).toEqual(["stop ca-user", "close UpstreamAuthority", "close KeyManager"]);
  });

  it("when its own start fails after creating them", async () => {
    const unreachable = (): UpstreamAuthority => ({ name: "disk", mintX509Ca: () => Promise.reject(new Error("upstream: unreachable")) });
    const group = serverGroup({ after: [user], upstream: unreachable });
    await expect(group.start()).rejects.toThrow("upstream: unreachable");
    expect(events).toEqual(["close UpstreamAuthority", "close KeyManager"]);
  });

  it("a close that throws is logged, and the other plugin still closes", async () => {
    const group = serverGroup({ after: [user], failClose: "UpstreamAuthority" });
    await group.start();
    await group.stop();
    expect(events).toEqual(["stop ca-user", "close UpstreamAuthority", "close KeyManager"]);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ msg: "Plugin failed to close", plugin: "disk", err: { message: "UpstreamAuthority: cannot close" } });
  });
});
