/**
 * Workload Endpoint conformance of the agent's server side (SPIFFE Workload
 * Endpoint, checklist §1.5): the real endpoint (Unix socket, SO_PEERCRED,
 * unix attestor, handler) in front of a fake cache.
 */
import { spawn } from "node:child_process";
import { statSync } from "node:fs";
import { lstat, rename, writeFile } from "node:fs/promises";
import { once } from "node:events";
import { connect, createServer, type Socket } from "node:net";
import path from "node:path";
import { create, createFileRegistry, fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { Client, credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { parseAgentConfig } from "../../agent/config/load.js";
import { DEFAULT_AGENT_SOCKET_PATH as DEFAULT_WORKLOAD_API_SOCKET_PATH } from "../../agent/config/schema.js";
import { createPeerTracker, startWorkloadEndpoint } from "../../agent/endpoints/server.js";
import { createWorkloadApiHandler } from "../../agent/endpoints/workload-api/handler.js";
import { createHealthService } from "../../common/health/grpc-health.js";
import { createLogger } from "../../common/log.js";
import { parseSelector } from "../../common/selector.js";
import { Metrics } from "../../common/metrics.js";
import { HealthCheckRequestSchema, Health } from "../../proto/gen/grpc/health/v1/health_pb.js";
import {
  ServerReflection,
  ServerReflectionRequestSchema,
  type ServerReflectionResponse,
} from "../../proto/gen/grpc/reflection/v1/reflection_pb.js";
import {
  JWTBundlesRequestSchema,
  JWTSVIDRequestSchema,
  SpiffeWorkloadAPI,
  ValidateJWTSVIDRequestSchema,
  WITBundlesRequestSchema,
  WITSVIDRequestSchema,
  X509BundlesRequestSchema,
  X509SVIDRequestSchema,
} from "../../proto/gen/spiffe/workload_pb.js";
import { isSigilError } from "../../spiffe/errors.js";
import { grpcServiceDefinition } from "../../spiffe/grpc/service.js";
import { createWorkloadApiClient, type WorkloadApiClient } from "../../spiffe/workloadapi/client.js";
import { isWorkloadApiError } from "../../spiffe/workloadapi/errors.js";
import { FakeWorkloadCache, fixedCaller, ownUidSelector, startTestAgentEndpoint, type TestAgentEndpoint, type TestAgentEndpointOptions } from "../fakes/fake-workload-cache.js";

const WAPI = grpcServiceDefinition(SpiffeWorkloadAPI);
const HEALTH = grpcServiceDefinition(Health);
const REFLECTION = grpcServiceDefinition(ServerReflection);
const isRoot = process.geteuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("the other-uid Workload Endpoint tests need root; CI runs as root");
  console.warn("SKIP: WEP-13 (clients as other uids) needs root; skipped on this machine");
}

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function endpoint(cache = new FakeWorkloadCache(), extra: Partial<TestAgentEndpointOptions> = {}): Promise<TestAgentEndpoint> {
  const ep = await startTestAgentEndpoint({ cache, ...extra });
  cleanups.push(() => ep.close());
  return ep;
}

function client(ep: TestAgentEndpoint): WorkloadApiClient {
  const c = createWorkloadApiClient({ address: ep.address });
  cleanups.push(() => c.close());
  return c;
}

function rawClient(ep: TestAgentEndpoint): Client {
  const c = new Client(ep.address, credentials.createInsecure());
  cleanups.push(() => c.close());
  return c;
}

function header(...values: string[]): Metadata {
  const md = new Metadata();
  for (const v of values) md.add("workload.spiffe.io", v);
  return md;
}

type Outcome = { ok: true; message: unknown } | { ok: false; code: number; details: string };

/** One call of any Workload API method with the given metadata: the first message (or response), or the status. */
function call(c: Client, method: keyof typeof WAPI, md: Metadata, request?: unknown): Promise<Outcome> {
  const def = WAPI[method] as unknown as {
    path: string;
    responseStream: boolean;
    requestSerialize: (v: unknown) => Buffer;
    responseDeserialize: (b: Buffer) => unknown;
  };
  const defaults: Record<string, unknown> = {
    fetchX509SVID: create(X509SVIDRequestSchema),
    fetchX509Bundles: create(X509BundlesRequestSchema),
    fetchJWTBundles: create(JWTBundlesRequestSchema),
    fetchJWTSVID: create(JWTSVIDRequestSchema, { audience: ["aud"] }),
    validateJWTSVID: create(ValidateJWTSVIDRequestSchema, { audience: "aud", svid: "x.y.z" }),
    fetchWITSVID: create(WITSVIDRequestSchema),
    fetchWITBundles: create(WITBundlesRequestSchema),
  };
  const req = request ?? defaults[method];
  return new Promise((resolve) => {
    if (!def.responseStream) {
      c.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, req, md, (err: ServiceError | null, value?: unknown) => {
        resolve(err ? { ok: false, code: err.code, details: err.details } : { ok: true, message: value });
      });
      return;
    }
    const stream = c.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, req, md);
    let settled = false;
    stream.on("data", (m: unknown) => {
      if (settled) return;
      settled = true;
      resolve({ ok: true, message: m });
      stream.cancel();
    });
    stream.on("error", (err: ServiceError) => {
      if (settled) return;
      settled = true;
      resolve({ ok: false, code: err.code, details: err.details });
    });
  });
}

