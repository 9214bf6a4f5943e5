/**
 * Workload API conformance of the agent's server side (SPIFFE Workload API,
 * checklist §1.6 and pitfalls A6, A11, A15, A17..A20): the real endpoint and
 * handler in front of a fake cache, or of the agent's real cache where the
 * requirement is the cache's (which entries match a caller, in which order),
 * called with the real Sigil client or a raw grpc-js client where a request
 * must be malformed or a status observed.
 */
import { createHmac, X509Certificate, createPrivateKey, createPublicKey } from "node:crypto";
import { create, type JsonObject } from "@bufbuild/protobuf";
import { Client, credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import type { AgentCache } from "../../agent/cache/agent-cache.js";
import type { WorkloadCache } from "../../agent/cache/types.js";
import { renewAt } from "../../agent/rotation/renew-at.js";
import {
  JWTBundlesRequestSchema,
  JWTSVIDRequestSchema,
  SpiffeWorkloadAPI,
  ValidateJWTSVIDRequestSchema,
  WITBundlesRequestSchema,
  WITSVIDRequestSchema,
  X509BundlesRequestSchema,
  X509SVIDRequestSchema,
  type JWTBundlesResponse,
  type JWTSVIDResponse,
  type ValidateJWTSVIDResponse,
  type X509BundlesResponse,
  type X509SVIDResponse,
} from "../../proto/gen/spiffe/workload_pb.js";
import { parseJwks } from "../../spiffe/bundle/jwks.js";
import { splitDerConcatenation } from "../../spiffe/der.js";
import { grpcServiceDefinition } from "../../spiffe/grpc/service.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import { generateSigner, type Signer } from "../../spiffe/signer.js";
import { createWorkloadApiClient, type WorkloadApiClient } from "../../spiffe/workloadapi/client.js";
import { isWorkloadApiError } from "../../spiffe/workloadapi/errors.js";
import { AsyncQueue } from "../fakes/fake-workload-api.js";
import {
  FakeTrustDomain,
  FakeWorkloadCache,
  ownUidSelector,
  type FakeIdentityInit,
  startTestAgentEndpoint,
  type TestAgentEndpoint,
  type TestAgentEndpointOptions,
} from "../fakes/fake-workload-cache.js";
import { syncedAgentCache } from "../support/agent-cache.js";

const WAPI = grpcServiceDefinition(SpiffeWorkloadAPI);
const ME = ownUidSelector();
const TD_KEY = /^spiffe:\/\/[a-z0-9._-]+$/;

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function endpoint(cache: FakeWorkloadCache, extra: Omit<TestAgentEndpointOptions, "cache"> = {}): Promise<TestAgentEndpoint> {
  const ep = await startTestAgentEndpoint({ cache, ...extra });
  cleanups.push(() => ep.close());
  return ep;
}

/** The real endpoint in front of the agent's real cache, holding `identities` as a sync leaves them. */
async function realCacheEndpoint(identities: readonly FakeIdentityInit[]): Promise<TestAgentEndpoint<AgentCache>> {
  const own = FakeTrustDomain.create("example.org");
  const ep = await startTestAgentEndpoint({ cache: syncedAgentCache(own, identities), trustDomain: own.trustDomain });
  cleanups.push(() => ep.close());
  return ep;
}

function client(ep: TestAgentEndpoint<WorkloadCache>): WorkloadApiClient {
  const c = createWorkloadApiClient({ address: ep.address });
  cleanups.push(() => c.close());
  return c;
}

function raw(ep: TestAgentEndpoint): Client {
  const c = new Client(ep.address, credentials.createInsecure());
  cleanups.push(() => c.close());
  return c;
}

function md(): Metadata {
  const m = new Metadata();
  m.set("workload.spiffe.io", "true");
  return m;
}

interface GrpcMethod {
  readonly path: string;
  readonly requestSerialize: (v: never) => Buffer;
  readonly responseDeserialize: (b: Buffer) => unknown;
}

type UnaryOutcome<T> = { ok: true; message: T } | { ok: false; code: number; details: string };

function unary<T>(c: Client, def: GrpcMethod, req: unknown): Promise<UnaryOutcome<T>> {
  return new Promise((resolve) => {
    c.makeUnaryRequest(def.path, def.requestSerialize as (v: unknown) => Buffer, def.responseDeserialize, req, md(), (err: ServiceError | null, value?: unknown) => {
      resolve(err ? { ok: false, code: err.code, details: err.details } : { ok: true, message: value as T });
    });
  });
}

/** An open server stream: its messages, and how it ended. */
interface RawStream<T> {
  readonly messages: AsyncQueue<T>;
  readonly ended: Promise<{ code: number; details: string }>;
  cancel(): void;
}

function stream<T>(c: Client, def: GrpcMethod, req: unknown): RawStream<T> {
  const call = c.makeServerStreamRequest(def.path, def.requestSerialize as (v: unknown) => Buffer, def.responseDeserialize, req, md());
  const messages = new AsyncQueue<T>();
  call.on("data", (m: T) => messages.push(m));
  const ended = new Promise<{ code: number; details: string }>((resolve) => {
    call.on("error", (e: ServiceError) => resolve({ code: e.code, details: e.details }));
    call.on("status", (s: { code: number; details: string }) => {
      if (s.code === status.OK) resolve({ code: s.code, details: s.details });
    });
  });
  const s: RawStream<T> = { messages, ended, cancel: () => call.cancel() };
  cleanups.push(() => call.cancel());
  return s;
}

const x509Svid = (c: Client): RawStream<X509SVIDResponse> => stream(c, WAPI.fetchX509SVID, create(X509SVIDRequestSchema));
const x509Bundles = (c: Client): RawStream<X509BundlesResponse> => stream(c, WAPI.fetchX509Bundles, create(X509BundlesRequestSchema));
const jwtBundles = (c: Client): RawStream<JWTBundlesResponse> => stream(c, WAPI.fetchJWTBundles, create(JWTBundlesRequestSchema));
const fetchJwt = (c: Client, audience: string[], spiffeId = ""): Promise<UnaryOutcome<JWTSVIDResponse>> =>
  unary(c, WAPI.fetchJWTSVID, create(JWTSVIDRequestSchema, { audience, spiffeId }));
const validate = (c: Client, svid: string, audience: string): Promise<UnaryOutcome<ValidateJWTSVIDResponse>> =>
  unary(c, WAPI.validateJWTSVID, create(ValidateJWTSVIDRequestSchema, { svid, audience }));

function certs(bytes: Uint8Array): X509Certificate[] {
  return splitDerConcatenation(bytes).map((d) => new X509Certificate(d));
}

function payloadOf(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8")) as Record<string, unknown>;
}

function b64(o: unknown): string {
  return Buffer.from(JSON.stringify(o)).toString("base64url");
}

/** A hand-made token: any header and payload, signed ES256 by `signer` (or not at all). */
function craft(header: Record<string, unknown>, payload: Record<string, unknown>, signer?: Signer): string {
  const input = `${b64(header)}.${b64(payload)}`;
  const sig = signer === undefined ? "" : Buffer.from(signer.sign(Buffer.from(input), { hash: "sha256", dsaEncoding: "ieee-p1363" })).toString("base64url");
  return `${input}.${sig}`;
}

const now = (): number => Math.floor(Date.now() / 1000);

describe("Workload API (server side)", () => {
  describe("profiles", () => {
    it("WAPI-1: all five X.509 and JWT RPCs are implemented", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ME] });
      const ep = await endpoint(cache);
      const c = raw(ep);
      expect((await x509Svid(c).messages.next()).svids).toHaveLength(1);
      expect(Object.keys((await x509Bundles(c).messages.next()).bundles)).toEqual(["spiffe://example.org"]);
      expect(Object.keys((await jwtBundles(c).messages.next()).bundles)).toEqual(["spiffe://example.org"]);
      const jwt = await fetchJwt(c, ["svc"]);
      expect(jwt.ok).toBe(true);
      const token = (jwt as { message: JWTSVIDResponse }).message.svids[0]?.svid ?? "";
      expect((await validate(c, token, "svc")).ok).toBe(true);
    });

    it("WAPI-1: an operator can disable one profile; its RPCs answer Unimplemented while the other still works", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ME] });
      const noJwt = await endpoint(cache, { profiles: { jwt: false } });
      const c = raw(noJwt);
      expect((await fetchJwt(c, ["svc"])) as { code: number }).toMatchObject({ ok: false, code: status.UNIMPLEMENTED });
      expect((await validate(c, "a.b.c", "svc")) as { code: number }).toMatchObject({ ok: false, code: status.UNIMPLEMENTED });
      expect((await jwtBundles(c).ended).code).toBe(status.UNIMPLEMENTED);
      expect((await x509Svid(c).messages.next()).svids).toHaveLength(1);

      const noX509 = await endpoint(cache, { profiles: { x509: false } });
      const c2 = raw(noX509);
      expect((await x509Svid(c2).ended).code).toBe(status.UNIMPLEMENTED);
      expect((await x509Bundles(c2).ended).code).toBe(status.UNIMPLEMENTED);
      expect((await fetchJwt(c2, ["svc"])).ok).toBe(true);
    });
  });

  describe("X.509-SVID profile", () => {
    it("WAPI-3, WAPI-15: the response is tailored to the caller: one SVID per entry whose selectors it all has (the agent's real cache)", async () => {
      const gid = `unix:gid:${process.getegid?.() ?? 0}`;
      const ep = await realCacheEndpoint([
        { spiffeId: "spiffe://example.org/by-uid", selectors: [ME] },
        { spiffeId: "spiffe://example.org/by-uid-and-gid", selectors: [ME, gid] },
        { spiffeId: "spiffe://example.org/other-uid", selectors: ["unix:uid:99999"] },
        { spiffeId: "spiffe://example.org/needs-more", selectors: [ME, "unix:gid:424242"] },
      ]);
      const ctx = await client(ep).fetchX509Context();
      expect(ctx.svids.map((s) => s.id.toString())).toEqual(["spiffe://example.org/by-uid", "spiffe://example.org/by-uid-and-gid"]);
    });

    it("WAPI-7: the first message goes out at once, without waiting for any cache change", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ME] });
      const ep = await endpoint(cache);
      let notified = 0;
      const unsubscribe = cache.subscribe(() => notified++);
      const first = await x509Svid(raw(ep)).messages.next();
      unsubscribe();
      expect(first.svids).toHaveLength(1);
      expect(notified).toBe(0);
    });

    it("WAPI-16, WAPI-17, WAPI-18: mandatory fields; x509_svid is DER leaf first with the URI SAN, chaining to bundle; key is PKCS#8 DER of the leaf", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ME], hint: "internal" });
      const ep = await endpoint(cache);
      const svid = (await x509Svid(raw(ep)).messages.next()).svids[0];
      expect(svid).toBeDefined();
      if (svid === undefined) return;
      expect(svid.spiffeId).toBe("spiffe://example.org/web");
      expect(svid.x509Svid.length).toBeGreaterThan(0);
      expect(svid.x509SvidKey.length).toBeGreaterThan(0);
      expect(svid.bundle.length).toBeGreaterThan(0);
      expect(svid.hint).toBe("internal");
      // DER, not PEM.
      expect(svid.x509Svid[0]).toBe(0x30);
      expect(Buffer.from(svid.x509Svid).includes("-----BEGIN")).toBe(false);
      const [leaf] = certs(svid.x509Svid);
      expect(leaf?.subjectAltName).toBe("URI:spiffe://example.org/web");
      const [root] = certs(svid.bundle);
      expect(root !== undefined && leaf?.verify(root.publicKey)).toBe(true);
      const key = createPrivateKey({ key: Buffer.from(svid.x509SvidKey), format: "der", type: "pkcs8" });
      expect(createPublicKey(key).export({ type: "spki", format: "der" })).toEqual(leaf?.publicKey.export({ type: "spki", format: "der" }));
    });

    it("WAPI-19 FED-10: bundles are concatenated DER keyed spiffe://<td>; federated_bundles holds only the caller's federated domains, never its own", async () => {
      const cache = new FakeWorkloadCache();
      const b = FakeTrustDomain.create("td-b.org");
      const c2 = FakeTrustDomain.create("td-c.org");
      cache.setFederated(b);
      cache.setFederated(c2);
      // The own trust domain in federatesWith must not show up as "federated".
      cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ME], federatesWith: ["td-b.org", "example.org", "unknown.org"] });
      const ep = await endpoint(cache);
      const c = raw(ep);
      const resp = await x509Svid(c).messages.next();
      expect(Object.keys(resp.federatedBundles)).toEqual(["spiffe://td-b.org"]);
      for (const [k, v] of Object.entries(resp.federatedBundles)) {
        expect(k).toMatch(TD_KEY);
        expect(certs(v).map((x) => x.raw)).toEqual([Buffer.from(b.caDer)]);
      }
      expect(certs(resp.svids[0]?.bundle ?? new Uint8Array()).map((x) => x.raw)).toEqual([Buffer.from(cache.own.caDer)]);
      const bundles = await x509Bundles(c).messages.next();
      expect(Object.keys(bundles.bundles).sort()).toEqual(["spiffe://example.org", "spiffe://td-b.org"]);
      for (const k of Object.keys(bundles.bundles)) expect(k).toMatch(TD_KEY);
    });

    it("WAPI-39: the default identity (the oldest entry) comes first, whatever the sync order or entry IDs (the agent's real cache)", async () => {
      // Synced newest first, and the entry IDs sort the other way round: only the creation time gives the answer.
      const ep = await realCacheEndpoint([
        { spiffeId: "spiffe://example.org/newer", selectors: [ME], entryId: "a-newer", createdAt: new Date("2031-01-01T00:00:00Z") },
        { spiffeId: "spiffe://example.org/older", selectors: [ME], entryId: "b-older", createdAt: new Date("2030-01-01T00:00:00Z") },
      ]);
      const ctx = await client(ep).fetchX509Context();
      expect(ctx.svids.map((s) => s.id.toString())).toEqual(["spiffe://example.org/older", "spiffe://example.org/newer"]);
      expect(ctx.defaultSvid.id.toString()).toBe("spiffe://example.org/older");
    });

    it("WAPI-20, A17: of two entries with the same non-empty hint only the oldest is sent; empty hints never collide", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME], hint: "db" });
      cache.addIdentity({ spiffeId: "spiffe://example.org/b", selectors: [ME], hint: "db" });
      cache.addIdentity({ spiffeId: "spiffe://example.org/c", selectors: [ME], hint: "" });
      cache.addIdentity({ spiffeId: "spiffe://example.org/d", selectors: [ME], hint: "" });
      const ep = await endpoint(cache);
      const resp = await x509Svid(raw(ep)).messages.next();
      expect(resp.svids.map((s) => [s.spiffeId, s.hint])).toEqual([
        ["spiffe://example.org/a", "db"],
        ["spiffe://example.org/c", ""],
        ["spiffe://example.org/d", ""],
      ]);
      const jwt = (await fetchJwt(raw(ep), ["svc"])) as { message: JWTSVIDResponse };
      expect(jwt.message.svids.map((s) => [s.spiffeId, s.hint])).toEqual(resp.svids.map((s) => [s.spiffeId, s.hint]));
    });

    it("WAPI-40: a hint over 1024 bytes is never sent (the SVID goes out without it, and the log says why); 1024 bytes is fine", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/long", selectors: [ME], hint: "h".repeat(1025) });
      cache.addIdentity({ spiffeId: "spiffe://example.org/max", selectors: [ME], hint: "é".repeat(512) });
      const ep = await endpoint(cache);
      const resp = await x509Svid(raw(ep)).messages.next();
      expect(resp.svids.map((s) => [s.spiffeId, Buffer.byteLength(s.hint)])).toEqual([
        ["spiffe://example.org/long", 0],
        ["spiffe://example.org/max", 1024],
      ]);
      expect(ep.logs.some((l) => l["level"] === "warn" && String(l["msg"]).includes("longer than 1024 bytes"))).toBe(true);
      const jwt = (await fetchJwt(raw(ep), ["svc"])) as { message: JWTSVIDResponse };
      expect(jwt.message.svids.every((s) => Buffer.byteLength(s.hint) <= 1024)).toBe(true);
    });

    it("WAPI-5, WAPI-6: every push is the complete state: rotating one of two SVIDs resends both; adding a federated bundle resends all", async () => {
      const cache = new FakeWorkloadCache();
      const a = cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME], federatesWith: ["td-b.org", "td-c.org"] });
      cache.addIdentity({ spiffeId: "spiffe://example.org/b", selectors: [ME] });
      cache.setFederated(FakeTrustDomain.create("td-b.org"));
      const ep = await endpoint(cache);
      const s = x509Svid(raw(ep));
      const first = await s.messages.next();
      expect(first.svids.map((x) => x.spiffeId)).toEqual(["spiffe://example.org/a", "spiffe://example.org/b"]);

      const rotated = cache.rotate(a.entry.id);
      const second = await s.messages.next();
      expect(second.svids.map((x) => x.spiffeId)).toEqual(["spiffe://example.org/a", "spiffe://example.org/b"]);
      expect(certs(second.svids[0]?.x509Svid ?? new Uint8Array())[0]?.raw).toEqual(Buffer.from(rotated.chain[0] ?? new Uint8Array()));
      expect(second.svids[1]?.x509Svid).toEqual(first.svids[1]?.x509Svid);

      cache.setFederated(FakeTrustDomain.create("td-c.org"));
      const third = await s.messages.next();
      expect(Object.keys(third.federatedBundles).sort()).toEqual(["spiffe://td-b.org", "spiffe://td-c.org"]);
      expect(third.svids).toHaveLength(2);
    });

    it("WAPI-6: an own-bundle change (CA rotation) and a new entitlement are pushed on the open streams", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
      const ep = await endpoint(cache);
      const c = raw(ep);
      const svids = x509Svid(c);
      const bundles = x509Bundles(c);
      await svids.messages.next();
      await bundles.messages.next();

      const next = FakeTrustDomain.create("example.org");
      const own = cache.own.bundle();
      cache.setOwnBundle({ ...own, x509Authorities: [...own.x509Authorities, next.caDer] });
      expect(certs((await svids.messages.next()).svids[0]?.bundle ?? new Uint8Array())).toHaveLength(2);
      expect(certs((await bundles.messages.next()).bundles["spiffe://example.org"] ?? new Uint8Array())).toHaveLength(2);

      cache.addIdentity({ spiffeId: "spiffe://example.org/new", selectors: [ME] });
      expect((await svids.messages.next()).svids.map((s) => s.spiffeId)).toEqual(["spiffe://example.org/a", "spiffe://example.org/new"]);
    });

    it("A20: a cache notification that changes nothing for the caller sends nothing (no identical consecutive messages)", async () => {
      const cache = new FakeWorkloadCache();
      const a = cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
      const ep = await endpoint(cache);
      const c = raw(ep);
      const svids = x509Svid(c);
      const bundles = x509Bundles(c);
      const jwks = jwtBundles(c);
      await Promise.all([svids.messages.next(), bundles.messages.next(), jwks.messages.next()]);
      // Changes that do not touch this caller's view, each flushed to the wire if it were sent.
      const flush = (): Promise<void> => new Promise((r) => setImmediate(r));
      cache.notify();
      await flush();
      cache.addIdentity({ spiffeId: "spiffe://example.org/someone-else", selectors: ["unix:uid:99999"] });
      await flush();
      cache.setFederated(FakeTrustDomain.create("td-b.org")); // the caller does not federate with td-b
      await flush();
      // Streams are ordered: had a duplicate been sent, it would arrive before these.
      const rotated = cache.rotate(a.entry.id);
      expect(certs((await svids.messages.next()).svids[0]?.x509Svid ?? new Uint8Array())[0]?.raw).toEqual(Buffer.from(rotated.chain[0] ?? new Uint8Array()));
      await flush();
      const next = FakeTrustDomain.create("example.org");
      const own = cache.own.bundle();
      cache.setOwnBundle({ ...own, x509Authorities: [cache.own.caDer, next.caDer] });
      expect(certs((await bundles.messages.next()).bundles["spiffe://example.org"] ?? new Uint8Array())).toHaveLength(2);
      expect(certs((await svids.messages.next()).svids[0]?.bundle ?? new Uint8Array())).toHaveLength(2);
      await flush();
      cache.setOwnBundle({ ...own, x509Authorities: [cache.own.caDer, next.caDer], jwtAuthorities: new Map([...own.jwtAuthorities, ["example.org-jwt-2", generateSigner("ec-p256").publicKey]]) });
      // The JWT bundle stream's first push is the first change of the JWT keys.
      const jwksMsg = await jwks.messages.next();
      expect((JSON.parse(Buffer.from(jwksMsg.bundles["spiffe://example.org"] ?? new Uint8Array()).toString()) as { keys: unknown[] }).keys).toHaveLength(2);
    });

    it("WAPI-22: a caller entitled to no X509-SVID gets PermissionDenied `no identity issued`; the log shows its selectors", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/other", selectors: ["unix:uid:99999"] });
      const ep = await endpoint(cache);
      const ended = await x509Svid(raw(ep)).ended;
      expect(ended).toEqual({ code: status.PERMISSION_DENIED, details: "no identity issued" });
      const line = ep.logs.find((l) => String(l["msg"]).startsWith("No identity issued"));
      expect(line?.["selectors"]).toContain(ME);
      expect(line?.["method"]).toBe("FetchX509SVID");
    });

    it("WAPI-41, A20: when the last identity goes away mid-stream, the stream ends with PermissionDenied (no empty svids message)", async () => {
      const cache = new FakeWorkloadCache();
      const a = cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
      const b = cache.addIdentity({ spiffeId: "spiffe://example.org/b", selectors: [ME] });
      const ep = await endpoint(cache);
      const c = raw(ep);
      const s = x509Svid(c);
      const bundles = x509Bundles(c);
      expect((await s.messages.next()).svids).toHaveLength(2);
      await bundles.messages.next();
      cache.removeIdentity(a.entry.id);
      expect((await s.messages.next()).svids.map((x) => x.spiffeId)).toEqual(["spiffe://example.org/b"]);
      cache.removeIdentity(b.entry.id);
      expect(await s.ended).toEqual({ code: status.PERMISSION_DENIED, details: "no identity issued" });
      expect(await bundles.ended).toEqual({ code: status.PERMISSION_DENIED, details: "no identity issued" });
      expect(s.messages.pending).toBe(0);
      // Both streams let go of the cache.
      await cache.waitForListeners(0);
    });

    it("a cancelled stream unsubscribes from the cache", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
      const ep = await endpoint(cache);
      const s = x509Svid(raw(ep));
      await s.messages.next();
      expect(cache.listenerCount).toBe(1);
      s.cancel();
      await cache.waitForListeners(0);
    });
  });

  describe("bundles", () => {
    it("WAPI-24: X509BundlesResponse always includes the own trust domain, as DER", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
      const ep = await endpoint(cache);
      const resp = await x509Bundles(raw(ep)).messages.next();
      expect(certs(resp.bundles["spiffe://example.org"] ?? new Uint8Array()).map((c) => c.raw)).toEqual([Buffer.from(cache.own.caDer)]);
    });

    it("WAPI-25, A15: no identity → bundle RPCs PermissionDenied; with allowUnauthenticatedVerifiers only the own bundle", async () => {
      const cache = new FakeWorkloadCache();
      cache.setFederated(FakeTrustDomain.create("td-b.org"));
      cache.addIdentity({ spiffeId: "spiffe://example.org/other", selectors: ["unix:uid:99999"], federatesWith: ["td-b.org"] });
      const strict = await endpoint(cache);
      const c = raw(strict);
      expect(await x509Bundles(c).ended).toEqual({ code: status.PERMISSION_DENIED, details: "no identity issued" });
      expect(await jwtBundles(c).ended).toEqual({ code: status.PERMISSION_DENIED, details: "no identity issued" });

      const lenient = await endpoint(cache, { allowUnauthenticatedVerifiers: true });
      const c2 = raw(lenient);
      expect(Object.keys((await x509Bundles(c2).messages.next()).bundles)).toEqual(["spiffe://example.org"]);
      expect(Object.keys((await jwtBundles(c2).messages.next()).bundles)).toEqual(["spiffe://example.org"]);
      // ValidateJWTSVID needs no identity either (as in SPIRE): the own bundle is used.
      const token = cache.own.signJwt("spiffe://example.org/other", ["svc"]);
      expect((await validate(c, token, "svc")).ok).toBe(true);
    });

    it("WAPI-30, WAPI-31, A6: JWTBundlesResponse has the own domain as a standard JWK Set: kid and key params, no use, no x5c, no spiffe_*", async () => {
      const cache = new FakeWorkloadCache();
      const b = FakeTrustDomain.create("td-b.org");
      cache.setFederated(b);
      cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME], federatesWith: ["td-b.org"] });
      const ep = await endpoint(cache);
      const resp = await jwtBundles(raw(ep)).messages.next();
      expect(Object.keys(resp.bundles).sort()).toEqual(["spiffe://example.org", "spiffe://td-b.org"]);
      for (const [k, v] of Object.entries(resp.bundles)) {
        const doc = JSON.parse(Buffer.from(v).toString("utf8")) as { keys: Array<Record<string, unknown>> } & Record<string, unknown>;
        expect(Object.keys(doc)).toEqual(["keys"]);
        expect(doc.keys.length).toBeGreaterThan(0);
        for (const key of doc.keys) {
          expect(key).not.toHaveProperty("use");
          expect(key).not.toHaveProperty("x5c");
          expect(typeof key["kid"]).toBe("string");
        }
        const parsed = parseJwks(v, parseTrustDomain(k.slice("spiffe://".length)));
        expect(parsed.authorities.size).toBe(doc.keys.length);
      }
      const own = parseJwks(resp.bundles["spiffe://example.org"] ?? new Uint8Array(), parseTrustDomain("example.org"));
      expect([...own.authorities.keys()]).toEqual([cache.own.jwtSigner.id]);
    });
  });

  describe("JWT bundles", () => {
    it("WAPI-32: FetchJWTBundles: no identity → PermissionDenied and a retry succeeds once entitled; redacted bundles are not sent; losing the last identity ends the stream", async () => {
      const cache = new FakeWorkloadCache();
      cache.setFederated(FakeTrustDomain.create("td-b.org"));
      cache.addIdentity({ spiffeId: "spiffe://example.org/other", selectors: ["unix:uid:99999"], federatesWith: ["td-b.org"] });
      const ep = await endpoint(cache);
      const c = raw(ep);
      expect(await jwtBundles(c).ended).toEqual({ code: status.PERMISSION_DENIED, details: "no identity issued" });
      const line = ep.logs.find((l) => String(l["msg"]).startsWith("No identity issued") && l["method"] === "FetchJWTBundles");
      expect(line?.["selectors"]).toContain(ME);

      // The client may retry: once an entry names the caller, the same call succeeds.
      const a = cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME], federatesWith: ["td-b.org"] });
      const s = jwtBundles(c);
      expect(Object.keys((await s.messages.next()).bundles).sort()).toEqual(["spiffe://example.org", "spiffe://td-b.org"]);
      // td-b's bundle goes away: the next message is complete without it (the client then stops using it).
      cache.removeFederated("td-b.org");
      expect(Object.keys((await s.messages.next()).bundles)).toEqual(["spiffe://example.org"]);
      // No identity left: the open stream ends with PermissionDenied, not with an empty or stale message.
      cache.removeIdentity(a.entry.id);
      expect(await s.ended).toEqual({ code: status.PERMISSION_DENIED, details: "no identity issued" });
      expect(s.messages.pending).toBe(0);
      await cache.waitForListeners(0);
    });
  });

  describe("fan-out", () => {
    it("WAPI-8: SVID renewals are jittered, so 1,000 workloads issued together do not rotate (and push) at the same instant", () => {
      // 1,000 SVIDs issued at the same instant with the same 1 h lifetime, renewed with the agent's defaults.
      const notBefore = new Date("2030-01-01T00:00:00Z");
      const notAfter = new Date(notBefore.getTime() + 3_600_000);
      const fraction = 0.5;
      const jitter = 0.1; // agent.rotation_jitter default
      let seed = 0x2545f491; // xorshift32: the agent passes Math.random(); a fixed sequence keeps the test exact
      const random = (): number => {
        seed ^= seed << 13;
        seed ^= seed >>> 17;
        seed ^= seed << 5;
        return (seed >>> 0) / 0xffffffff;
      };
      const offsets = Array.from({ length: 1000 }, () => renewAt(notBefore, notAfter, fraction, jitter, random()).getTime() - notBefore.getTime());

      // Every renewal stays within ±10% of half-life: 27..33 min.
      expect(Math.min(...offsets)).toBeGreaterThanOrEqual(27 * 60_000);
      expect(Math.max(...offsets)).toBeLessThanOrEqual(33 * 60_000);
      // Spread over (nearly) the whole 6-minute window, with nearly every instant distinct.
      expect(Math.max(...offsets) - Math.min(...offsets)).toBeGreaterThan(5.5 * 60_000);
      expect(new Set(offsets).size).toBeGreaterThan(990);
      // No second carries a burst: uniform over 360 s is ~2.8 a second.
      const perSecond = new Map<number, number>();
      for (const o of offsets) perSecond.set(Math.floor(o / 1000), (perSecond.get(Math.floor(o / 1000)) ?? 0) + 1);
      expect(Math.max(...perSecond.values())).toBeLessThanOrEqual(12);
      // The same SVID with different random values gives different instants; without jitter they all coincide (the storm).
      expect(renewAt(notBefore, notAfter, fraction, jitter, 0.2)).not.toEqual(renewAt(notBefore, notAfter, fraction, jitter, 0.8));
      expect(new Set(Array.from({ length: 1000 }, () => renewAt(notBefore, notAfter, fraction, 0, random()).getTime())).size).toBe(1);
    });
  });

  describe("JWT-SVID profile", () => {
    it("WAPI-11, WAPI-35: mandatory request fields at their default value → InvalidArgument with SPIRE's messages", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
      const ep = await endpoint(cache);
      const c = raw(ep);
      expect(await fetchJwt(c, [])).toEqual({ ok: false, code: status.INVALID_ARGUMENT, details: "audience must be specified" });
      expect(await fetchJwt(c, ["ok", ""])).toMatchObject({ ok: false, code: status.INVALID_ARGUMENT });
      const token = cache.own.signJwt("spiffe://example.org/a", ["svc"]);
      expect(await validate(c, token, "")).toEqual({ ok: false, code: status.INVALID_ARGUMENT, details: "audience must be specified" });
      expect(await validate(c, "", "svc")).toEqual({ ok: false, code: status.INVALID_ARGUMENT, details: "svid must be specified" });
      expect(cache.jwtRequests).toHaveLength(0);
    });

    it("WAPI-26: the requested audiences become the token's aud", async () => {
      const cache = new FakeWorkloadCache();
      const a = cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
      const ep = await endpoint(cache);
      const r = (await fetchJwt(raw(ep), ["a", "b"])) as { message: JWTSVIDResponse };
      expect(payloadOf(r.message.svids[0]?.svid ?? "")["aud"]).toEqual(["a", "b"]);
      expect(cache.jwtRequests).toEqual([{ entryId: a.entry.id, audience: ["a", "b"] }]);
    });

    it("WAPI-27, WAPI-28: without spiffe_id one token per identity; with it only that one; every field set", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/one", selectors: [ME], hint: "first" });
      cache.addIdentity({ spiffeId: "spiffe://example.org/two", selectors: [ME] });
      const ep = await endpoint(cache);
      const c = client(ep);
      const all = await c.fetchJwtSvids({ audience: "svc" });
      expect(all.map((s) => [s.spiffeId.toString(), s.hint])).toEqual([
        ["spiffe://example.org/one", "first"],
        ["spiffe://example.org/two", ""],
      ]);
      for (const s of all) {
        expect(s.token).not.toBe("");
        expect(payloadOf(s.token)["sub"]).toBe(s.spiffeId.toString());
      }
      const one = await c.fetchJwtSvids({ audience: "svc", spiffeId: "spiffe://example.org/two" });
      expect(one.map((s) => s.spiffeId.toString())).toEqual(["spiffe://example.org/two"]);
    });

    it("WAPI-29: another workload's ID → PermissionDenied; a malformed spiffe_id → InvalidArgument; no identity → PermissionDenied", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/mine", selectors: [ME] });
      cache.addIdentity({ spiffeId: "spiffe://example.org/theirs", selectors: ["unix:uid:99999"] });
      const ep = await endpoint(cache);
      const c = raw(ep);
      expect(await fetchJwt(c, ["svc"], "spiffe://example.org/theirs")).toEqual({ ok: false, code: status.PERMISSION_DENIED, details: "no identity issued" });
      expect(await fetchJwt(c, ["svc"], "not a spiffe id")).toMatchObject({ ok: false, code: status.INVALID_ARGUMENT });
      expect(await fetchJwt(c, ["svc"], "SPIFFE://Example.org/mine")).toMatchObject({ ok: false, code: status.INVALID_ARGUMENT });
      cache.removeIdentity("entry-1");
      expect(await fetchJwt(c, ["svc"])).toEqual({ ok: false, code: status.PERMISSION_DENIED, details: "no identity issued" });
    });

    it("FetchJWTSVID: a cache failure (server unreachable) is Unavailable, not a missing identity", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
      const { SigilError } = await import("../../spiffe/errors.js");
      cache.jwtFailure = new SigilError("ERR_UNAVAILABLE", "cache: server unreachable");
      const ep = await endpoint(cache);
      expect(await fetchJwt(raw(ep), ["svc"])).toMatchObject({ ok: false, code: status.UNAVAILABLE });
    });

    describe("WAPI-33: ValidateJWTSVID applies every JWT-SVID rule with the bundle of sub's trust domain", () => {
      const sub = "spiffe://example.org/a";
      const cases: Array<[string, (cache: FakeWorkloadCache, b: FakeTrustDomain) => string]> = [
        ["expired", (cache) => craft({ alg: "ES256", kid: cache.own.jwtSigner.id, typ: "JWT" }, { sub, aud: "svc", exp: now() - 3600 }, cache.own.jwtSigner)],
        ["wrong aud", (cache) => cache.own.signJwt(sub, ["someone-else"])],
        ["alg none", (cache) => craft({ alg: "none", kid: cache.own.jwtSigner.id, typ: "JWT" }, { sub, aud: "svc", exp: now() + 300 })],
        [
          "HS256",
          (cache) => {
            const input = `${b64({ alg: "HS256", kid: cache.own.jwtSigner.id, typ: "JWT" })}.${b64({ sub, aud: "svc", exp: now() + 300 })}`;
            return `${input}.${createHmac("sha256", "secret").update(input).digest("base64url")}`;
          },
        ],
        ["unknown kid", () => craft({ alg: "ES256", kid: "nobody", typ: "JWT" }, { sub, aud: "svc", exp: now() + 300 }, generateSigner("ec-p256", "nobody"))],
        [
          "bad signature",
          (cache) => {
            const t = cache.own.signJwt(sub, ["svc"]);
            return `${t.slice(0, -4)}${t.endsWith("AAAA") ? "BBBB" : "AAAA"}`;
          },
        ],
        ["key of another domain", (_cache, b) => craft({ alg: "ES256", kid: b.jwtSigner.id, typ: "JWT" }, { sub, aud: "svc", exp: now() + 300 }, b.jwtSigner)],
        ["sub from a domain without a bundle", () => FakeTrustDomain.create("nowhere.org").signJwt("spiffe://nowhere.org/x", ["svc"])],
        ["bad typ", (cache) => craft({ alg: "ES256", kid: cache.own.jwtSigner.id, typ: "foo" }, { sub, aud: "svc", exp: now() + 300 }, cache.own.jwtSigner)],
        ["not a JWT", () => "garbage"],
      ];
      for (const [name, make] of cases) {
        it(`WAPI-33: ${name} → InvalidArgument`, async () => {
          const cache = new FakeWorkloadCache();
          const b = FakeTrustDomain.create("td-b.org");
          cache.setFederated(b);
          cache.addIdentity({ spiffeId: sub, selectors: [ME], federatesWith: ["td-b.org"] });
          const ep = await endpoint(cache);
          const r = await validate(raw(ep), make(cache, b), "svc");
          expect(r.ok).toBe(false);
          expect((r as { code: number }).code).toBe(status.INVALID_ARGUMENT);
          expect((r as { details: string }).details).toMatch(/^jwtsvid: /);
        });
      }

      it("WAPI-33: the happy path passes; a federated domain's token passes only if the caller federates with it", async () => {
        const cache = new FakeWorkloadCache();
        const b = FakeTrustDomain.create("td-b.org");
        const c3 = FakeTrustDomain.create("td-c.org");
        cache.setFederated(b);
        cache.setFederated(c3);
        cache.addIdentity({ spiffeId: sub, selectors: [ME], federatesWith: ["td-b.org"] });
        const ep = await endpoint(cache);
        const c = raw(ep);
        expect((await validate(c, cache.own.signJwt(sub, ["svc"]), "svc")).ok).toBe(true);
        expect((await validate(c, b.signJwt("spiffe://td-b.org/peer", ["svc"]), "svc")).ok).toBe(true);
        const denied = await validate(c, c3.signJwt("spiffe://td-c.org/peer", ["svc"]), "svc");
        expect(denied).toMatchObject({ ok: false, code: status.INVALID_ARGUMENT });
      });
    });

    it("WAPI-34, WAPI-35, A19: spiffe_id is sub; claims hold sub, aud (always a list), exp and the other claims of own-domain tokens", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
      const ep = await endpoint(cache);
      const token = cache.own.signJwt("spiffe://example.org/a", ["svc"], 300, { iss: "https://issuer", tenant: "blue", nested: { n: 1 } });
      expect(payloadOf(token)["aud"]).toBe("svc"); // one audience travels as a string
      const r = (await validate(raw(ep), token, "svc")) as { ok: true; message: ValidateJWTSVIDResponse };
      expect(r.ok).toBe(true);
      expect(r.message.spiffeId).toBe("spiffe://example.org/a");
      const claims = r.message.claims as JsonObject;
      expect(claims["sub"]).toBe("spiffe://example.org/a");
      expect(claims["aud"]).toEqual(["svc"]);
      expect(claims["exp"]).toBe(payloadOf(token)["exp"]);
      expect(claims["tenant"]).toBe("blue");
      expect(claims["nested"]).toEqual({ n: 1 });
      // The real client reads the same.
      const v = await client(ep).validateJwtSvid(token, "svc");
      expect(v.id.toString()).toBe("spiffe://example.org/a");
    });

    it("WAPI-34: claims of foreign-domain tokens are filtered to the standard ones plus the operator's allow-list", async () => {
      const cache = new FakeWorkloadCache();
      const b = FakeTrustDomain.create("td-b.org");
      cache.setFederated(b);
      cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME], federatesWith: ["td-b.org"] });
      const token = b.signJwt("spiffe://td-b.org/peer", ["svc"], 300, { iss: "td-b", tenant: "blue", secret_level: 3 });
      const strict = await endpoint(cache);
      const r1 = (await validate(raw(strict), token, "svc")) as { message: ValidateJWTSVIDResponse };
      expect(Object.keys(r1.message.claims ?? {}).sort()).toEqual(["aud", "exp", "iat", "iss", "sub"]);
      const lenient = await endpoint(cache, { allowedForeignJwtClaims: ["tenant"] });
      const r2 = (await validate(raw(lenient), token, "svc")) as { message: ValidateJWTSVIDResponse };
      expect(Object.keys(r2.message.claims ?? {}).sort()).toEqual(["aud", "exp", "iat", "iss", "sub", "tenant"]);
    });
  });

  it("WAPI-38: FetchWITSVID and FetchWITBundles answer Unimplemented", async () => {
    const cache = new FakeWorkloadCache();
    cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
    const ep = await endpoint(cache);
    const c = raw(ep);
    expect((await stream(c, WAPI.fetchWITSVID, create(WITSVIDRequestSchema)).ended).code).toBe(status.UNIMPLEMENTED);
    expect((await stream(c, WAPI.fetchWITBundles, create(WITBundlesRequestSchema)).ended).code).toBe(status.UNIMPLEMENTED);
  });

  describe("attestation outcomes (A15)", () => {
    it("a failing attestor → Unavailable `workload attestation failed` (retryable), never PermissionDenied", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
      const ep = await endpoint(cache, { attestors: [{ name: "broken", attest: async () => Promise.reject(new Error("boom")) }] });
      const c = raw(ep);
      expect(await x509Svid(c).ended).toEqual({ code: status.UNAVAILABLE, details: "workload attestation failed" });
      expect(await fetchJwt(c, ["svc"])).toEqual({ ok: false, code: status.UNAVAILABLE, details: "workload attestation failed" });
      const err = await client(ep).fetchX509Context().catch((e: unknown) => e);
      expect(isWorkloadApiError(err, status.UNAVAILABLE)).toBe(true);
    });

    it("a caller that vanished during attestation → Unauthenticated", async () => {
      const cache = new FakeWorkloadCache();
      cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
      const { WorkloadAttestationError } = await import("../../agent/attestation/workload.js");
      const ep = await endpoint(cache, { attest: async () => Promise.reject(new WorkloadAttestationError("caller_gone")) });
      expect(await x509Svid(raw(ep)).ended).toEqual({ code: status.UNAUTHENTICATED, details: "could not verify existence of the original caller" });
    });
  });

  it("metrics: every RPC's count and latency are recorded by service, method and code", async () => {
    const cache = new FakeWorkloadCache();
    cache.addIdentity({ spiffeId: "spiffe://example.org/a", selectors: [ME] });
    const ep = await endpoint(cache);
    const c = raw(ep);
    expect((await fetchJwt(c, ["svc"])).ok).toBe(true);
    expect((await fetchJwt(c, [])).ok).toBe(false);
    const text = await ep.metrics.registry.metrics();
    expect(text).toContain('sigil_rpc_requests_total{service="SpiffeWorkloadAPI",method="FetchJWTSVID",code="OK"} 1');
    expect(text).toContain('sigil_rpc_requests_total{service="SpiffeWorkloadAPI",method="FetchJWTSVID",code="INVALID_ARGUMENT"} 1');
    expect(text).toMatch(/sigil_workload_attestation_duration_seconds_count\{outcome="ok"\} 1/);
  });
});
