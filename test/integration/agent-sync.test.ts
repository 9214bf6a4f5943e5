/**
 * The agent core against an in-process server over real TLS/mTLS: join-token
 * attestation, sync, SVIDs minted for agent-generated keys, agent SVID
 * renewal (the channel is rebuilt with the new client certificate), restart
 * from `data_dir`, and refusing a server whose certificate the bundle does not
 * verify.
 */
import { X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startAgent, type RunningAgentCore } from "../../agent/agent.js";
import { parseAgentConfig } from "../../agent/config/load.js";
import { createLogger, type Logger } from "../../common/log.js";
import { Metrics } from "../../common/metrics.js";
import { makeSelector } from "../../common/selector.js";
import { canonicalSerialHex } from "../../spiffe/x509/serial.js";
import { parseServerConfig } from "../../server/config/load.js";
import { startServer, type RunningServer } from "../../server/main.js";
import { toX509Bundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { isSigilError } from "../../spiffe/errors.js";
import { encodePemCertificates } from "../../spiffe/pem.js";
import { generateSigner } from "../../spiffe/signer.js";
import { createRootCa } from "../../spiffe/x509/ca.js";
import { StaticX509BundleSource } from "../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../spiffe/x509/verify.js";
import { testServerConfigYaml } from "./support/server-process.js";
import { parseTrustDomain } from "../../spiffe/id.js";

const TD = "example.org";
const uid1000 = makeSelector("unix", "uid:1000");
let dir: string;
let server: RunningServer;
let bundlePath: string;
const lines: string[] = [];
const log: Logger = createLogger({ level: "debug", destination: { write: (l) => void lines.push(l) } });
const running: RunningAgentCore[] = [];

async function newToken(name: string): Promise<{ token: string; agentId: string }> {
  const token = `${name}-${Math.random().toString(36).slice(2)}`;
  await server.datastore.createJoinToken({ token, expiresAt: new Date(Date.now() + 10 * 60_000) });
  return { token, agentId: `spiffe://${TD}/spire/agent/join_token/${token}` };
}

function agentConfig(dataDir: string, extra: string) {
  const [host, port] = server.agentApiAddress.split(":");
  return parseAgentConfig(`
agent:
  trust_domain: ${TD}
  server_address: ${host}
  server_port: ${port}
  data_dir: ${dataDir}
  sync_interval: 1s
${extra}
plugins:
  NodeAttestor:
    join_token: {}
  WorkloadAttestor:
    unix: {}
`);
}

async function start(dataDir: string, extra: string): Promise<RunningAgentCore> {
  const core = await startAgent(agentConfig(dataDir, extra), { log, metrics: new Metrics({ defaultMetrics: false }), manualSync: true });
  running.push(core);
  return core;
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "sigil-agent-sync-"));
  const config = parseServerConfig(testServerConfigYaml(path.join(dir, "server"), { keyManager: "memory", serverExtra: "  audit_log_enabled: false\n" }));
  server = await startServer(config, { logDestination: { write: () => undefined } });
  bundlePath = path.join(dir, "bootstrap.pem");
  writeFileSync(bundlePath, encodePemCertificates(server.ca.bundle().x509Authorities));
}, 60_000);

afterAll(async () => {
  try {
    for (const a of running) await a.stop();
    await server?.stop();
  } finally {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  }
});

