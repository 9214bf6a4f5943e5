/**
 * The federation poller against local HTTPS bundle endpoints, through the real
 * bundle endpoint client: polling on its own at the refresh hint (FED-3), an
 * `https_spiffe` endpoint followed through a root rotation (FED-23), and a
 * hostile endpoint whose every trick is refused with the last good bundle kept.
 */
import { once } from "node:events";
import { gzipSync } from "node:zlib";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { systemClock } from "../../../../common/clock.js";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { parseSpiffeBundle, serializeSpiffeBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import type { Datastore } from "../../../../server/datastore/index.js";
import { FederationPoller } from "../../../../server/federation/poller.js";
import { closeTempDatastore, openTempDatastore } from "../../../support/datastore.js";
import { makeTestCa } from "../../../support/federation-bundles.js";
import { createServingPki } from "../../../support/serving-cert.js";
import { requireTool } from "../../../support/tools.js";

const haveOpenssl = requireTool("openssl", ["version"], "the https_web endpoint's certificate");
const OWN = parseTrustDomain("td-a.test");

let dir: string;
let ds: Datastore;
let poller: FederationPoller | undefined;
let server: Server | undefined;

async function serveRaw(tls: { cert: string; key: string }, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ url: string; port: number; hits: () => number }> {
  let hits = 0;
  server = createServer(tls, (req, res) => {
    hits++;
    handler(req, res);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as AddressInfo).port;
  return { url: `https://127.0.0.1:${port}/`, port, hits: () => hits };
}

async function serve(tls: { cert: string; key: string }, handler: () => string): Promise<{ url: string; hits: () => number }> {
  return serveRaw(tls, (_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(handler()));
}

const ownCa = makeTestCa("td-a.test");
const ownJwtKey = generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey;
let logLines: string[] = [];

function newPoller(trustedCas?: string, opts: { minRefreshMs?: number; fetchTimeoutMs?: number } = {}): FederationPoller {
  poller = new FederationPoller({
    trustDomain: OWN,
    datastore: { datastore: ds },
    ownBundle: () => ({ ...parseSpiffeBundle(ownCa.bundleJson(1n), OWN).bundle, jwtAuthorities: new Map([["own-kid", ownJwtKey]]) }),
    config: { federates_with: {}, min_refresh_interval: opts.minRefreshMs ?? 1_000, max_refresh_interval: 3_600_000 },
    clock: systemClock,
    metrics: new Metrics({ defaultMetrics: false }),
    log: createLogger({ level: "warn", format: "json", destination: { write: (line: string) => void logLines.push(line) } }),
    ...(trustedCas !== undefined ? { trustedCas } : {}),
    ...(opts.fetchTimeoutMs !== undefined ? { fetchTimeoutMs: opts.fetchTimeoutMs } : {}),
  });
  return poller;
}

beforeEach(async () => {
  logLines = [];
  ({ dir, ds } = await openTempDatastore("poller-https", new Date()));
});

afterEach(async () => {
  await poller?.stop();
  poller = undefined;
  if (server) await new Promise((r) => server?.close(r));
  server = undefined;
  await closeTempDatastore(ds, dir);
});

describe("the federation poller over HTTPS", () => {
  it.skipIf(!haveOpenssl)("FED-3: polls an https_web endpoint on its own at the refresh hint (bounded below by min_refresh_interval)", async () => {
    const pki = createServingPki();
    const caB = makeTestCa("td-b.test");
    let seq = 1n;
    const ep = await serve({ cert: pki.certPem, key: pki.keyPem }, () => caB.bundleJson(seq++, 1));
    const p = newPoller(pki.caPem);
    await p.start();
    await ds.createFederationRelationship({ trustDomain: "td-b.test", bundleEndpointUrl: ep.url, profile: "https_web" });
    p.relationshipChanged("td-b.test");
    // No refreshNow: the poller's own schedule fetches again and again, each time a higher sequence.
    for (let i = 0; i < 400 && ep.hits() < 3; i++) await new Promise((r) => setTimeout(r, 25));
    expect(ep.hits()).toBeGreaterThanOrEqual(3);
    for (let i = 0; i < 200 && p.status("td-b.test")?.lastResult !== "updated"; i++) await new Promise((r) => setTimeout(r, 25));
    expect(BigInt((await ds.getBundle("td-b.test"))?.sequence ?? "0")).toBeGreaterThanOrEqual(2n);
    expect(p.status("td-b.test")?.lastError).toBeUndefined();
  }, 30_000);

  it("FED-23: an https_spiffe endpoint keeps being authenticated after its trust domain rotates its root", async () => {
    const oldRoot = makeTestCa("td-b.test");
    const newRoot = makeTestCa("td-b.test");
    const id = "spiffe://td-b.test/spire/server";
    let body = oldRoot.bundleJson(2n, 3600, [newRoot.certDer]);
    const oldSvid = oldRoot.issueSvid(id);
    const ep = await serve({ cert: oldSvid.certPem, key: oldSvid.keyPem }, () => body);
    const p = newPoller();
    await p.start();
    await ds.createFederationRelationship(
      { trustDomain: "td-b.test", bundleEndpointUrl: ep.url, profile: "https_spiffe", endpointSpiffeId: id },
      { initialBundle: { document: oldRoot.bundleJson(1n), sequence: 1n } },
    );
    // The new root is published first (sequence 2), signed for with the old one.
    expect(await p.refreshNow("td-b.test")).toMatchObject({ lastResult: "updated", sequence: "2" });
    // Then the endpoint switches to an SVID of the new root and drops the old one.
    const newSvid = newRoot.issueSvid(id);
    server?.setSecureContext({ cert: newSvid.certPem, key: newSvid.keyPem });
    body = newRoot.bundleJson(3n, 3600);
    expect(await p.refreshNow("td-b.test")).toMatchObject({ lastResult: "updated", sequence: "3" });
    // A server presenting another SPIFFE ID is refused and the held bundle kept.
    const other = newRoot.issueSvid("spiffe://td-b.test/someone-else");
    server?.setSecureContext({ cert: other.certPem, key: other.keyPem });
    body = newRoot.bundleJson(4n, 3600);
    await expect(p.refreshNow("td-b.test")).rejects.toMatchObject({ code: "ERR_UNAVAILABLE" });
    expect((await ds.getBundle("td-b.test"))?.sequence).toBe("3");
  }, 30_000);
});

const TD_B = parseTrustDomain("td-b.test");
const ENDPOINT_ID = "spiffe://td-b.test/spire/server";
type Respond = (req: IncomingMessage, res: ServerResponse) => void;
const json = (body: string | Buffer): Respond => (_req, res) => void res.writeHead(200, { "content-type": "application/json" }).end(body);

function bundleB(caB: ReturnType<typeof makeTestCa>, sequence: bigint, jwt: ReadonlyArray<readonly [string, KeyObject]> = []): string {
  return serializeSpiffeBundle({ trustDomain: TD_B, x509Authorities: [caB.certDer], jwtAuthorities: new Map(jwt), sequenceNumber: sequence, refreshHintSeconds: 3600 });
}

/** An https_spiffe endpoint of td-b that first served a good bundle (sequence 2), and what it serves next. */
async function hostileSpiffeEndpoint(opts: { minRefreshMs?: number; fetchTimeoutMs?: number } = {}): Promise<{ caB: ReturnType<typeof makeTestCa>; p: FederationPoller; url: string; serveNext: (r: Respond) => void }> {
  const caB = makeTestCa("td-b.test");
  const svid = caB.issueSvid(ENDPOINT_ID);
  let respond: Respond = json(bundleB(caB, 2n));
  const ep = await serveRaw({ cert: svid.certPem, key: svid.keyPem }, (req, res) => respond(req, res));
  const p = newPoller(undefined, opts);
  await p.start();
  await ds.createFederationRelationship(
    { trustDomain: "td-b.test", bundleEndpointUrl: ep.url, profile: "https_spiffe", endpointSpiffeId: ENDPOINT_ID },
    { initialBundle: { document: caB.bundleJson(1n), sequence: 1n } },
  );
  expect(await p.refreshNow("td-b.test")).toMatchObject({ lastResult: "updated", sequence: "2" });
  return { caB, p, url: ep.url, serveNext: (r) => void (respond = r) };
}

/** The next fetch is refused with `reason` and the held bundle is exactly the one before (agents are sent what is held). */
async function expectRefusedKeepingHeld(p: FederationPoller, reason: RegExp): Promise<void> {
  const before = await ds.getBundle("td-b.test");
  expect(before).toBeDefined();
  await expect(p.refreshNow("td-b.test")).rejects.toMatchObject({ code: "ERR_UNAVAILABLE", message: expect.stringMatching(reason) as unknown });
  expect(await ds.getBundle("td-b.test")).toEqual(before);
  expect(p.status("td-b.test")).toMatchObject({ lastResult: "error", sequence: before?.sequence, lastError: expect.stringMatching(reason) as unknown });
}

describe("a hostile bundle endpoint: refused, the last good bundle kept", () => {
  it("a bundle for the wrong trust domain: its X.509 authority names another trust domain's SPIFFE ID", async () => {
    const h = await hostileSpiffeEndpoint();
    h.serveNext(json(makeTestCa("td-c.test").bundleJson(3n, 3600)));
    await expectRefusedKeepingHeld(h.p, /x509 authority 0 names spiffe:\/\/td-c\.test, an ID of another trust domain than td-b\.test/);
  }, 30_000);

  it("a bundle for the wrong trust domain: our own root published as td-b's", async () => {
    const h = await hostileSpiffeEndpoint();
    h.serveNext(json(serializeSpiffeBundle({ trustDomain: TD_B, x509Authorities: [h.caB.certDer, ownCa.certDer], jwtAuthorities: new Map(), sequenceNumber: 3n })));
    await expectRefusedKeepingHeld(h.p, /x509 authority 1 names spiffe:\/\/td-a\.test/);
  }, 30_000);

  it("BUNDLE-1: a JWT authority key of our own trust domain, or of another federated one, published as td-b's", async () => {
    const h = await hostileSpiffeEndpoint();
    h.serveNext(json(bundleB(h.caB, 3n, [["b-kid", ownJwtKey]])));
    await expectRefusedKeepingHeld(h.p, /is already an authority of td-a\.test;.*BUNDLE-1/);
    const cKey = generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey;
    const caC = makeTestCa("td-c.test");
    await ds.setBundle({ trustDomain: "td-c.test", document: serializeSpiffeBundle({ trustDomain: parseTrustDomain("td-c.test"), x509Authorities: [caC.certDer], jwtAuthorities: new Map([["c-kid", cKey]]) }), sequence: 1n });
    h.serveNext(json(bundleB(h.caB, 3n, [["c-kid", cKey]])));
    await expectRefusedKeepingHeld(h.p, /is already an authority of td-c\.test/);
    // A kid that is also ours, on a key of td-b's own, is no collision: JWT keys are looked up by the token's trust domain.
    h.serveNext(json(bundleB(h.caB, 3n, [["own-kid", generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey]])));
    expect(await h.p.refreshNow("td-b.test")).toMatchObject({ lastResult: "updated", sequence: "3" });
  }, 30_000);

  it("FED-4: a lower sequence", async () => {
    const h = await hostileSpiffeEndpoint();
    h.serveNext(json(bundleB(h.caB, 1n)));
    await expectRefusedKeepingHeld(h.p, /sequence 1 is lower than the held bundle's 2/);
  }, 30_000);

  it("garbage JSON, a sequence of 2^64, negative and fractional refresh hints", async () => {
    const h = await hostileSpiffeEndpoint();
    h.serveNext(json('{"keys": [ not json'));
    await expectRefusedKeepingHeld(h.p, /ERR_BUNDLE_INVALID|not (valid )?JSON|JSON/i);
    const doc = JSON.parse(bundleB(h.caB, 3n)) as Record<string, unknown>;
    h.serveNext(json(JSON.stringify(doc).replace('"spiffe_sequence":3', '"spiffe_sequence":18446744073709551616')));
    await expectRefusedKeepingHeld(h.p, /outside the 64-bit unsigned range/);
    h.serveNext(json(JSON.stringify({ ...doc, spiffe_refresh_hint: -5 })));
    await expectRefusedKeepingHeld(h.p, /spiffe_refresh_hint/);
    h.serveNext(json(JSON.stringify({ ...doc, spiffe_refresh_hint: 1.5 })));
    await expectRefusedKeepingHeld(h.p, /spiffe_refresh_hint/);
  }, 30_000);

  it("a 10 MB body, declared or chunked, is refused without being read whole", async () => {
    const h = await hostileSpiffeEndpoint();
    h.serveNext((_req, res) => void res.writeHead(200, { "content-type": "application/json", "content-length": String(10 * 1024 * 1024) }).end(Buffer.alloc(10 * 1024 * 1024, 0x20)));
    await expectRefusedKeepingHeld(h.p, /more than the 1048576 allowed/);
    h.serveNext((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      for (let i = 0; i < 10; i++) res.write(Buffer.alloc(1024 * 1024, 0x20));
      res.end();
    });
    await expectRefusedKeepingHeld(h.p, /larger than the 1048576 bytes allowed/);
  }, 30_000);

  it("FED-22: a TLS identity that does not match: an SVID of another trust domain, or another ID of td-b", async () => {
    const h = await hostileSpiffeEndpoint();
    h.serveNext(json(bundleB(h.caB, 3n)));
    const other = makeTestCa("td-c.test").issueSvid("spiffe://td-c.test/spire/server");
    server?.setSecureContext({ cert: other.certPem, key: other.keyPem });
    await expectRefusedKeepingHeld(h.p, /TLS: /);
    const sameTdOtherId = h.caB.issueSvid("spiffe://td-b.test/not-the-endpoint");
    server?.setSecureContext({ cert: sameTdOtherId.certPem, key: sameTdOtherId.keyPem });
    await expectRefusedKeepingHeld(h.p, /server presented spiffe:\/\/td-b\.test\/not-the-endpoint/);
  }, 30_000);

  it("a body cut short (the endpoint dies mid-body) writes nothing", async () => {
    const h = await hostileSpiffeEndpoint();
    const full = bundleB(h.caB, 3n);
    h.serveNext((_req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": String(full.length) });
      res.write(full.slice(0, full.length >> 1), () => res.socket?.destroy());
    });
    await expectRefusedKeepingHeld(h.p, /cut short|HTTP: /);
  }, 30_000);

  it("a never-ending body sent a byte at a time (slowloris) is cut off at the fetch timeout", async () => {
    const h = await hostileSpiffeEndpoint({ fetchTimeoutMs: 1_000 });
    h.serveNext((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      const t = setInterval(() => res.write(" "), 50);
      res.on("close", () => clearInterval(t));
    });
    await expectRefusedKeepingHeld(h.p, /timed out after 1000 ms/);
  }, 30_000);

  it("FED-16: a redirect loop, and huge response headers", async () => {
    const h = await hostileSpiffeEndpoint();
    h.serveNext((_req, res) => void res.writeHead(302, { location: h.url }).end());
    await expectRefusedKeepingHeld(h.p, /more than 3 redirects/);
    h.serveNext((_req, res) => {
      for (let i = 0; i < 64; i++) res.setHeader(`x-junk-${i}`, "a".repeat(4096));
      json(bundleB(h.caB, 3n))(_req, res);
    });
    await expectRefusedKeepingHeld(h.p, /HTTP: .*(header|Header)/);
  }, 30_000);

  it("a compressed body bomb: no Accept-Encoding is sent and a gzip body is not inflated", async () => {
    const h = await hostileSpiffeEndpoint();
    let acceptEncoding: string | undefined = "not asked";
    const bomb = gzipSync(Buffer.alloc(50 * 1024 * 1024, 0x20));
    expect(bomb.length).toBeLessThan(1024 * 1024);
    h.serveNext((req, res) => {
      acceptEncoding = req.headers["accept-encoding"];
      res.writeHead(200, { "content-type": "application/json", "content-encoding": "gzip" }).end(bomb);
    });
    await expectRefusedKeepingHeld(h.p, /not UTF-8|bundle/);
    expect(acceptEncoding).toBeUndefined();
  }, 30_000);

  it("a body that parses but holds 100k keys to skip: accepted, stored without them, a few log lines", async () => {
    const h = await hostileSpiffeEndpoint();
    const doc = JSON.parse(bundleB(h.caB, 3n)) as { keys: unknown[] };
    const body = JSON.stringify({ ...doc, keys: [...Array.from({ length: 100_000 }, () => ({ use: 1 })), ...doc.keys] });
    expect(body.length).toBeLessThan(1024 * 1024);
    h.serveNext(json(body));
    logLines = [];
    expect(await h.p.refreshNow("td-b.test")).toMatchObject({ lastResult: "updated", sequence: "3" });
    expect(logLines.length).toBeLessThanOrEqual(10);
    const held = await ds.getBundle("td-b.test");
    expect(held?.document.length).toBeLessThan(2_000);
    expect(parseSpiffeBundle(held?.document ?? "", TD_B).bundle.x509Authorities).toEqual([h.caB.certDer]);
  }, 30_000);

  it("FED-3: a refresh hint of 0 or 1 s still waits min_refresh_interval (0 means the 5-minute default)", async () => {
    const h = await hostileSpiffeEndpoint({ minRefreshMs: 20_000 });
    const doc = JSON.parse(bundleB(h.caB, 3n)) as Record<string, unknown>;
    h.serveNext(json(JSON.stringify({ ...doc, spiffe_refresh_hint: 1 })));
    let s = await h.p.refreshNow("td-b.test");
    expect((s.nextRefresh?.getTime() ?? 0) - (s.lastAttempt?.getTime() ?? 0)).toBeGreaterThanOrEqual(20_000 - 50);
    h.serveNext(json(JSON.stringify({ ...doc, spiffe_sequence: 4, spiffe_refresh_hint: 0 })));
    s = await h.p.refreshNow("td-b.test");
    expect((s.nextRefresh?.getTime() ?? 0) - (s.lastAttempt?.getTime() ?? 0)).toBeGreaterThanOrEqual(5 * 60_000 - 50);
  }, 30_000);

  it("two fetches at once (refresh and the schedule) store each bundle once, the sequence never going back", async () => {
    const h = await hostileSpiffeEndpoint();
    let seq = 3n;
    h.serveNext((_req, res) => json(bundleB(h.caB, seq++))(_req, res));
    h.p.relationshipChanged("td-b.test");
    const results = await Promise.all([h.p.refreshNow("td-b.test"), h.p.refreshNow("td-b.test"), h.p.refreshNow("td-b.test")]);
    expect(results.every((r) => r.lastResult === "updated")).toBe(true);
    for (let i = 0; i < 100 && h.p.status("td-b.test")?.lastAttempt === undefined; i++) await new Promise((r) => setTimeout(r, 10));
    expect(BigInt((await ds.getBundle("td-b.test"))?.sequence ?? "0")).toBe(seq - 1n);
  }, 30_000);
});

describe("a hostile https_web bundle endpoint", () => {
  async function webEndpoint(names: readonly string[]): Promise<{ caB: ReturnType<typeof makeTestCa>; p: FederationPoller; port: number; serveNext: (r: Respond) => void }> {
    const pki = createServingPki("bundle endpoint", names);
    const caB = makeTestCa("td-b.test");
    let respond: Respond = json(bundleB(caB, 2n));
    const ep = await serveRaw({ cert: pki.certPem, key: pki.keyPem }, (req, res) => respond(req, res));
    const p = newPoller(pki.caPem);
    await p.start();
    return { caB, p, port: ep.port, serveNext: (r) => void (respond = r) };
  }

  it.skipIf(!haveOpenssl)("FED-17: a certificate for another host name is refused", async () => {
    const w = await webEndpoint(["other.example"]);
    await ds.createFederationRelationship(
      { trustDomain: "td-b.test", bundleEndpointUrl: `https://127.0.0.1:${w.port}/`, profile: "https_web" },
      { initialBundle: { document: w.caB.bundleJson(1n), sequence: 1n } },
    );
    await expectRefusedKeepingHeld(w.p, /TLS: .*(altnames|Hostname|IP)/i);
  }, 30_000);

  it.skipIf(!haveOpenssl)("FED-19: a redirect to a host the certificate does not name is refused", async () => {
    const w = await webEndpoint(["127.0.0.1"]);
    await ds.createFederationRelationship({ trustDomain: "td-b.test", bundleEndpointUrl: `https://127.0.0.1:${w.port}/`, profile: "https_web" });
    expect(await w.p.refreshNow("td-b.test")).toMatchObject({ lastResult: "updated", sequence: "2" });
    w.serveNext((_req, res) => void res.writeHead(307, { location: `https://localhost:${w.port}/` }).end());
    await expectRefusedKeepingHeld(w.p, /TLS: .*localhost/i);
  }, 30_000);
});

describe("a relationship deleted while its bundle is being fetched", () => {
  it("FED-26: the fetched bundle is not stored, so the deleted relationship's bundle does not come back", async () => {
    const h = await hostileSpiffeEndpoint();
    h.serveNext((req, res) => {
      void ds.deleteFederationRelationship("td-b.test", "dissociate").then(() => {
        h.p.relationshipDeleted("td-b.test");
        json(bundleB(h.caB, 3n))(req, res);
      });
    });
    await h.p.refreshNow("td-b.test").catch(() => undefined);
    expect(await ds.getFederationRelationship("td-b.test")).toBeUndefined();
    expect(await ds.getBundle("td-b.test")).toBeUndefined();
  }, 30_000);
});
