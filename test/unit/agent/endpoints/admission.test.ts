/**
 * The Workload Endpoint shared by several APIs (agent/endpoints/admission.ts,
 * stream-watch.ts, server.ts, reflection.ts): a minimal second service, with
 * no security header, built on the shared admission and stream watcher, next
 * to the Workload API on one socket. Its callers are attested and refused
 * exactly as the Workload API's are; reflection lists it; each call is
 * counted once in the RPC metrics.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { create, createFileRegistry, fromBinary, type DescService } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import {
  EmptySchema,
  file_google_protobuf_empty,
  file_google_protobuf_wrappers,
  FileDescriptorProtoSchema,
  StringValueSchema,
  type StringValue,
} from "@bufbuild/protobuf/wkt";
import {
  Client,
  credentials,
  Metadata,
  status,
  type sendUnaryData,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceError,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { WorkloadAttestationError, type AttestedCaller } from "../../../../agent/attestation/workload.js";
import { createEndpointAdmission, failStream, failUnary } from "../../../../agent/endpoints/admission.js";
import { createPeerTracker, startWorkloadEndpoint, type EndpointService, type WorkloadEndpoint } from "../../../../agent/endpoints/server.js";
import { createStreamWatcher } from "../../../../agent/endpoints/stream-watch.js";
import { createWorkloadApiHandler } from "../../../../agent/endpoints/workload-api/handler.js";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { parseSelector } from "../../../../common/selector.js";
import { ServerReflection, ServerReflectionRequestSchema, type ServerReflectionResponse } from "../../../../proto/gen/grpc/reflection/v1/reflection_pb.js";
import { JWTSVIDRequestSchema, SpiffeWorkloadAPI } from "../../../../proto/gen/spiffe/workload_pb.js";
import { grpcServiceDefinition } from "../../../../spiffe/grpc/service.js";
import { FakeWorkloadCache } from "../../../fakes/fake-workload-cache.js";

/** `sigil.test.v1.Probe`: Who (unary) and Watch (server stream), each answering the caller's SPIFFE IDs. */
const probeFile = createFileRegistry(
  create(FileDescriptorProtoSchema, {
    name: "sigil/test/v1/probe.proto",
    package: "sigil.test.v1",
    syntax: "proto3",
    dependency: ["google/protobuf/empty.proto", "google/protobuf/wrappers.proto"],
    service: [
      {
        name: "Probe",
        method: [
          { name: "Who", inputType: ".google.protobuf.Empty", outputType: ".google.protobuf.StringValue" },
          { name: "Watch", inputType: ".google.protobuf.Empty", outputType: ".google.protobuf.StringValue", serverStreaming: true },
        ],
      },
    ],
  }),
  (name) => ({ "google/protobuf/empty.proto": file_google_protobuf_empty, "google/protobuf/wrappers.proto": file_google_protobuf_wrappers })[name],
);
const Probe = probeFile.getService("sigil.test.v1.Probe") as DescService;
const probeDefinition = grpcServiceDefinition(Probe as GenService<GenServiceMethods>);

const ME = parseSelector("unix:uid:4242");
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** What the test's attester does for the next calls. */
type Attest = (callPeer: string) => Promise<AttestedCaller>;

interface Setup {
  readonly cache: FakeWorkloadCache;
  readonly metrics: Metrics;
  readonly logs: Array<Record<string, unknown>>;
  readonly endpoint: WorkloadEndpoint;
  readonly client: Client;
  /** Replaces the attester for the calls that follow. */
  setAttest(attest: Attest): void;
}

/** A caller with the test's selector whose re-check fails once `changed.value` is set. */
function callerWith(changed: { value: boolean }): AttestedCaller {
  return {
    selectors: [ME],
    recheck: () => {
      if (changed.value) throw new WorkloadAttestationError("caller_changed");
    },
  };
}

/** The probe service: the shared admission and stream watcher, and nothing of the Workload API (no security header). */
function probeService(cache: FakeWorkloadCache, attest: Attest, metrics: Metrics, log: ReturnType<typeof createLogger>): EndpointService {
  const admission = createEndpointAdmission({ cache, attest, log, metrics });
  const streams = createStreamWatcher({ api: "Probe", cache, noIdentity: admission.noIdentity, log });
  const ids = (caller: AttestedCaller): string => cache.identitiesFor(caller.selectors).map((i) => i.entry.spiffeId).join(",");
  const implementation = {
    who(call: ServerUnaryCall<unknown, StringValue>, callback: sendUnaryData<StringValue>) {
      void admission.admit(call).then((r) => {
        if ("failure" in r) return failUnary(callback, r.failure);
        const value = ids(r.caller);
        if (value === "") return failUnary(callback, admission.noIdentity("Who", call.getPeer(), r.caller.selectors));
        callback(null, create(StringValueSchema, { value }));
      });
    },
    watch(call: ServerWritableStream<unknown, StringValue>) {
      void admission.admit(call).then((r) => {
        if ("failure" in r) return failStream(call, r.failure);
        const caller = r.caller;
        streams.watch(call, "Watch", StringValueSchema, caller, () => {
          const value = ids(caller);
          return value === "" ? undefined : create(StringValueSchema, { value });
        });
      });
    },
  };
  return { service: Probe, definition: probeDefinition, implementation: implementation as UntypedServiceImplementation };
}

