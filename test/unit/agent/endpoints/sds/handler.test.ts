/**
 * The SDS handler on a real endpoint socket over a fake cache: what a stream
 * sends (and does not) as requests and the cache change.
 */
import { X509Certificate } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { Metadata, status, type Client, type ServiceError } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { DeliveryTracker, type DeliveryRecorder } from "../../../../../agent/cache/deliveries.js";
import { createSdsHandler, SDS_MAX_REQUEST_BYTES } from "../../../../../agent/endpoints/sds/handler.js";
import { createPeerTracker, startWorkloadEndpoint, type WorkloadEndpoint } from "../../../../../agent/endpoints/server.js";
import { ManualClock } from "../../../../../common/clock.js";
import { createLogger } from "../../../../../common/log.js";
import { Metrics } from "../../../../../common/metrics.js";
import { parseSelector } from "../../../../../common/selector.js";
import { DiscoveryRequestSchema, type DiscoveryResponse } from "../../../../../proto/gen/envoy/service/discovery/v3/discovery_pb.js";
import { FakeWorkloadCache, fixedCaller } from "../../../../fakes/fake-workload-cache.js";
import { fetchSecrets, SDS_PATHS, sdsChannel, secretsOf, streamSecrets } from "../../../../support/sds-client.js";

const WEB = "spiffe://example.org/web";
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function start(attestDelayMs = 0, deliveries?: DeliveryRecorder): Promise<{ cache: FakeWorkloadCache; client: Client; logs: Record<string, unknown>[]; endpoint: WorkloadEndpoint }> {
  const cache = new FakeWorkloadCache();
  cache.addIdentity({ spiffeId: WEB, selectors: ["unix:uid:1"] });
  const logs: Record<string, unknown>[] = [];
  const log = createLogger({ level: "debug", destination: { write: (l: string) => void logs.push(JSON.parse(l) as Record<string, unknown>) } });
  const metrics = new Metrics({ defaultMetrics: false });
  const attest = async () => {
    await new Promise((r) => setTimeout(r, attestDelayMs));
    return fixedCaller([parseSelector("unix:uid:1")]);
  };
  const sds = createSdsHandler({ cache, attest, trustDomain: cache.own.trustDomain, log, metrics, ...(deliveries === undefined ? {} : { deliveries }) });
  const dir = await mkdtemp(path.join(tmpdir(), "sigil-sds-"));
  const endpoint = await startWorkloadEndpoint({ socketPath: path.join(dir, "api.sock"), services: [sds], maxRequestBytes: SDS_MAX_REQUEST_BYTES, peers: createPeerTracker(), metrics, log });
  const client = sdsChannel(endpoint.socketPath);
  cleanups.push(async () => {
    client.close();
    await endpoint.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { cache, client, logs, endpoint };
}

const names = (r: DiscoveryResponse): string[] => secretsOf(r).map((s) => s.name);

describe("SDS handler", () => {
  it("records the X509-SVIDs it sends as certificate secrets (pick-up reporting), not for validation contexts alone", async () => {
    const tracker = new DeliveryTracker({ clock: new ManualClock(new Date("2030-01-01T00:00:00Z")) });
    const { cache, client } = await start(0, tracker);
    await fetchSecrets(client, ["ROOTCA"]);
    expect(tracker.pendingCount).toBe(0);
    const s = streamSecrets(client, ["default"]);
    await s.next();
    s.close();
    const svid = cache.identitiesFor([parseSelector("unix:uid:1")])[0]!.svid;
    const serial = new X509Certificate(svid.chain[0]!).serialNumber.toLowerCase().replace(/^0+/, "");
    expect(tracker.pending().map((p) => p.credential)).toEqual([{ serial }]);
  });

  it("pushes when the caller's secrets change, and only then", async () => {
    const { cache, client } = await start();
    const s = streamSecrets(client, ["default"]);
    const r1 = await s.next();
    s.ack(r1);
    // Another workload's identity and a bare notification change nothing of this caller's.
    cache.addIdentity({ spiffeId: "spiffe://example.org/other", selectors: ["unix:uid:2"] });
    cache.notify();
    expect(await s.quiet(300)).toBeUndefined();
    const entryId = cache.identitiesFor([parseSelector("unix:uid:1")])[0]!.entry.id;
    cache.rotate(entryId);
    const r2 = await s.next();
    expect(r2.versionInfo).not.toBe(r1.versionInfo);
    expect(r2.nonce).not.toBe(r1.nonce);
    s.close();
  });

  it("ignores a request with an older nonce, answers the same request with the current one", async () => {
    const { cache, client } = await start();
    const s = streamSecrets(client, ["default"]);
    const r1 = await s.next();
    cache.rotate(cache.identitiesFor([parseSelector("unix:uid:1")])[0]!.entry.id);
    const r2 = await s.next();
    // Stale: asks for ROOTCA too, but with r1's nonce.
    s.send({ resourceNames: ["default", "ROOTCA"], versionInfo: r1.versionInfo, responseNonce: r1.nonce });
    expect(await s.quiet(300)).toBeUndefined();
    s.send({ resourceNames: ["default", "ROOTCA"], versionInfo: r2.versionInfo, responseNonce: r2.nonce });
    expect(names(await s.next())).toEqual(["default", "ROOTCA"]);
    s.close();
  });

  it("a stream whose caller loses its last identity ends PermissionDenied; the client ending its side ends the stream cleanly", async () => {
    const { cache, client } = await start();
    const s = streamSecrets(client, ["ROOTCA"]);
    await s.next();
    cache.removeIdentity(cache.identitiesFor([parseSelector("unix:uid:1")])[0]!.entry.id);
    expect(await s.ended).toMatchObject({ code: status.PERMISSION_DENIED, details: "no identity issued" });

    cache.addIdentity({ spiffeId: WEB, selectors: ["unix:uid:1"] });
    const ended = await new Promise<ServiceError | "end">((resolve) => {
      const call = client.makeBidiStreamRequest(SDS_PATHS.stream, (m: Buffer) => m, (b: Buffer) => b, new Metadata());
      call.on("data", () => call.end());
      call.on("error", resolve);
      call.on("end", () => resolve("end"));
      call.write(toWire(["default"]));
    });
    expect(ended).toBe("end");
  });

  it("requests sent while the caller is being attested: the last one is answered, once", async () => {
    const { client } = await start(300);
    const s = streamSecrets(client, ["default"]);
    s.send({ resourceNames: ["ROOTCA", "default"] });
    expect(names(await s.next())).toEqual(["ROOTCA", "default"]);
    expect(await s.quiet(300)).toBeUndefined();
    s.close();
  });

  it("refuses a request naming more than 256 secrets or a name longer than 2048 bytes (streams, during attestation too, and FetchSecrets)", async () => {
    const { client } = await start(200);
    const many = Array.from({ length: 257 }, (_, i) => `n${i}`);
    const long = `spiffe://example.org/${"x".repeat(2048)}`;
    for (const bad of [many, ["default", long]]) {
      // Sent while the caller is being attested.
      const s = streamSecrets(client, bad);
      expect(await s.ended).toMatchObject({ code: status.INVALID_ARGUMENT });
      await expect(fetchSecrets(client, bad)).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    }
    // Mid-stream, after a first answer.
    const s = streamSecrets(client, ["default"]);
    const r = await s.next();
    s.send({ resourceNames: many, versionInfo: r.versionInfo, responseNonce: r.nonce });
    expect(await s.ended).toMatchObject({ code: status.INVALID_ARGUMENT });
    // 256 names of 2048 bytes' worth are fine.
    expect(names(await fetchSecrets(client, [...many.slice(0, 255), "default"]))).toEqual(["default"]);
  });

  it("a NACK is logged once per response, its reason capped; left-out names are logged capped; control characters escaped", async () => {
    const { client, logs } = await start();
    const junk = Array.from({ length: 200 }, (_, i) => `junk-${i}-${"y".repeat(500)}`);
    const s = streamSecrets(client, ["default", ...junk]);
    const r = await s.next();
    const reason = `rejected ${"z".repeat(20_000)}`;
    for (let i = 0; i < 20; i++) s.nack(r, "", reason);
    s.ack(r);
    await new Promise((res) => setTimeout(res, 300));
    const nacks = logs.filter((l) => l.level === "warn" && String(l.msg).includes("NACK"));
    expect(nacks).toHaveLength(1);
    expect(String(nacks[0]!.reason).length).toBeLessThanOrEqual(1100);
    expect(String(nacks[0]!.reason)).toMatch(/^rejected z/);
    const leftOut = logs.filter((l) => String(l.msg).startsWith("SDS: requested secrets not served"));
    expect(leftOut).toHaveLength(1);
    expect(leftOut[0]!.names_count).toBe(200);
    expect(JSON.stringify(leftOut[0]!.names).length).toBeLessThanOrEqual(8 * 1024);
    s.close();

    // Control characters are escaped: a terminal reading the text log format would obey them.
    const logged = logs.length;
    const ctl = streamSecrets(client, ["default", "ctl\u001b]0;owned\u0007"]);
    ctl.nack(await ctl.next(), "", "bad\u001b[31m\u0085\u2028\r\nlevel=error");
    await new Promise((res) => setTimeout(res, 200));
    // The first stream's repeated NACKs may still be arriving on a busy machine: they are logged at debug level only.
    const lines = logs.slice(logged).filter((l) => (l.level === "warn" && String(l.msg).includes("NACK")) || String(l.msg).startsWith("SDS: requested secrets not served"));
    expect(lines.map((l) => l.reason ?? (l.names as string[])[0])).toEqual(["ctl\\u001b]0;owned\\u0007", "bad\\u001b[31m\\u0085\\u2028\\u000d\\u000alevel=error"]);
    ctl.close();
  });

  it("refuses a request for another resource type", async () => {
    const { client } = await start();
    const err = await new Promise<ServiceError>((resolve, reject) => {
      client.makeUnaryRequest(SDS_PATHS.fetch, (b: Buffer) => b, (b: Buffer) => b, toWire([], "type.googleapis.com/envoy.config.cluster.v3.Cluster"), new Metadata(), (e) =>
        e ? resolve(e) : reject(new Error("served")),
      );
    });
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    // FetchSecrets with an empty type_url is fine.
    expect(names(await fetchSecrets(client, ["ROOTCA"]))).toEqual(["ROOTCA"]);
  });
});

/** A DiscoveryRequest on the wire. */
function toWire(resourceNames: string[], typeUrl = ""): Buffer {
  return Buffer.from(toBinary(DiscoveryRequestSchema, create(DiscoveryRequestSchema, { resourceNames, typeUrl })));
}
