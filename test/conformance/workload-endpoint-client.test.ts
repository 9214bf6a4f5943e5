/**
 * Workload Endpoint conformance of Sigil's Workload API client (SPIFFE
 * Workload Endpoint spec; checklist §1.5 WEP-*), against the in-process fake.
 */
import { Client, credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { JWTSVIDRequestSchema } from "../../proto/gen/spiffe/workload_pb.js";
import { isSigilError, type SigilError } from "../../spiffe/errors.js";
import { grpcServiceDefinition } from "../../spiffe/grpc/service.js";
import { SpiffeWorkloadAPI } from "../../proto/gen/spiffe/workload_pb.js";
import { parseEndpointAddress } from "../../spiffe/workloadapi/address.js";
import { createWorkloadApiClient, type WatchErrorInfo, type WorkloadApiClient } from "../../spiffe/workloadapi/client.js";
import { isWorkloadApiError } from "../../spiffe/workloadapi/errors.js";
import type { X509Context } from "../../spiffe/workloadapi/x509-context.js";
import {
  AsyncQueue,
  createTestCa,
  createTestJwtAuthority,
  FakeWorkloadApi,
  issueTestX509Svid,
  jwtBundlesResponse,
  jwtSvidResponse,
  signTestJwtSvid,
  validateJwtSvidResponse,
  x509BundlesResponse,
  x509SvidEntry,
  x509SvidResponse,
  type TestCa,
  type TestJwtAuthority,
  type TestX509Svid,
} from "../fakes/fake-workload-api.js";
import { requireTool } from "../support/tools.js";

const TD = "a.test";
const WEB = `spiffe://${TD}/web`;
// Tiny backoff so retry tests finish quickly; no test asserts timings.
const FAST = { initialDelayMs: 1, maxDelayMs: 5, multiplier: 2 };

let ca: TestCa;
let svid: TestX509Svid;
let jwtAuthority: TestJwtAuthority;
let fake: FakeWorkloadApi;
let client: WorkloadApiClient | undefined;

beforeAll(async () => {
  if (!haveOpenssl) return;
  ca = createTestCa(TD);
  svid = issueTestX509Svid(ca, WEB);
  jwtAuthority = await createTestJwtAuthority(TD);
});

beforeEach(async () => {
  fake = await FakeWorkloadApi.start();
});

afterEach(async () => {
  client?.close();
  client = undefined;
  vi.unstubAllEnvs();
  await fake.close();
});

function newClient(address = fake.address): WorkloadApiClient {
  client = createWorkloadApiClient({
    address,
    backoff: FAST,
    // grpc-js's own reconnect backoff, so a late server is found quickly.
    channelOptions: { "grpc.initial_reconnect_backoff_ms": 20, "grpc.max_reconnect_backoff_ms": 100 },
  });
  return client;
}

function pushSvid(): void {
  fake.x509Svid.push(x509SvidResponse({ svids: [x509SvidEntry(svid, ca)] }));
}

interface WatchError {
  readonly error: SigilError;
  readonly info: WatchErrorInfo;
}

function watchX509(c: WorkloadApiClient) {
  const updates = new AsyncQueue<X509Context>();
  const errors = new AsyncQueue<WatchError>();
  const watcher = c.watchX509Context(
    (u) => updates.push(u),
    (error, info) => errors.push({ error, info }),
  );
  return { updates, errors, watcher };
}

// Test SVIDs are made with the OpenSSL CLI.
const haveOpenssl = requireTool("openssl", ["version"], "test certificates");

describe.skipIf(!haveOpenssl)("Workload Endpoint (client side)", () => {
  it("WEP-2: a @grpc/grpc-js client calls the Workload API over gRPC", async () => {
    pushSvid();
    const ctx = await newClient().fetchX509Context();
    expect(ctx.defaultSvid.id.toString()).toBe(WEB);
    expect(fake.callsTo("/SpiffeWorkloadAPI/FetchX509SVID")).toHaveLength(1);
  });

  it("WEP-5: every unary and streaming call carries workload.spiffe.io: true (checked server-side)", async () => {
    const c = newClient();
    pushSvid();
    fake.x509Bundles.push(x509BundlesResponse({ bundles: { [`spiffe://${TD}`]: ca.der } }));
    fake.jwtBundles.push(jwtBundlesResponse({ bundles: { [`spiffe://${TD}`]: jwtAuthority.jwksBytes } }));
    const token = await signTestJwtSvid(jwtAuthority, WEB, ["aud"]);
    fake.onFetchJwtSvid = () => jwtSvidResponse({ svids: [{ spiffeId: WEB, svid: token }] });
    fake.onValidateJwtSvid = () => validateJwtSvidResponse({ spiffeId: WEB, claims: { sub: WEB } });

    await c.fetchX509Context();
    await c.fetchX509Bundles();
    await c.fetchJwtBundles();
    await c.fetchJwtSvid({ audience: "aud" });
    await c.validateJwtSvid(token, "aud");
    const { updates, watcher } = watchX509(c);
    await updates.next();
    watcher.close();

    const paths = fake.calls.map((call) => call.path).sort();
    expect(paths).toEqual(
      [
        "/SpiffeWorkloadAPI/FetchJWTBundles",
        "/SpiffeWorkloadAPI/FetchJWTSVID",
        "/SpiffeWorkloadAPI/FetchX509Bundles",
        "/SpiffeWorkloadAPI/FetchX509SVID",
        "/SpiffeWorkloadAPI/FetchX509SVID",
        "/SpiffeWorkloadAPI/ValidateJWTSVID",
      ].sort(),
    );
    for (const call of fake.calls) expect(call.securityHeader, call.path).toEqual(["true"]);
  });

  it("WEP-5: the fake's header check does reject a call without the header (control)", async () => {
    const def = grpcServiceDefinition(SpiffeWorkloadAPI);
    const raw = new Client(parseEndpointAddress(fake.address).grpcTarget, credentials.createInsecure());
    try {
      const err = await new Promise<ServiceError | null>((resolve) => {
        raw.makeUnaryRequest(
          def.fetchJWTSVID.path,
          def.fetchJWTSVID.requestSerialize,
          def.fetchJWTSVID.responseDeserialize,
          create(JWTSVIDRequestSchema, { audience: ["x"] }),
          new Metadata(),
          (e) => resolve(e),
        );
      });
      expect(err?.code).toBe(status.INVALID_ARGUMENT);
      expect(fake.calls.at(-1)?.securityHeader).toEqual([]);
    } finally {
      raw.close();
    }
  });

  it("WEP-7: the client works over plaintext (no TLS) on the local socket", async () => {
    // The fake binds with ServerCredentials.createInsecure(); a client demanding TLS could not talk to it.
    pushSvid();
    const c = newClient();
    expect(c.address.kind).toBe("unix");
    await expect(c.fetchX509Context()).resolves.toBeDefined();
  });

  it("WEP-8: with no explicit address the client uses SPIFFE_ENDPOINT_SOCKET", async () => {
    pushSvid();
    vi.stubEnv("SPIFFE_ENDPOINT_SOCKET", fake.address);
    client = createWorkloadApiClient();
    expect(client.address.grpcTarget).toBe(`unix://${fake.socketPath}`);
    const ctx = await client.fetchX509Context();
    expect(ctx.defaultSvid.id.toString()).toBe(WEB);
  });

  it("WEP-8: with neither an address nor SPIFFE_ENDPOINT_SOCKET it fails clearly", () => {
    vi.stubEnv("SPIFFE_ENDPOINT_SOCKET", undefined);
    let caught: unknown;
    try {
      createWorkloadApiClient();
    } catch (e) {
      caught = e;
    }
    expect(isSigilError(caught, "ERR_ENDPOINT_ADDRESS_INVALID")).toBe(true);
    expect((caught as Error).message).toMatch(/SPIFFE_ENDPOINT_SOCKET/);
  });

  it("WEP-9: only unix and tcp URIs are endpoint addresses", () => {
    for (const bad of ["http://127.0.0.1:8000", "foo:/x", "/tmp/agent.sock", "dns:///127.0.0.1:8000"]) {
      expect(() => createWorkloadApiClient({ address: bad }), bad).toThrow(/workloadapi: endpoint address/);
    }
    expect(createWorkloadApiClient({ address: "unix:///tmp/x.sock" }).address.kind).toBe("unix");
    expect(createWorkloadApiClient({ address: "tcp://127.0.0.1:8000" }).address.kind).toBe("tcp");
  });

  it("WEP-10: unix addresses have no authority, an absolute path, and nothing else", () => {
    expect(parseEndpointAddress("unix:///tmp/a.sock")).toMatchObject({ kind: "unix", path: "/tmp/a.sock" });
    expect(parseEndpointAddress("unix:/tmp/a.sock")).toMatchObject({ kind: "unix", path: "/tmp/a.sock" });
    for (const bad of ["unix://host/tmp/a.sock", "unix:rel.sock", "unix:///tmp/a.sock?q", "unix:///tmp/a.sock#f"]) {
      expect(() => parseEndpointAddress(bad), bad).toThrow(/workloadapi: endpoint address/);
    }
  });

  it("WEP-11: tcp addresses are an IP literal and a port, nothing else", () => {
    expect(parseEndpointAddress("tcp://127.0.0.1:8000")).toMatchObject({ kind: "tcp", host: "127.0.0.1", port: 8000 });
    for (const bad of [
      "tcp://localhost:8000",
      "tcp://127.0.0.1",
      "tcp://127.0.0.1:8000/foo",
      "tcp://u@127.0.0.1:8000",
    ]) {
      expect(() => parseEndpointAddress(bad), bad).toThrow(/workloadapi: endpoint address/);
    }
  });

  it("WEP-15: on InvalidArgument the watcher reports and does not retry", async () => {
    fake.x509Svid.failNext({ code: status.INVALID_ARGUMENT, details: "security header missing from request" });
    pushSvid(); // would be delivered if the client retried
    const { updates, errors, watcher } = watchX509(newClient());
    const e = await errors.next();
    expect(e.info.terminal).toBe(true);
    expect(isWorkloadApiError(e.error, status.INVALID_ARGUMENT)).toBe(true);
    await watcher.stopped;
    // A round trip on the same channel, then: still only the one stream was ever opened.
    await client?.fetchJwtSvid({ audience: "x" }).catch(() => undefined);
    expect(fake.x509Svid.openedCount).toBe(1);
    expect(updates.pending).toBe(0);
  });

  it("WEP-16: on Unavailable the watcher retries with backoff until served", async () => {
    fake.x509Svid.failNext({ code: status.UNAVAILABLE, details: "agent is starting" }, 2);
    pushSvid();
    const { updates, errors } = watchX509(newClient());
    for (let i = 0; i < 2; i++) {
      const e = await errors.next();
      expect(e.info.terminal).toBe(false);
      expect(isWorkloadApiError(e.error, status.UNAVAILABLE)).toBe(true);
    }
    const ctx = await updates.next();
    expect(ctx.defaultSvid.id.toString()).toBe(WEB);
    expect(fake.x509Svid.openedCount).toBe(3);
  });

  it("WEP-16: an unreachable socket is retried until the server appears", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sigil-wep16-"));
    try {
      const path = join(dir, "agent.sock");
      const { updates, errors } = watchX509(newClient(`unix://${path}`));
      const e = await errors.next();
      expect(e.info.terminal).toBe(false);
      expect(isWorkloadApiError(e.error, status.UNAVAILABLE)).toBe(true);
      const late = await FakeWorkloadApi.start({ socketPath: path });
      try {
        late.x509Svid.push(x509SvidResponse({ svids: [x509SvidEntry(svid, ca)] }));
        const ctx = await updates.next();
        expect(ctx.defaultSvid.id.toString()).toBe(WEB);
      } finally {
        client?.close();
        await late.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("WEP-17: on PermissionDenied the watcher retries, and succeeds once an identity exists", async () => {
    fake.x509Svid.failNext({ code: status.PERMISSION_DENIED, details: "no identity issued" }, 3);
    pushSvid();
    const { updates, errors } = watchX509(newClient());
    for (let i = 0; i < 3; i++) {
      const e = await errors.next();
      expect(e.info.terminal).toBe(false);
      expect(isWorkloadApiError(e.error, status.PERMISSION_DENIED)).toBe(true);
      expect(e.error.message).toMatch(/^workloadapi: FetchX509SVID failed: PERMISSION_DENIED: no identity issued/);
    }
    expect((await updates.next()).defaultSvid.id.toString()).toBe(WEB);
  });

  it("WEP-18: on Unimplemented the watcher reports and does not retry", async () => {
    fake.x509Bundles.failNext({ code: status.UNIMPLEMENTED, details: "unknown method" });
    fake.x509Bundles.push(x509BundlesResponse({ bundles: { [`spiffe://${TD}`]: ca.der } }));
    const updates = new AsyncQueue<unknown>();
    const errors = new AsyncQueue<WatchError>();
    const c = newClient();
    const watcher = c.watchX509Bundles(
      (u) => updates.push(u),
      (error, info) => errors.push({ error, info }),
    );
    const e = await errors.next();
    expect(e.info.terminal).toBe(true);
    expect(isWorkloadApiError(e.error, status.UNIMPLEMENTED)).toBe(true);
    await watcher.stopped;
    await c.fetchJwtSvid({ audience: "x" }).catch(() => undefined);
    expect(fake.x509Bundles.openedCount).toBe(1);
    expect(updates.pending).toBe(0);
  });
});