async function setup(): Promise<Setup> {
  const dir = await mkdtemp(path.join(tmpdir(), "sigil-endpoint-admission-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const logs: Array<Record<string, unknown>> = [];
  const log = createLogger({ level: "debug", destination: { write: (line) => void logs.push(JSON.parse(line) as Record<string, unknown>) } });
  const metrics = new Metrics({ defaultMetrics: false });
  const cache = new FakeWorkloadCache();
  const changed = { value: false };
  let current: Attest = async () => callerWith(changed);
  const attest: Attest = (p) => current(p);
  const workloadApi = createWorkloadApiHandler({ cache, attest, trustDomain: cache.own.trustDomain, log, metrics });
  const endpoint = await startWorkloadEndpoint({
    socketPath: path.join(dir, "api.sock"),
    services: [workloadApi, probeService(cache, attest, metrics, log)],
    peers: createPeerTracker(),
    metrics,
    log,
  });
  cleanups.push(() => endpoint.close());
  const client = new Client(endpoint.address, credentials.createInsecure());
  cleanups.push(async () => client.close());
  return { cache, metrics, logs, endpoint, client, setAttest: (a) => (current = a) };
}

type Outcome = { ok: true; value: string } | { ok: false; code: number; details: string };

function who(c: Client, md = new Metadata()): Promise<Outcome> {
  const def = probeDefinition["who"]!;
  return new Promise((resolve) =>
    c.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, create(EmptySchema), md, (err: ServiceError | null, v?: unknown) =>
      resolve(err ? { ok: false, code: err.code, details: err.details } : { ok: true, value: (v as StringValue).value }),
    ),
  );
}

/** Opens Watch; `messages` fills as they come, `ended` resolves with the stream's final status. */
function watch(c: Client): { messages: string[]; next(n: number): Promise<void>; ended: Promise<{ code: number; details: string }> } {
  const def = probeDefinition["watch"]!;
  const stream = c.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, create(EmptySchema), new Metadata());
  const messages: string[] = [];
  const waiters: Array<() => void> = [];
  stream.on("data", (m: StringValue) => {
    messages.push(m.value);
    for (const w of waiters.splice(0)) w();
  });
  const ended = new Promise<{ code: number; details: string }>((resolve) => {
    stream.on("error", (e: ServiceError) => resolve({ code: e.code, details: e.details }));
    stream.on("status", (s: { code: number; details: string }) => resolve({ code: s.code, details: s.details }));
  });
  const next = async (n: number): Promise<void> => {
    while (messages.length < n) await new Promise<void>((r) => waiters.push(r));
  };
  return { messages, next, ended };
}

