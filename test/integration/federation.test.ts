/**
 * Two full trust domains on one machine (issue 13): `td-a.test` and
 * `td-b.test`, each a real `sigil-server run` serving its bundle endpoint
 * (`https_spiffe`) and a real `sigil-agent run` attested with a join token.
 * Each server federates with the other through `sigil-server federation
 * create` (bootstrapped with the other's bundle file, then polled every
 * second); each trust domain has one workload (this test process, uid 0)
 * whose entry federates with the other trust domain.
 *
 * - the two workloads complete mutual TLS with the `spiffe/tls` helpers, fed
 *   only by their own Workload API `X509Source`s, and again with
 *   `openssl s_server` / `s_client` fed the SVIDs and bundles they fetched;
 * - a JWT-SVID minted in `td-b` validates in `td-a` through `td-a`'s Workload API;
 * - `td-b` rotates its X.509 CA (a one-minute `ca_ttl`: prepared after about
 *   30 s, activated, and the old root retired when it expires) while `td-a`'s
 *   workload keeps opening new connections to `td-b`'s, with no restart and
 *   no reconfiguration.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import type { X509Certificate } from "node:crypto";
import * as tls from "node:tls";
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import { authorizeId, authorizeMemberOf, createSpiffeTlsServer, mtlsClientOptions, mtlsServerOptions, peerSpiffeIdOf } from "../../spiffe/tls/index.js";
import { createWorkloadApiClient, type WorkloadApiClient } from "../../spiffe/workloadapi/client.js";
import { X509Source } from "../../spiffe/workloadapi/x509-source.js";
import { closedLoopbackPort } from "../support/ports.js";
import { requireTool } from "../support/tools.js";
import { runAgentCli, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

const haveOpenssl = requireTool("openssl", ["version"], "mutual TLS between the trust domains with openssl s_server / s_client");

interface TrustDomainUnderTest {
  readonly name: string;
  readonly workloadId: string;
  readonly srv: ServerProcess;
  readonly endpointUrl: string;
  agent?: AgentProcess;
  source?: X509Source;
  client?: WorkloadApiClient;
}

const tds: TrustDomainUnderTest[] = [];
const scratch = mkdtempSync(path.join(tmpdir(), "sigil-fed-it-"));

/** A server for `name` with its bundle endpoint on a free loopback port, polling federated endpoints every second. */
async function startTrustDomain(name: string, serverExtra: string): Promise<TrustDomainUnderTest> {
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-it-"));
  const configPath = path.join(dir, "server.yaml");
  writeFileSync(
    configPath,
    testServerConfigYaml(dir, {
      trustDomain: name,
      serverExtra: `  log_level: debug\n${serverExtra}`,
      extraYaml: `federation:
  min_refresh_interval: 1s
  bundle_endpoint:
    address: 127.0.0.1
    port: 0
    refresh_hint: 1s
`,
    }),
  );
  const srv = await launchServerProcess(dir, configPath, path.join(dir, "admin", "api.sock"), { ownsDir: true });
  const endpointUrl = String((await srv.waitForLog((r) => r.msg === "bundle endpoint listening")).url);
  return { name, workloadId: `spiffe://${name}/workload`, srv, endpointUrl };
}

/** `sigil-server <args>` against `td`'s server; fails the test with its stderr on a non-zero exit. */
function cli(td: TrustDomainUnderTest, args: readonly string[]): string {
  const r = td.srv.cli(args);
  if (r.status !== 0) throw new Error(`sigil-server ${args.join(" ")} (${td.name}) exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** `td` federates with `other`: a relationship bootstrapped with the other's bundle as a file, fetched at once. */
function federate(td: TrustDomainUnderTest, other: TrustDomainUnderTest): void {
  const bundlePath = path.join(scratch, `${other.name}.bundle.json`);
  writeFileSync(bundlePath, cli(other, ["bundle", "show", "--format", "spiffe"]));
  cli(td, [
    "federation",
    "create",
    "--trust-domain",
    other.name,
    "--bundle-endpoint-url",
    other.endpointUrl,
    "--bundle-endpoint-profile",
    "https_spiffe",
    "--endpoint-spiffe-id",
    `spiffe://${other.name}/spire/server`,
    "--trust-domain-bundle-path",
    bundlePath,
  ]);
  cli(td, ["federation", "refresh", other.name]);
}

