/**
 * The reserved `/spire` namespace (issue 8, point 3) against real processes.
 * A `sigil-server run` refuses, through its CLI and its admin API, entries,
 * minted SVIDs and join tokens that would hand a workload an ID of the server
 * or of an agent, and stores nothing; entries whose parent is an agent stay
 * normal. A real `sigil-agent run` refuses a server on loopback presenting a
 * workload SVID signed by the real CA, before it sends its join token.
 */
import { spawn } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { credentials, Server, ServerCredentials, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAPI } from "../../proto/gen/sigil/agent/v1/agent_pb.js";
import { AgentAdmin, EntryAdmin, SvidAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { buildCsr } from "../../spiffe/csr.js";
import { grpcServiceDefinition, type GrpcServiceImplementation } from "../../spiffe/grpc/service.js";
import { generateKeyPair } from "../../spiffe/signer.js";
import { followJsonLog } from "./support/json-log.js";
import { startServerProcess, type CliResult, type ServerProcess } from "./support/server-process.js";
import { AGENT_MAIN } from "../support/programs.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const RESERVED = ["spiffe://example.org/spire/agent/x", "spiffe://example.org/spire/server", "spiffe://example.org/spire"];
const reservedMessage = (field: string, id: string): string => `${field}: ${id} is in the reserved namespace /spire, which belongs to the server and agents`;

let srv: ServerProcess | undefined;
/** The agent ID of a pending join token: a normal parent for workload entries. */
let agentParent = "";

function server(): ServerProcess {
  if (!srv) throw new Error("the server did not start");
  return srv;
}

function ok(r: CliResult): string {
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}

function entryCount(): number {
  return (JSON.parse(ok(server().cli(["entry", "count", "--output", "json"]))) as { count: number }).count;
}

beforeAll(async () => {
  srv = await startServerProcess();
  agentParent = (JSON.parse(ok(srv.cli(["token", "generate", "--output", "json"]))) as { agent_id: string }).agent_id;
  expect(agentParent).toMatch(/^spiffe:\/\/example\.org\/spire\/agent\/join_token\//);
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  if (srv) rmSync(srv.dir, { recursive: true, force: true });
});

/** Each CLI call starts a Node process: generous per-test time on a loaded machine. */
const CLI_TEST_MS = 120_000;

describe("sigil-server CLI: the reserved /spire namespace", () => {
  it("entry create for an ID under /spire is refused (exit 1, message names the field and the namespace), nothing stored", () => {
    const before = entryCount();
    for (const id of RESERVED) {
      const r = server().cli(["entry", "create", "--spiffe-id", id, "--parent-id", agentParent, "--selector", "unix:uid:1000"]);
      expect(r.status, id).toBe(1);
      expect(r.stderr).toContain(`error: ${reservedMessage("entries[0].spiffe_id", id)}`);
    }
    expect(entryCount()).toBe(before);
  }, CLI_TEST_MS);

  it("entries under an agent or the server as parent, and IDs that only look like /spire, are created", () => {
    for (const id of ["spiffe://example.org/spirex/foo", "spiffe://example.org/foo/spire/bar"]) {
      const out = ok(server().cli(["entry", "create", "--spiffe-id", id, "--parent-id", agentParent, "--selector", "unix:uid:1000", "--output", "json"]));
      expect((JSON.parse(out) as { entries: { spiffe_id: string; parent_id: string }[] }).entries[0]).toMatchObject({ spiffe_id: id, parent_id: agentParent });
    }
    const alias = ok(server().cli(["entry", "create", "--node", "--spiffe-id", "spiffe://example.org/node/a", "--selector", "unix:uid:5", "--output", "json"]));
    expect((JSON.parse(alias) as { entries: { parent_id: string }[] }).entries[0]?.parent_id).toBe("spiffe://example.org/spire/server");
  }, CLI_TEST_MS);

  it("entry update --spiffe-id into /spire is refused and the entry is unchanged", () => {
    const created = ok(server().cli(["entry", "create", "--spiffe-id", "spiffe://example.org/cli/web", "--parent-id", agentParent, "--selector", "unix:uid:1001", "--output", "json"]));
    const { id } = (JSON.parse(created) as { entries: { id: string }[] }).entries[0]!;
    const r = server().cli(["entry", "update", "--entry-id", id, "--spiffe-id", "spiffe://example.org/spire/server"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`error: ${reservedMessage("entries[0].spiffe_id", "spiffe://example.org/spire/server")}`);
    const shown = JSON.parse(ok(server().cli(["entry", "show", "--entry-id", id, "--output", "json"]))) as { entries: { spiffe_id: string; revision: string | number }[] };
    expect(shown.entries[0]).toMatchObject({ spiffe_id: "spiffe://example.org/cli/web" });
    expect(Number(shown.entries[0]?.revision)).toBe(0);
  }, CLI_TEST_MS);

  it("x509 mint and jwt mint for an ID under /spire are refused and nothing is issued", () => {
    for (const id of RESERVED) {
      const x509 = server().cli(["x509", "mint", "--spiffe-id", id, "--output", "json"]);
      expect(x509.status, id).toBe(1);
      expect(x509.stderr).toContain(`error: ${reservedMessage("spiffe_id", id)}`);
      expect(x509.stdout).not.toContain("BEGIN CERTIFICATE");
      const jwt = server().cli(["jwt", "mint", "--spiffe-id", id, "--audience", "db"]);
      expect(jwt.status, id).toBe(1);
      expect(jwt.stderr).toContain(`error: ${reservedMessage("spiffe_id", id)}`);
    }
    const issued = JSON.parse(ok(server().cli(["issuance", "list", "--output", "json"]))) as { issuances: { spiffe_id: string }[] };
    expect(issued.issuances.filter((i) => i.spiffe_id.startsWith("spiffe://example.org/spire"))).toEqual([]);
  }, CLI_TEST_MS);

  it("token generate --spiffe-id outside /spire/agent/ is refused and grants no parent; inside it is accepted", () => {
    for (const id of ["spiffe://example.org/host/build-7", "spiffe://example.org/spire/server"]) {
      const r = server().cli(["token", "generate", "--spiffe-id", id]);
      expect(r.status, id).toBe(1);
      expect(r.stderr).toContain(`error: agent_id: ${id} is not an agent ID: agent IDs are under /spire/agent/`);
    }
    // No pending token names host/build-7, so it is no parent either.
    const orphan = server().cli(["entry", "create", "--spiffe-id", "spiffe://example.org/ci", "--parent-id", "spiffe://example.org/host/build-7", "--selector", "unix:uid:7"]);
    expect(orphan.status).toBe(1);
    expect(orphan.stderr).toMatch(/parent_id: spiffe:\/\/example\.org\/host\/build-7 is unknown/);
    const good = JSON.parse(ok(server().cli(["token", "generate", "--spiffe-id", "spiffe://example.org/spire/agent/host/build-7", "--output", "json"]))) as { agent_id: string };
    expect(good.agent_id).toBe("spiffe://example.org/spire/agent/host/build-7");
  }, CLI_TEST_MS);
});

describe("admin API of a running server: the reserved /spire namespace", () => {
  it("answers INVALID_ARGUMENT for entries, mints and join tokens", async () => {
    const target = `unix:${server().socketPath}`;
    const creds = credentials.createInsecure();
    const entry = createUnaryClient(EntryAdmin, target, creds);
    const svid = createUnaryClient(SvidAdmin, target, creds);
    const agent = createUnaryClient(AgentAdmin, target, creds);
    const failure = (p: Promise<unknown>): Promise<ServiceError> => p.then(() => Promise.reject(new Error("expected a refusal")), (e: ServiceError) => e);
    try {
      const res = await entry.batchCreateEntry({ entries: [create(EntrySchema, { spiffeId: "spiffe://example.org/spire/agent/x", parentId: agentParent, selectors: [{ type: "unix", value: "uid:1" }] })] });
      expect(res.results[0]?.status).toMatchObject({ code: status.INVALID_ARGUMENT, message: reservedMessage("entries[0].spiffe_id", "spiffe://example.org/spire/agent/x") });
      const { privateKey } = generateKeyPair("ec-p256");
      const x509 = await failure(svid.mintX509SVID({ csr: buildCsr(privateKey), spiffeId: "spiffe://example.org/spire/server" }));
      expect({ code: x509.code, details: x509.details }).toEqual({ code: status.INVALID_ARGUMENT, details: reservedMessage("spiffe_id", "spiffe://example.org/spire/server") });
      const jwt = await failure(svid.mintJWTSVID({ spiffeId: "spiffe://example.org/spire/server", audience: ["db"] }));
      expect(jwt.code).toBe(status.INVALID_ARGUMENT);
      const token = await failure(agent.createJoinToken({ agentId: "spiffe://example.org/workload" }));
      expect({ code: token.code, details: token.details }).toEqual({ code: status.INVALID_ARGUMENT, details: "agent_id: spiffe://example.org/workload is not an agent ID: agent IDs are under /spire/agent/" });
    } finally {
      for (const c of [entry, svid, agent]) c.close();
    }
  });
});

describe("sigil-agent: the server must be exactly spiffe://<td>/spire/server", () => {
  let impostor: Server | undefined;
  let dir: string | undefined;

  afterAll(async () => {
    if (impostor) await new Promise<void>((resolve) => impostor?.tryShutdown(() => resolve()));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("refuses a server presenting a workload SVID signed by the trust domain's CA, without sending its join token", async () => {
    // A genuine SVID of the trust domain, for a workload: what a compromised workload could present.
    const minted = JSON.parse(ok(server().cli(["x509", "mint", "--spiffe-id", "spiffe://example.org/workload", "--output", "json"]))) as { svid_pem: string; key_pem: string; bundle_pem: string };
    const attestCalls: unknown[] = [];
    const refuse = (call: unknown, cb?: (e: unknown) => void): void => {
      attestCalls.push(call);
      cb?.({ code: status.UNIMPLEMENTED, details: "impostor" });
    };
    impostor = new Server();
    impostor.addService(grpcServiceDefinition(AgentAPI), {
      attestAgent: (call: { end(): void }) => {
        attestCalls.push(call);
        call.end();
      },
      renewAgent: refuse,
      syncAuthorized: refuse,
      batchNewX509SVID: refuse,
      newJWTSVID: refuse,
    } as unknown as GrpcServiceImplementation<(typeof AgentAPI)["method"]>);
    const tls = ServerCredentials.createSsl(null, [{ private_key: Buffer.from(minted.key_pem), cert_chain: Buffer.from(minted.svid_pem) }], false);
    const port = await new Promise<number>((resolve, reject) => impostor?.bindAsync("127.0.0.1:0", tls, (e, p) => (e ? reject(e) : resolve(p))));

    dir = mkdtempSync(path.join(tmpdir(), "sigil-impostor-"));
    const bundlePath = path.join(dir, "bundle.pem");
    writeFileSync(bundlePath, minted.bundle_pem);
    mkdirSync(path.join(dir, "public"), { mode: 0o755 });
    chmodSync(path.join(dir, "public"), 0o755); // whatever the umask: the agent refuses a group-writable socket directory
    const configPath = path.join(dir, "agent.yaml");
    writeFileSync(
      configPath,
      `agent:
  trust_domain: example.org
  server_address: 127.0.0.1
  server_port: ${port}
  socket_path: ${path.join(dir, "public", "api.sock")}
  data_dir: ${path.join(dir, "data")}
  trust_bundle_path: ${bundlePath}
  log_level: debug
plugins:
  NodeAttestor:
    join_token: {}
  WorkloadAttestor:
    unix: {}
`,
    );
    const child = spawn(process.execPath, [AGENT_MAIN, "run", "--config", configPath, "--join-token", "a-token-the-impostor-must-not-see"], {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const log = followJsonLog(child);
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    // The agent gives up on attestation and exits; should it retry instead, it is stopped once the refusal shows.
    const refusal = "presented spiffe://example.org/workload, expected spiffe://example.org/spire/server";
    const seen = (): boolean => log.stderr().includes(refusal) || log.logs.some((r) => JSON.stringify(r).includes(refusal));
    const watch = setInterval(() => {
      if (seen() && child.exitCode === null) child.kill("SIGTERM");
    }, 100);
    const timeout = setTimeout(() => child.kill("SIGKILL"), 60_000);
    const code = await exited;
    clearInterval(watch);
    clearTimeout(timeout);

    expect(seen(), `stderr: ${log.stderr()}`).toBe(true);
    expect(code).not.toBe(0);
    expect(attestCalls).toEqual([]);
  }, 90_000);
});