describe("a second service on the Workload Endpoint, on the shared admission", () => {
  it("attests its callers without a security header, and refuses them as the Workload API does", async () => {
    const s = await setup();
    s.cache.addIdentity({ spiffeId: "spiffe://example.org/probe", selectors: ["unix:uid:4242"] });
    // No workload.spiffe.io header: only the Workload API asks for one.
    expect(await who(s.client)).toEqual({ ok: true, value: "spiffe://example.org/probe" });

    s.setAttest(async () => Promise.reject(new WorkloadAttestationError("caller_changed")));
    expect(await who(s.client)).toEqual({ ok: false, code: status.PERMISSION_DENIED, details: "caller changed credentials after connecting" });
    s.setAttest(async () => Promise.reject(new WorkloadAttestationError("caller_gone")));
    expect(await who(s.client)).toEqual({ ok: false, code: status.UNAUTHENTICATED, details: "could not verify existence of the original caller" });
    s.setAttest(async () => Promise.reject(new WorkloadAttestationError("attestation_failed")));
    expect(await who(s.client)).toEqual({ ok: false, code: status.UNAVAILABLE, details: "workload attestation failed" });

    s.setAttest(async () => ({ selectors: [parseSelector("unix:uid:1")], recheck: () => undefined }));
    expect(await who(s.client)).toEqual({ ok: false, code: status.PERMISSION_DENIED, details: "no identity issued" });
    const line = s.logs.find((l) => String(l["msg"]).startsWith("No identity issued") && l["method"] === "Who");
    expect(line?.["selectors"]).toEqual(["unix:uid:1"]);
    expect(line?.["closest_entries"]).toEqual([]);

    s.cache.setReady(false);
    expect(await who(s.client)).toEqual({ ok: false, code: status.UNAVAILABLE, details: "agent is not ready: no trust bundle or first sync yet" });

    const text = await s.metrics.registry.metrics();
    expect(text).toContain('sigil_workload_attestation_duration_seconds_count{outcome="caller_changed"} 1');
    expect(text).toContain('sigil_workload_api_no_identity_total{method="Who"} 1');
  });

  it("its stream is re-checked before every message: a caller that changed credentials gets PermissionDenied instead of the update", async () => {
    const s = await setup();
    const changed = { value: false };
    s.setAttest(async () => callerWith(changed));
    const entry = s.cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: ["unix:uid:4242"] });
    const w = watch(s.client);
    await w.next(1);
    s.cache.addIdentity({ spiffeId: "spiffe://example.org/b", selectors: ["unix:uid:4242"] });
    await w.next(2);
    expect(w.messages).toEqual(["spiffe://example.org/a", "spiffe://example.org/a,spiffe://example.org/b"]);

    changed.value = true;
    s.cache.removeIdentity(entry.entry.id);
    expect(await w.ended).toEqual({ code: status.PERMISSION_DENIED, details: "caller changed credentials after connecting" });
    expect(w.messages).toHaveLength(2);
    expect(s.logs.some((l) => l["msg"] === "Probe stream ended: its caller changed since it was attested")).toBe(true);
  });

  it("its stream ends PermissionDenied `no identity issued` when the caller's last identity goes away", async () => {
    const s = await setup();
    const entry = s.cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: ["unix:uid:4242"] });
    const w = watch(s.client);
    await w.next(1);
    s.cache.removeIdentity(entry.entry.id);
    expect(await w.ended).toEqual({ code: status.PERMISSION_DENIED, details: "no identity issued" });
    expect(await s.metrics.registry.metrics()).toContain('sigil_workload_api_no_identity_total{method="Watch"} 1');
  });

  it("reflection lists every service registered on the endpoint, and describes the second one", async () => {
    const s = await setup();
    const def = grpcServiceDefinition(ServerReflection).serverReflectionInfo;
    const stream = s.client.makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, new Metadata());
    const answers: ServerReflectionResponse[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on("data", (r: ServerReflectionResponse) => answers.push(r));
      stream.on("error", reject);
      stream.on("end", () => resolve());
    });
    stream.write(create(ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "" } }));
    stream.write(create(ServerReflectionRequestSchema, { messageRequest: { case: "fileContainingSymbol", value: "sigil.test.v1.Probe.Watch" } }));
    stream.end();
    await done;
    const [list, file] = answers;
    const names = list?.messageResponse.case === "listServicesResponse" ? list.messageResponse.value.service.map((x) => x.name) : [];
    expect(names.sort()).toEqual(["SpiffeWorkloadAPI", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection", "sigil.test.v1.Probe"]);
    const files = file?.messageResponse.case === "fileDescriptorResponse" ? file.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name) : [];
    expect(files).toEqual(["sigil/test/v1/probe.proto", "google/protobuf/empty.proto", "google/protobuf/wrappers.proto"]);
  });

  it("a call is counted once in sigil_rpc_requests_total, whichever of the two services it is for", async () => {
    const s = await setup();
    s.cache.addIdentity({ spiffeId: "spiffe://example.org/probe", selectors: ["unix:uid:4242"] });
    expect((await who(s.client)).ok).toBe(true);
    // The Workload API without its header: refused, and counted once too.
    const def = grpcServiceDefinition(SpiffeWorkloadAPI).fetchJWTSVID;
    const refused = await new Promise<ServiceError | null>((resolve) =>
      s.client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, create(JWTSVIDRequestSchema, { audience: ["x"] }), new Metadata(), (e: ServiceError | null) => resolve(e)),
    );
    expect(refused?.code).toBe(status.INVALID_ARGUMENT);
    const text = await s.metrics.registry.metrics();
    expect(text).toContain('sigil_rpc_requests_total{service="sigil.test.v1.Probe",method="Who",code="OK"} 1\n');
    expect(text).toContain('sigil_rpc_requests_total{service="SpiffeWorkloadAPI",method="FetchJWTSVID",code="INVALID_ARGUMENT"} 1\n');
    expect(text).toContain('sigil_rpc_duration_seconds_count{service="sigil.test.v1.Probe",method="Who",code="OK"} 1\n');
  });

  it("the same service twice is refused", async () => {
    const s = await setup();
    const log = createLogger({ level: "error", destination: { write: () => undefined } });
    const metrics = new Metrics({ defaultMetrics: false });
    const probe = probeService(s.cache, async () => callerWith({ value: false }), metrics, log);
    await expect(
      startWorkloadEndpoint({ socketPath: path.join(path.dirname(s.endpoint.socketPath), "twice.sock"), services: [probe, probe], peers: createPeerTracker(), metrics, log }),
    ).rejects.toThrow("workload endpoint: service sigil.test.v1.Probe is given twice");
  });
});