/** Registers `td`'s workload (uid 0, federating with `other`) under a join token and starts its agent. */
async function startWorkloadSide(td: TrustDomainUnderTest, other: TrustDomainUnderTest): Promise<void> {
  const target = `unix:${td.srv.socketPath}`;
  const agentAdmin = createUnaryClient(AgentAdmin, target, credentials.createInsecure());
  const tok = await agentAdmin.createJoinToken({ ttl: 600 });
  agentAdmin.close();
  const entryAdmin = createUnaryClient(EntryAdmin, target, credentials.createInsecure());
  await entryAdmin.batchCreateEntry({
    entries: [create(EntrySchema, { spiffeId: td.workloadId, parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${process.getuid?.() ?? 0}` }], federatesWith: [other.name] })],
  });
  entryAdmin.close();
  const bundlePem = rootsPemFromBundleJson(cli(td, ["bundle", "show", "--output", "json"]), td.name);
  td.agent = await startAgentProcess({ serverAddress: td.srv.agentApiAddress, bundlePem, joinToken: tok.token, trustDomain: td.name });
  const address = `unix://${td.agent.socketPath}`;
  td.source = await X509Source.create({ clientOptions: { address } });
  td.client = createWorkloadApiClient({ address });
}

/** Resolves once `check` returns true, polling every 250 ms. */
async function until(what: string, check: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const sideA = (): TrustDomainUnderTest => tds[0] as TrustDomainUnderTest;
const sideB = (): TrustDomainUnderTest => tds[1] as TrustDomainUnderTest;
const sourceOf = (td: TrustDomainUnderTest): X509Source => {
  if (td.source === undefined) throw new Error(`${td.name}: no X509 source`);
  return td.source;
};

beforeAll(async () => {
  tds.push(await startTrustDomain("td-a.test", ""));
  // The shortest CA lifetime: td-b's next CA is prepared about 30 s after its start and the first expires after a minute.
  tds.push(await startTrustDomain("td-b.test", "  ca_ttl: 1m\n  default_x509_svid_ttl: 10s\n"));
  federate(sideA(), sideB());
  federate(sideB(), sideA());
  await startWorkloadSide(sideA(), sideB());
  await startWorkloadSide(sideB(), sideA());
  // Each workload holds the other trust domain's bundle.
  await until("td-a's workload to hold td-b's bundle", () => sourceOf(sideA()).context?.bundles.has("td-b.test") === true);
  await until("td-b's workload to hold td-a's bundle", () => sourceOf(sideB()).context?.bundles.has("td-a.test") === true);
}, 180_000);

afterAll(async () => {
  for (const td of tds) {
    td.source?.close();
    td.client?.close();
    await td.agent?.stop();
    await td.srv.stop();
  }
  rmSync(scratch, { recursive: true, force: true });
});

/** A TLS server for `td`'s workload accepting members of `peerTd`, answering each client with its SPIFFE ID. */
async function startWorkloadServer(td: TrustDomainUnderTest, peerTd: string): Promise<{ port: number; refused: Error[]; close(): Promise<void> }> {
  const refused: Error[] = [];
  const server = createSpiffeTlsServer(mtlsServerOptions(sourceOf(td), authorizeMemberOf(peerTd)), (socket) => {
    socket.end(`hello ${peerSpiffeIdOf(socket)?.toString() ?? "?"}\n`);
  });
  server.on("tlsClientError", (e: Error) => refused.push(e));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as { port: number }).port,
    refused,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Connects as `td`'s workload, accepting only `serverId`; resolves with what the server wrote, rejects on refusal. */
function connectAs(td: TrustDomainUnderTest, port: number, serverId: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: "127.0.0.1", port, ...mtlsClientOptions(sourceOf(td), authorizeId(serverId)) });
    let text = "";
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => (text += d));
    socket.on("end", () => resolve(text));
    socket.on("error", reject);
  });
}

describe("FED-7: two trust domains federated through their https_spiffe bundle endpoints", () => {
  it("workloads of td-a and td-b complete mutual TLS with the spiffe/tls helpers, in both directions", async () => {
    const b = await startWorkloadServer(sideB(), "td-a.test");
    const a = await startWorkloadServer(sideA(), "td-b.test");
    try {
      expect(await connectAs(sideA(), b.port, sideB().workloadId)).toBe(`hello ${sideA().workloadId}\n`);
      expect(await connectAs(sideB(), a.port, sideA().workloadId)).toBe(`hello ${sideB().workloadId}\n`);
      // The authorizers decide: td-a's client refuses a server that is not the one it asked for.
      await expect(connectAs(sideA(), b.port, "spiffe://td-b.test/another")).rejects.toThrow();
    } finally {
      await a.close();
      await b.close();
    }
  }, 60_000);

  it.skipIf(!haveOpenssl)("openssl s_server (td-b's SVID) and s_client (td-a's SVID) complete mutual TLS with the files `sigil-agent api fetch x509 --write` wrote (SVID, key, federated_bundle.0.0.pem)", async () => {
    /** `sigil-agent api fetch x509 --write` on `td`'s agent: the SVID, its key, and the one federated bundle (the peer's). */
    const material = async (td: TrustDomainUnderTest): Promise<{ cert: string; key: string; ca: string }> => {
      const dir = path.join(scratch, `${td.name}.files`);
      const r = await runAgentCli(["api", "fetch", "x509", "--socket-path", td.agent?.socketPath ?? "", "--write", dir]);
      expect(r.status, r.stderr).toBe(0);
      return { cert: path.join(dir, "svid.0.pem"), key: path.join(dir, "svid.0.key"), ca: path.join(dir, "federated_bundle.0.0.pem") };
    };
    const b = await material(sideB());
    const a = await material(sideA());
    const port = await closedLoopbackPort();
    const server = spawn("openssl", ["s_server", "-accept", `127.0.0.1:${port}`, "-naccept", "1", "-cert", b.cert, "-key", b.key, "-CAfile", b.ca, "-Verify", "1", "-verify_return_error", "-www"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const serverOut = collect(server);
    try {
      await until("openssl s_server to accept", () => serverOut.text.includes("ACCEPT"));
      const client = spawn("openssl", ["s_client", "-connect", `127.0.0.1:${port}`, "-cert", a.cert, "-key", a.key, "-CAfile", a.ca, "-verify_return_error", "-ign_eof"], {
        stdio: ["pipe", "pipe", "pipe"],
      });
      const clientOut = collect(client);
      client.stdin?.end("GET / HTTP/1.0\r\n\r\n");
      const code = await exited(client);
      expect(clientOut.text).toContain("Verify return code: 0 (ok)");
      // s_server -www answers with a status page once the client certificate verified.
      expect(clientOut.text).toContain("HTTP/1.0 200 ok");
      expect(code).toBe(0);
    } finally {
      if (server.exitCode === null) server.kill("SIGTERM");
      await exited(server);
    }
  }, 60_000);

  it("a JWT-SVID minted in td-b validates in td-a through td-a's Workload API", async () => {
    const token = (await sideB().client?.fetchJwtSvid({ audience: ["td-a-service"] }))?.token;
    expect(token).toBeDefined();
    const validated = await sideA().client?.validateJwtSvid(token ?? "", "td-a-service");
    expect(validated?.id.toString()).toBe(sideB().workloadId);
    // The audience is still checked.
    await expect(sideA().client?.validateJwtSvid(token ?? "", "some-other-service")).rejects.toThrow();
  }, 30_000);

  it("td-b rotates its CA (prepare, activate, retire) while td-a's workload keeps connecting, with no restart", async () => {
    const b = await startWorkloadServer(sideB(), "td-a.test");
    const tdB = parseTrustDomain("td-b.test");
    const rootsOfB = (td: TrustDomainUnderTest): X509Certificate[] => [...(sourceOf(td).getX509BundleForTrustDomain(tdB)?.authorities ?? [])];
    /** Fingerprint of the td-b root that signed td-b's workload SVID (its chain ends below the root). */
    const signingRoot = (): string => {
      const chain = sourceOf(sideB()).context?.svids[0]?.certificates ?? [];
      const top = chain[chain.length - 1];
      const root = top === undefined ? undefined : rootsOfB(sideB()).find((r) => top.checkIssued(r) && top.verify(r.publicKey));
      return root?.fingerprint256 ?? "";
    };
    const firstRoot = signingRoot();
    expect(firstRoot).not.toBe("");
    expect(rootsOfB(sideA()).map((r) => r.fingerprint256)).toContain(firstRoot);
    const failures: string[] = [];
    let connections = 0;
    try {
      // Until td-b's workload holds an SVID of a new CA and td-a no longer holds any root it held at the start.
      const deadline = Date.now() + 150_000;
      for (;;) {
        try {
          expect(await connectAs(sideA(), b.port, sideB().workloadId)).toBe(`hello ${sideA().workloadId}\n`);
        } catch (e) {
          failures.push(`${new Date().toISOString()}: ${(e as Error).message}`);
        }
        connections += 1;
        const current = signingRoot();
        // Signed by another td-b CA, which td-a trusts, and the first root has left td-a's view of td-b's bundle.
        const rotated = current !== "" && current !== firstRoot;
        const retiredAtA = !rootsOfB(sideA()).some((r) => r.fingerprint256 === firstRoot);
        if (rotated && retiredAtA) break;
        if (Date.now() > deadline) {
          throw new Error(`td-b's CA did not rotate and retire in time (rotated ${rotated}, retired at td-a ${retiredAtA})\n${diagnostics(sideB())}`);
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
      expect(failures).toEqual([]);
      expect(connections).toBeGreaterThan(10);
      // The last connection was made with td-b's new CA and td-a trusting only roots it learnt from td-b's endpoint.
      expect(await connectAs(sideA(), b.port, sideB().workloadId)).toBe(`hello ${sideA().workloadId}\n`);
      expect(b.refused).toEqual([]);
    } finally {
      await b.close();
    }
  }, 200_000);
});

/** `td`'s server CA records and its server's and agent's warnings and errors (the last 40), for a failure message. */
function diagnostics(td: TrustDomainUnderTest): string {
  const pick = (who: string, logs: readonly Record<string, unknown>[]): string[] =>
    logs
      .filter((r) => (typeof r.msg === "string" && r.msg.startsWith("ca:")) || r.level === "warn" || r.level === "error" || (typeof r.level === "number" && r.level >= 40))
      .map((r) => `${who} ${JSON.stringify(r)}`);
  return [...pick(`${td.name} server`, td.srv.logs), ...pick(`${td.name} agent`, td.agent?.logs ?? [])].slice(-40).join("\n");
}

function collect(child: ChildProcess): { text: string } {
  const out = { text: "" };
  child.stdout?.on("data", (d: Buffer) => (out.text += d.toString("utf8")));
  child.stderr?.on("data", (d: Buffer) => (out.text += d.toString("utf8")));
  return out;
}

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
    child.once("exit", (code) => resolve(code));
  });
}