/**
 * Asks the endpoint's server reflection the given questions on one bidi stream
 * (at `path`: the v1 service unless told) and returns the answers in order.
 */
function reflect(
  c: Client,
  requests: ReadonlyArray<MessageInitShape<typeof ServerReflectionRequestSchema>>,
  path = REFLECTION.serverReflectionInfo.path,
): Promise<ServerReflectionResponse[]> {
  const def = REFLECTION.serverReflectionInfo;
  const stream = c.makeBidiStreamRequest(path, def.requestSerialize, def.responseDeserialize, new Metadata());
  const answers: ServerReflectionResponse[] = [];
  return new Promise((resolve, reject) => {
    stream.on("data", (r: ServerReflectionResponse) => answers.push(r));
    stream.on("error", reject);
    stream.on("end", () => resolve(answers));
    for (const r of requests) stream.write(create(ServerReflectionRequestSchema, r));
    stream.end();
  });
}

/** The decoded FileDescriptorProtos of a file_descriptor_response (failing the test on any other answer). */
function descriptors(r: ServerReflectionResponse | undefined): FileDescriptorProto[] {
  expect(r?.messageResponse.case).toBe("fileDescriptorResponse");
  const bytes = r?.messageResponse.case === "fileDescriptorResponse" ? r.messageResponse.value.fileDescriptorProto : [];
  return bytes.map((b) => fromBinary(FileDescriptorProtoSchema, b));
}

/** Writes a client script that fetches X.509 context through the real client and prints the result as JSON. */
async function clientScript(dir: string): Promise<string> {
  const file = path.join(dir, "client.mjs");
  const clientModule = path.resolve("spiffe/workloadapi/client.ts");
  await writeFile(
    file,
    `const { createWorkloadApiClient } = await import(${JSON.stringify(clientModule)});
const c = createWorkloadApiClient({ address: process.argv[2] });
try {
  const ctx = await c.fetchX509Context();
  console.log(JSON.stringify({ ids: ctx.svids.map((s) => s.id.toString()) }));
} catch (e) {
  console.log(JSON.stringify({ code: e.grpcCode ?? -1, details: e.grpcDetails ?? String(e) }));
} finally {
  c.close();
}
`,
    { mode: 0o644 },
  );
  return file;
}

/** Runs the client script (optionally as another uid) and returns its JSON output and pid. */
function runClient(script: string, address: string, ids?: { uid: number; gid: number }): Promise<{ pid: number; out: { ids?: string[]; code?: number; details?: string } }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", script, address], {
      cwd: process.cwd(),
      stdio: ["ignore", "pipe", "pipe"],
      ...(ids === undefined ? {} : ids),
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("exit", (code) => {
      const line = stdout.trim().split("\n").pop() ?? "";
      try {
        resolve({ pid: child.pid ?? -1, out: JSON.parse(line) as { ids?: string[] } });
      } catch {
        reject(new Error(`client exited ${code}: ${stdout} ${stderr}`));
      }
    });
  });
}