describe("agent sync against an in-process server", () => {
  let core: RunningAgentCore;
  let dataDir: string;
  let entryId: string;
  let token: string;

  it("attests with a join token and syncs a verifiable SVID for an entry parented to the agent", async () => {
    const t = await newToken("node-a");
    token = t.token;
    const entry = await server.datastore.createEntry({ spiffeId: `spiffe://${TD}/workload/a`, parentId: t.agentId, selectors: [uid1000] });
    entryId = entry.id;
    dataDir = path.join(dir, "agent-a");
    core = await start(dataDir, `  trust_bundle_path: ${bundlePath}\n  join_token: ${t.token}`);
    expect(core.agentId).toBe(t.agentId);
    // The entry reaches the server's index through its change feed; one more round if the first came too early.
    if (core.cache.identitiesFor([uid1000]).length === 0) await core.syncNow();

    expect(core.cache.ready()).toBe(true);
    const ids = core.cache.identitiesFor([uid1000, makeSelector("unix", "gid:1000")]);
    expect(ids.map((i) => i.entry.spiffeId)).toEqual([`spiffe://${TD}/workload/a`]);
    const svid = ids[0]!.svid;
    const own = core.cache.bundles().own;
    expect(own.trustDomain.name).toBe(TD);
    expect(own.jwtAuthorities.size).toBeGreaterThan(0);
    const verified = verifyX509Svid(svid.chain, new StaticX509BundleSource([toX509Bundle(own)]));
    expect(verified.id.toString()).toBe(`spiffe://${TD}/workload/a`);
    expect(core.cache.identitiesFor([makeSelector("unix", "uid:0")])).toEqual([]);
  });

  it("mints JWT-SVIDs through the server and reuses them", async () => {
    const a = await core.cache.fetchJwtSvid(entryId, ["aud-1"]);
    expect(a.spiffeId).toBe(`spiffe://${TD}/workload/a`);
    const b = await core.cache.fetchJwtSvid(entryId, ["aud-1"]);
    expect(b.token).toBe(a.token);
  });

  it("renews the agent SVID and keeps syncing with the new client certificate", async () => {
    const before = core.identity.current()!;
    const renewed = await core.identity.renew();
    expect(renewed.chain[0]).not.toEqual(before.chain[0]);
    const outcome = await core.syncNow();
    expect(outcome.ok, String(outcome.error)).toBe(true);
    const record = await server.datastore.getAgent(core.agentId);
    // The server made the renewed SVID current on its first use.
    expect(record?.newCertSerial).toBeNull();
    expect(record?.certSerial).toBe(canonicalSerialHex(new X509Certificate(renewed.chain[0]!).serialNumber));
  });

  it("restarts from data_dir without a join token", async () => {
    await core.stop();
    const again = await start(dataDir, `  trust_bundle_path: ${path.join(dir, "does-not-exist.pem")}`);
    expect(again.agentId).toBe(core.agentId);
    expect(again.cache.identitiesFor([uid1000])).toHaveLength(1);
    await again.stop();
  });

  it("explains that a used join token needs a new one", async () => {
    const e = await start(path.join(dir, "agent-reuse"), `  trust_bundle_path: ${bundlePath}\n  join_token: ${token}`).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(isSigilError(e, "ERR_PERMISSION_DENIED"), String(e)).toBe(true);
    expect((e as Error).message).toMatch(/^node attestation: the server refused the join token .*sigil-server token generate/);
  });

  it("refuses a server its bootstrap bundle does not verify", async () => {
    const otherRoot = createRootCa({
      trustDomain: parseTrustDomain(TD),
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 3_600_000),
      signer: generateSigner("ec-p256"),
    });
    const wrong = path.join(dir, "wrong.pem");
    writeFileSync(wrong, encodePemCertificates([otherRoot]));
    const t = await newToken("node-wrong");
    const e = await start(path.join(dir, "agent-wrong"), `  trust_bundle_path: ${wrong}\n  join_token: ${t.token}`).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(isSigilError(e, "ERR_UNAVAILABLE"), String(e)).toBe(true);
    // The token was never presented to an unverified server.
    await expect(server.datastore.consumeJoinToken(t.token)).resolves.toBeDefined();
  });

  it("attests with insecure_bootstrap and then trusts the bundle from the attestation", async () => {
    const t = await newToken("node-insecure");
    await server.datastore.createEntry({ spiffeId: `spiffe://${TD}/workload/b`, parentId: t.agentId, selectors: [uid1000] });
    const a = await start(path.join(dir, "agent-insecure"), `  insecure_bootstrap: true\n  join_token: ${t.token}`);
    if (a.cache.identitiesFor([uid1000]).length === 0) await a.syncNow();
    expect(a.cache.identitiesFor([uid1000]).map((i) => i.entry.spiffeId)).toEqual([`spiffe://${TD}/workload/b`]);
  });
});