describe("Workload Endpoint (server side)", () => {
  it("WEP-1: the endpoint is a local Unix domain socket, mode 0777, in a directory the operator controls", async () => {
    const ep = await endpoint();
    const st = await lstat(ep.socketPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o777);
    expect(ep.address).toBe(`unix://${ep.socketPath}`);
    expect(path.isAbsolute(DEFAULT_WORKLOAD_API_SOCKET_PATH)).toBe(true);
    expect(path.basename(path.dirname(DEFAULT_WORKLOAD_API_SOCKET_PATH))).toBe("public");
  });

  it("WEP-1: a relative socket path is refused; a missing directory is created 0755", async () => {
    const log = createLogger({ level: "error", destination: { write: () => undefined } });
    const cache = new FakeWorkloadCache();
    const handler = createWorkloadApiHandler({ cache, attest: async () => fixedCaller([]), trustDomain: cache.own.trustDomain, log, metrics: new Metrics({ defaultMetrics: false }) });
    await expect(startWorkloadEndpoint({ socketPath: "rel/api.sock", services: [handler], peers: createPeerTracker(), metrics: new Metrics({ defaultMetrics: false }), log })).rejects.toSatisfy((e) => isSigilError(e, "ERR_INVALID_ARGUMENT"));
    const ep = await endpoint();
    const nested = path.join(ep.dir, "public", "api.sock");
    const second = await startWorkloadEndpoint({ socketPath: nested, services: [handler], peers: createPeerTracker(), metrics: new Metrics({ defaultMetrics: false }), log });
    cleanups.push(() => second.close());
    expect((await lstat(path.dirname(nested))).mode & 0o777).toBe(0o755);
  });

  it("WEP-1: a stale socket file is replaced; a socket another agent serves is left alone and start fails", async () => {
    const ep = await endpoint();
    const log = createLogger({ level: "error", destination: { write: () => undefined } });
    const cache = new FakeWorkloadCache();
    const handler = createWorkloadApiHandler({ cache, attest: async () => fixedCaller([parseSelector(ownUidSelector())]), trustDomain: cache.own.trustDomain, log, metrics: new Metrics({ defaultMetrics: false }) });

    // Another live agent on the same path.
    await expect(startWorkloadEndpoint({ socketPath: ep.socketPath, services: [handler], peers: createPeerTracker(), metrics: new Metrics({ defaultMetrics: false }), log })).rejects.toSatisfy((e) =>
      isSigilError(e, "ERR_ALREADY_EXISTS"),
    );
    // The first agent still serves.
    cache.addIdentity({ spiffeId: "spiffe://example.org/still", selectors: [ownUidSelector()] });
    ep.cache.addIdentity({ spiffeId: "spiffe://example.org/still", selectors: [ownUidSelector()] });
    await expect(client(ep).fetchX509Context()).resolves.toBeDefined();

    // A stale socket: the file of a listener that died without unlinking it.
    const stale = path.join(ep.dir, "stale.sock");
    const zombie = createServer();
    await new Promise<void>((r) => zombie.listen(stale, r));
    await rename(stale, `${stale}.keep`); // out of reach of close(), which unlinks the path
    await new Promise<void>((r) => zombie.close(() => r()));
    await rename(`${stale}.keep`, stale);
    expect((await lstat(stale)).isSocket()).toBe(true);
    const fresh = await startWorkloadEndpoint({ socketPath: stale, services: [handler], peers: createPeerTracker(), metrics: new Metrics({ defaultMetrics: false }), log });
    cleanups.push(() => fresh.close());
    const c = createWorkloadApiClient({ address: fresh.address });
    cleanups.push(() => c.close());
    await expect(c.fetchX509Context()).resolves.toBeDefined();

    // A regular file in the way is never deleted.
    const file = path.join(ep.dir, "file.sock");
    await writeFile(file, "not a socket");
    await expect(startWorkloadEndpoint({ socketPath: file, services: [handler], peers: createPeerTracker(), metrics: new Metrics({ defaultMetrics: false }), log })).rejects.toSatisfy((e) => isSigilError(e, "ERR_ALREADY_EXISTS"));
    expect((await lstat(file)).isFile()).toBe(true);
  });

  it("WEP-13: the peer tracker maps each connection's synthetic address to its SO_PEERCRED credentials, and forgets it on close", async () => {
    const ep = await endpoint();
    const peers = createPeerTracker();
    const sock = path.join(ep.dir, "tracker.sock");
    const accepted = new Promise<Socket>((resolve) => {
      const srv = createServer(resolve);
      srv.listen(sock);
      cleanups.push(() => new Promise<void>((r) => srv.close(() => r())));
    });
    const conn = connect(sock);
    const serverSide = await accepted;
    const address = peers.register(serverSide);
    // What grpc-js's call.getPeer() reports: remoteAddress, no port.
    expect(serverSide.remoteAddress).toBe(address);
    expect(serverSide.remotePort).toBeUndefined();
    expect(peers.lookup(address)).toMatchObject({ pid: process.pid, uid: process.geteuid?.(), gid: process.getegid?.() });
    expect(peers.lookup("127.0.0.1:5000")).toBeUndefined();
    conn.end();
    await once(serverSide, "close");
    expect(peers.lookup(address)).toBeUndefined();
    expect(peers.size).toBe(0);
  });

  it("WEP-2, WEP-7: a plain @grpc/grpc-js client with insecure credentials and the Sigil client both work", async () => {
    const cache = new FakeWorkloadCache();
    cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ownUidSelector()] });
    const ep = await endpoint(cache);
    const raw = await call(rawClient(ep), "fetchX509SVID", header("true"));
    expect(raw.ok).toBe(true);
    const ctx = await client(ep).fetchX509Context();
    expect(ctx.svids.map((s) => s.id.toString())).toEqual(["spiffe://example.org/web"]);
  });

  describe("WEP-6: the security header must be exactly one `true`", () => {
    const bad: Array<[string, string[]]> = [
      ["missing", []],
      ["True", ["True"]],
      ["TRUE", ["TRUE"]],
      ["1", ["1"]],
      ["two values", ["true", "true"]],
      ["empty", [""]],
    ];
    for (const method of ["fetchX509SVID", "fetchJWTSVID"] as const) {
      for (const [name, values] of bad) {
        it(`WEP-6: ${method} with header ${name} → InvalidArgument`, async () => {
          const cache = new FakeWorkloadCache();
          cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ownUidSelector()] });
          const ep = await endpoint(cache);
          const r = await call(rawClient(ep), method, header(...values));
          expect(r).toEqual({ ok: false, code: status.INVALID_ARGUMENT, details: "security header missing from request" });
          // Rejected before attestation.
          expect(ep.attestedPeers).toHaveLength(0);
        });
      }
      it(`WEP-6: ${method} with header true → OK`, async () => {
        const cache = new FakeWorkloadCache();
        cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ownUidSelector()] });
        const ep = await endpoint(cache);
        const r = await call(rawClient(ep), method, header("true"));
        expect(r.ok).toBe(true);
      });
    }

    it("WEP-6: every SpiffeWorkloadAPI method, WIT ones included, checks the header first", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ownUidSelector()] });
      const ep = await endpoint(cache);
      const c = rawClient(ep);
      for (const method of Object.keys(WAPI) as Array<keyof typeof WAPI>) {
        const r = await call(c, method, header());
        expect(r, method).toEqual({ ok: false, code: status.INVALID_ARGUMENT, details: "security header missing from request" });
      }
    });

    it("WEP-6: the health service on the same socket needs no header", async () => {
      const health = createHealthService();
      const ep = await endpoint(new FakeWorkloadCache(), { health });
      const c = rawClient(ep);
      const r = await new Promise<{ err: ServiceError | null }>((resolve) =>
        c.makeUnaryRequest(HEALTH.check.path, HEALTH.check.requestSerialize, HEALTH.check.responseDeserialize, create(HealthCheckRequestSchema), new Metadata(), (err) =>
          resolve({ err }),
        ),
      );
      expect(r.err).toBeNull();
    });
  });

  it("WEP-12, WEP-14: a bare client sending only the header gets its SVID; the caller is identified by the kernel, not by anything it sends", async () => {
    const cache = new FakeWorkloadCache();
    cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ownUidSelector()] });
    const ep = await endpoint(cache);
    const script = await clientScript(ep.dir);
    const { pid, out } = await runClient(script, ep.address);
    expect(out.ids).toEqual(["spiffe://example.org/web"]);
    // The endpoint learned the client's pid and uid out of band (SO_PEERCRED).
    expect(ep.attestedPeers.map((p) => p.pid)).toContain(pid);
    expect(ep.attestedPeers.find((p) => p.pid === pid)?.uid).toBe(process.geteuid?.());
  });

  it.skipIf(!isRoot)("WEP-13: two processes with different uids get different SVIDs (needs root)", async () => {
    const cache = new FakeWorkloadCache();
    cache.addIdentity({ spiffeId: "spiffe://example.org/alice", selectors: ["unix:uid:4321"] });
    cache.addIdentity({ spiffeId: "spiffe://example.org/bob", selectors: ["unix:uid:4322"] });
    const ep = await endpoint(cache);
    const script = await clientScript(ep.dir);
    const [a, b] = await Promise.all([runClient(script, ep.address, { uid: 4321, gid: 4321 }), runClient(script, ep.address, { uid: 4322, gid: 4322 })]);
    expect(a.out.ids).toEqual(["spiffe://example.org/alice"]);
    expect(b.out.ids).toEqual(["spiffe://example.org/bob"]);
  });

  it("WEP-16: before the cache is ready every RPC is Unavailable; once ready a retry succeeds", async () => {
    const cache = new FakeWorkloadCache({ ready: false });
    cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ownUidSelector()] });
    const ep = await endpoint(cache);
    const c = rawClient(ep);
    for (const method of ["fetchX509SVID", "fetchX509Bundles", "fetchJWTBundles", "fetchJWTSVID", "validateJWTSVID"] as const) {
      const r = await call(c, method, header("true"));
      expect(r.ok, method).toBe(false);
      expect((r as { code: number }).code, method).toBe(status.UNAVAILABLE);
    }
    cache.setReady(true);
    expect((await call(c, "fetchX509SVID", header("true"))).ok).toBe(true);
  });

  it("WEP-17: an unregistered caller gets PermissionDenied; after an entry is created a retry succeeds", async () => {
    const cache = new FakeWorkloadCache();
    const ep = await endpoint(cache);
    const c = client(ep);
    const err = await c.fetchX509Context().catch((e: unknown) => e);
    expect(isWorkloadApiError(err, status.PERMISSION_DENIED)).toBe(true);
    cache.addIdentity({ spiffeId: "spiffe://example.org/late", selectors: [ownUidSelector()] });
    const ctx = await c.fetchX509Context();
    expect(ctx.svids.map((s) => s.id.toString())).toEqual(["spiffe://example.org/late"]);
  });

  it("WEP-19: SpiffeWorkloadAPI has exactly the 7 standard methods; other services have their own names", async () => {
    const ep = await endpoint(new FakeWorkloadCache(), { health: createHealthService() });
    expect(Object.values(WAPI).map((m) => m.path).sort()).toEqual(
      [
        "/SpiffeWorkloadAPI/FetchJWTBundles",
        "/SpiffeWorkloadAPI/FetchJWTSVID",
        "/SpiffeWorkloadAPI/FetchWITBundles",
        "/SpiffeWorkloadAPI/FetchWITSVID",
        "/SpiffeWorkloadAPI/FetchX509Bundles",
        "/SpiffeWorkloadAPI/FetchX509SVID",
        "/SpiffeWorkloadAPI/ValidateJWTSVID",
      ].sort(),
    );
    expect(Object.values(HEALTH).every((m) => m.path.startsWith("/grpc.health.v1.Health/"))).toBe(true);
    // Nothing else answers under SpiffeWorkloadAPI.
    const c = rawClient(ep);
    const def = WAPI.fetchX509SVID;
    const r = await new Promise<ServiceError | null>((resolve) =>
      c.makeUnaryRequest("/SpiffeWorkloadAPI/FetchSecrets", def.requestSerialize, def.responseDeserialize, create(X509SVIDRequestSchema), header("true"), (err) => resolve(err)),
    );
    expect(r?.code).toBe(status.UNIMPLEMENTED);
  });

  it("WEP-20: the endpoint always exposes the Workload API (smoke test over the socket)", async () => {
    const cache = new FakeWorkloadCache();
    cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ownUidSelector()] });
    const ep = await endpoint(cache);
    const c = client(ep);
    const [ctx, x509Bundles, jwtBundles, jwt] = await Promise.all([
      c.fetchX509Context(),
      c.fetchX509Bundles(),
      c.fetchJwtBundles(),
      c.fetchJwtSvid({ audience: "svc" }),
    ]);
    expect(ctx.svids).toHaveLength(1);
    expect(x509Bundles.bundles.has("example.org")).toBe(true);
    expect(jwtBundles.bundles.has("example.org")).toBe(true);
    const validated = await c.validateJwtSvid(jwt.token, "svc");
    expect(validated.id.toString()).toBe("spiffe://example.org/web");
  });

  it("WEP-3: the endpoint is a Unix domain socket; TCP is not offered", async () => {
    const ep = await endpoint();
    expect(statSync(ep.socketPath).isSocket()).toBe(true);
    expect(ep.address).toMatch(/^unix:\/\//);
    // Only a path is accepted: a TCP address given as the socket path is refused, never bound.
    const log = createLogger({ level: "error", destination: { write: () => undefined } });
    const cache = new FakeWorkloadCache();
    const handler = createWorkloadApiHandler({ cache, attest: async () => fixedCaller([]), trustDomain: cache.own.trustDomain, log, metrics: new Metrics({ defaultMetrics: false }) });
    await expect(startWorkloadEndpoint({ socketPath: "tcp://127.0.0.1:8000", services: [handler], peers: createPeerTracker(), metrics: new Metrics({ defaultMetrics: false }), log })).rejects.toSatisfy((e) =>
      isSigilError(e, "ERR_INVALID_ARGUMENT"),
    );
  });

  it("WEP-4: a TCP listener address is refused by the agent config", () => {
    const config = (socketPath: string): string =>
      `agent:\n  trust_domain: example.org\n  insecure_bootstrap: true\n  socket_path: ${socketPath}\nplugins:\n  NodeAttestor:\n    join_token:\n  WorkloadAttestor:\n    unix:\n`;
    // The agent has no TCP listener at all, so no TCP address (not even loopback) can be configured.
    for (const address of ["tcp://0.0.0.0:8000", "tcp://127.0.0.1:8000", "tcp://[::1]:8000"]) {
      expect(() => parseAgentConfig(config(address)), address).toThrow(/agent\.socket_path: TCP listeners are not supported; give a Unix socket path \(WEP-4\)/);
    }
    expect(parseAgentConfig(config("/run/sigil/api.sock")).agent.socket_path).toBe("/run/sigil/api.sock");
  });

  it("WEP-21: server reflection lists SpiffeWorkloadAPI and describes it with its 7 methods, plus grpc.health.v1.Health", async () => {
    const ep = await endpoint(new FakeWorkloadCache(), { health: createHealthService() });
    const c = rawClient(ep);
    const [list, wapi, method, byName, health, unknown] = await reflect(c, [
      { host: "localhost", messageRequest: { case: "listServices", value: "" } },
      { messageRequest: { case: "fileContainingSymbol", value: "SpiffeWorkloadAPI" } },
      { messageRequest: { case: "fileContainingSymbol", value: "SpiffeWorkloadAPI.FetchJWTSVID" } },
      { messageRequest: { case: "fileByFilename", value: "spiffe/workload.proto" } },
      { messageRequest: { case: "fileContainingSymbol", value: "grpc.health.v1.Health" } },
      { messageRequest: { case: "fileContainingSymbol", value: "SpiffeWorkloadAPI2" } },
    ]);

    // Answers come in order, each naming its question.
    expect(list?.validHost).toBe("localhost");
    expect(list?.originalRequest?.messageRequest.case).toBe("listServices");
    expect(list?.messageResponse.case).toBe("listServicesResponse");
    const names = list?.messageResponse.case === "listServicesResponse" ? list.messageResponse.value.service.map((s) => s.name) : [];
    expect(names.sort()).toEqual(["SpiffeWorkloadAPI", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]);

    // The file first, then its dependencies (google.protobuf.Struct for ValidateJWTSVID claims).
    const files = descriptors(wapi);
    expect(files.map((f) => f.name)).toEqual(["spiffe/workload.proto", "google/protobuf/struct.proto"]);
    const [workload] = files;
    expect(workload?.package).toBe(""); // WAPI-2: no package, so /SpiffeWorkloadAPI/<Rpc>
    expect(workload?.syntax).toBe("proto3");
    expect(workload?.service.map((s) => s.name)).toEqual(["SpiffeWorkloadAPI"]);
    expect(workload?.service[0]?.method.map((m) => m.name).sort()).toEqual(
      ["FetchJWTBundles", "FetchJWTSVID", "FetchWITBundles", "FetchWITSVID", "FetchX509Bundles", "FetchX509SVID", "ValidateJWTSVID"].sort(),
    );
    // What a tool does with the answer: build a registry from the bytes alone (a set lists imports first).
    const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: [...files].reverse() }));
    const service = registry.getService("SpiffeWorkloadAPI");
    expect(service?.methods.map((m) => m.name)).toHaveLength(7);
    expect(service?.method.fetchX509SVID?.methodKind).toBe("server_streaming");
    expect(registry.getMessage("ValidateJWTSVIDResponse")?.field.claims?.message?.typeName).toBe("google.protobuf.Struct");

    expect(descriptors(method).map((f) => f.name)).toEqual(["spiffe/workload.proto", "google/protobuf/struct.proto"]);
    expect(descriptors(byName)[0]?.name).toBe("spiffe/workload.proto");
    const [healthFile] = descriptors(health);
    expect(healthFile?.package).toBe("grpc.health.v1");
    expect(healthFile?.service.map((s) => s.name)).toEqual(["Health"]);

    expect(unknown?.messageResponse.case).toBe("errorResponse");
    expect(unknown?.messageResponse.value).toMatchObject({ errorCode: status.NOT_FOUND });

    // Dependencies are reachable by name, and extension questions are answered (the Workload API declares none).
    const [struct, numbers, noExtension, empty] = await reflect(c, [
      { messageRequest: { case: "fileByFilename", value: "google/protobuf/struct.proto" } },
      { messageRequest: { case: "allExtensionNumbersOfType", value: "X509SVIDRequest" } },
      { messageRequest: { case: "fileContainingExtension", value: { containingType: "X509SVIDRequest", extensionNumber: 100 } } },
      {},
    ]);
    expect(descriptors(struct).map((f) => f.name)).toEqual(["google/protobuf/struct.proto"]);
    expect(numbers?.messageResponse).toMatchObject({ case: "allExtensionNumbersResponse", value: { baseTypeName: "X509SVIDRequest", extensionNumber: [] } });
    expect(noExtension?.messageResponse).toMatchObject({ case: "errorResponse", value: { errorCode: status.NOT_FOUND } });
    expect(empty?.messageResponse).toMatchObject({ case: "errorResponse", value: { errorCode: status.INVALID_ARGUMENT } });

    // grpcurl and older clients use the v1alpha name; same messages on the wire. (grpcurl itself is not in
    // Debian's archive, so CI cannot run it; this in-process client asks what `grpcurl list` asks.)
    const [alpha] = await reflect(c, [{ messageRequest: { case: "listServices", value: "" } }], "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo");
    expect(alpha?.messageResponse.case).toBe("listServicesResponse");
  });

  it("WEP-21: without a health service, reflection does not list one", async () => {
    const ep = await endpoint();
    const [list, health] = await reflect(rawClient(ep), [
      { messageRequest: { case: "listServices", value: "" } },
      { messageRequest: { case: "fileContainingSymbol", value: "grpc.health.v1.Health" } },
    ]);
    const names = list?.messageResponse.case === "listServicesResponse" ? list.messageResponse.value.service.map((s) => s.name) : [];
    expect(names).toContain("SpiffeWorkloadAPI");
    expect(names).not.toContain("grpc.health.v1.Health");
    expect(health?.messageResponse).toMatchObject({ case: "errorResponse", value: { errorCode: status.NOT_FOUND } });
  });

  it("WEP-1: the socket file is removed on close", async () => {
    const ep = await startTestAgentEndpoint({ cache: new FakeWorkloadCache() });
    const sock = ep.socketPath;
    await ep.close();
    await expect(lstat(sock)).rejects.toMatchObject({ code: "ENOENT" });
  });
});
