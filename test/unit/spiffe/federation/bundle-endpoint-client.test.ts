import * as http from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import * as net from "node:net";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { serializeSpiffeBundle, type SpiffeBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { X509Bundle } from "../../../../spiffe/bundle/x509-bundle.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { fetchBundle, validateEndpointUrl, type EndpointProfile, type FetchBundleOptions } from "../../../../spiffe/federation/bundle-endpoint-client.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { decodePemCertificates, encodePemCertificates, encodePemPrivateKey } from "../../../../spiffe/pem.js";
import { craftCertificate, makeLeaf, makeRoot, type TestCa } from "../../../fixtures/x509/pki.js";
import { createServingPki, type ServingPki } from "../../../support/serving-cert.js";
import { requireTool } from "../../../support/tools.js";

const haveOpenssl = requireTool("openssl", ["version"], "https_web serving certificates");
const NOT_BEFORE = new Date(Date.now() - 3600_000);
const NOT_AFTER = new Date(Date.now() + 86400_000);
const TD_B = parseTrustDomain("b.test");
const ENDPOINT_ID = parseSpiffeId("spiffe://b.test/spire/server");

const caB = makeRoot("b.test", { notBefore: NOT_BEFORE, notAfter: NOT_AFTER });
const caC = makeRoot("c.test", { notBefore: NOT_BEFORE, notAfter: NOT_AFTER });
const bundleB = new X509Bundle(TD_B, [caB.rootDer]);

function bundleDoc(seq = 1n, extra: Partial<SpiffeBundle> = {}): string {
  return serializeSpiffeBundle({ trustDomain: TD_B, x509Authorities: [caB.rootDer], jwtAuthorities: new Map(), sequenceNumber: seq, refreshHintSeconds: 300, ...extra });
}

/** Key and certificate PEM of an SVID (or a crafted certificate) for a test server. */
function svidPem(ca: TestCa, id: string): { key: string; cert: string } {
  const leaf = makeLeaf(ca, id, { notBefore: NOT_BEFORE, notAfter: NOT_AFTER });
  return { key: encodePemPrivateKey(leaf.key.pkcs8), cert: encodePemCertificates(leaf.chain) };
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;
interface TestServer {
  readonly url: string;
  readonly requests: string[];
  readonly server: https.Server;
}
const servers: { close(cb: () => void): void; closeAllConnections?(): void }[] = [];
afterEach(async () => {
  await Promise.all(
    servers.splice(0).map(
      (s) =>
        new Promise<void>((r) => {
          s.closeAllConnections?.();
          s.close(() => r());
        }),
    ),
  );
});

async function serve(tlsOptions: https.ServerOptions, handler: Handler, host = "127.0.0.1"): Promise<TestServer> {
  const requests: string[] = [];
  const server = https.createServer(tlsOptions, (req, res) => {
    requests.push(req.url ?? "");
    handler(req, res);
  });
  server.on("tlsClientError", () => undefined);
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `https://${host}:${(server.address() as AddressInfo).port}`, requests, server };
}

const json = (body: string, status = 200): Handler => (_req, res) => {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(body);
};

const spiffeProfile = (bundle = bundleB, endpointSpiffeId = ENDPOINT_ID): EndpointProfile => ({ kind: "https_spiffe", endpointSpiffeId, bundle });
const fetchFrom = (url: string, profile: EndpointProfile, more: Partial<FetchBundleOptions> = {}) =>
  fetchBundle({ url, trustDomain: TD_B, profile, ...more });
const failure = (p: Promise<unknown>): Promise<Error & { code?: string }> => p.then(() => expect.fail("fetch should have failed"), (e: Error) => e);

describe.skipIf(!haveOpenssl)("fetchBundle, https_web", () => {
  let pki: ServingPki;
  let otherPki: ServingPki;
  beforeAll(() => {
    pki = createServingPki("bundle endpoint");
    otherPki = createServingPki("another CA");
  });

  it("FED-17: fetches from a server whose certificate chains to the trusted CA and names the host", async () => {
    const s = await serve({ key: pki.keyPem, cert: pki.certPem }, json(bundleDoc(7n)));
    const f = await fetchFrom(`${s.url}/bundle`, { kind: "https_web", trustedCas: pki.caPem });
    expect(f.bundle.trustDomain.name).toBe("b.test");
    expect(f.bundle.sequenceNumber).toBe(7n);
    expect(f.document).toBe(bundleDoc(7n));
    expect(f.finalUrl).toBe(`${s.url}/bundle`);
    expect(f.warnings).toEqual([]);
    // DER form of the same CA.
    const der = decodePemCertificates(pki.caPem);
    await expect(fetchFrom(`${s.url}/bundle`, { kind: "https_web", trustedCas: der })).resolves.toMatchObject({ finalUrl: `${s.url}/bundle` });
  });

  it("FED-17: refuses a certificate from an untrusted CA, and by default a private CA Node does not know", async () => {
    const s = await serve({ key: pki.keyPem, cert: pki.certPem }, json(bundleDoc()));
    const e = await failure(fetchFrom(`${s.url}/bundle`, { kind: "https_web", trustedCas: otherPki.caPem }));
    expect(isSigilError(e, "ERR_UNAVAILABLE")).toBe(true);
    expect(e.message).toMatch(new RegExp(`^bundle endpoint ${s.url}/bundle: TLS: `));
    await expect(fetchFrom(`${s.url}/bundle`, { kind: "https_web" })).rejects.toThrow(/TLS: /);
    expect(s.requests).toEqual([]);
  });

  it("FED-17: refuses a certificate that does not name the URL's host", async () => {
    const elsewhere = createServingPki("elsewhere", ["bundles.example.org"]);
    const s = await serve({ key: elsewhere.keyPem, cert: elsewhere.certPem }, json(bundleDoc()));
    const e = await failure(fetchFrom(`${s.url}/bundle`, { kind: "https_web", trustedCas: elsewhere.caPem }));
    expect(isSigilError(e, "ERR_UNAVAILABLE")).toBe(true);
    expect(e.message).toMatch(/TLS: .*(not in the cert's list|altnames)/i);
    expect(s.requests).toEqual([]);
  });

  it("FED-28: a https_web failure is not retried as https_spiffe", async () => {
    const svid = svidPem(caB, ENDPOINT_ID.toString());
    const s = await serve(svid, json(bundleDoc()));
    await expect(fetchFrom(`${s.url}/bundle`, { kind: "https_web", trustedCas: pki.caPem })).rejects.toThrow(/TLS/);
    expect(s.requests).toEqual([]);
  });
});

describe("fetchBundle, https_spiffe", () => {
  it("FED-22: fetches from a server presenting an X509-SVID with the configured ID", async () => {
    const s = await serve(svidPem(caB, ENDPOINT_ID.toString()), (_req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(bundleDoc(3n));
    });
    const f = await fetchFrom(`${s.url}/bundle`, spiffeProfile());
    expect(f.bundle.sequenceNumber).toBe(3n);
    expect(f.bundle.x509Authorities).toHaveLength(1);
    // The Content-Type is remarked on, not relied on.
    expect(f.warnings.join("\n")).toMatch(/Content-Type "text\/plain", expected application\/json/);
  });

  it("FED-22: refuses an endpoint presenting another SPIFFE ID, before sending the request", async () => {
    const s = await serve(svidPem(caB, "spiffe://b.test/other"), json(bundleDoc()));
    const e = await failure(fetchFrom(`${s.url}/bundle`, spiffeProfile()));
    expect(isSigilError(e, "ERR_UNAVAILABLE")).toBe(true);
    expect(e.message).toBe(`bundle endpoint ${s.url}/bundle: TLS: server presented spiffe://b.test/other, want spiffe://b.test/spire/server`);
    expect(s.requests).toEqual([]);
  });

  it("FED-22: refuses a certificate without a URI SAN", async () => {
    const crafted = craftCertificate(caB, { noSan: true, notBefore: NOT_BEFORE, notAfter: NOT_AFTER });
    const s = await serve({ key: encodePemPrivateKey(crafted.key.pkcs8), cert: encodePemCertificates([crafted.der]) }, json(bundleDoc()));
    const e = await failure(fetchFrom(`${s.url}/bundle`, spiffeProfile()));
    expect(e.message).toMatch(/TLS: x509svid: .*URI SAN/);
    expect(s.requests).toEqual([]);
  });

  it("FED-6: refuses a chain from another trust domain's root, even one claiming the endpoint's ID", async () => {
    const forged = craftCertificate(caC, { uris: [ENDPOINT_ID.toString()], notBefore: NOT_BEFORE, notAfter: NOT_AFTER });
    const s = await serve({ key: encodePemPrivateKey(forged.key.pkcs8), cert: encodePemCertificates([forged.der]) }, json(bundleDoc()));
    const e = await failure(fetchFrom(`${s.url}/bundle`, spiffeProfile()));
    expect(isSigilError(e, "ERR_UNAVAILABLE")).toBe(true);
    expect(e.message).toMatch(/TLS: x509svid: .*(unknown root|does not verify)/);
    const ownTd = await serve(svidPem(caC, "spiffe://c.test/spire/server"), json(bundleDoc()));
    await expect(fetchFrom(`${ownTd.url}/bundle`, spiffeProfile())).rejects.toThrow(/no X\.509 bundle for trust domain c\.test/);
    expect([...s.requests, ...ownTd.requests]).toEqual([]);
  });

  it("FED-16, FED-19: follows a redirect and checks the new server the same way", async () => {
    const target = await serve(svidPem(caB, ENDPOINT_ID.toString()), json(bundleDoc(9n)));
    const impostor = await serve(svidPem(caB, "spiffe://b.test/impostor"), json(bundleDoc(9n)));
    const origin = await serve(svidPem(caB, ENDPOINT_ID.toString()), (req, res) => {
      res.writeHead(req.url === "/to-impostor" ? 307 : 302, { location: req.url === "/to-impostor" ? `${impostor.url}/bundle` : `${target.url}/bundle` });
      res.end();
    });
    const f = await fetchFrom(`${origin.url}/start`, spiffeProfile());
    expect(f.finalUrl).toBe(`${target.url}/bundle`);
    expect(f.bundle.sequenceNumber).toBe(9n);
    const e = await failure(fetchFrom(`${origin.url}/to-impostor`, spiffeProfile()));
    expect(e.message).toMatch(/TLS: server presented spiffe:\/\/b\.test\/impostor/);
    expect(impostor.requests).toEqual([]);
  });

  it("FED-19: refuses a redirect to http, and more redirects than allowed", async () => {
    const s = await serve(svidPem(caB, ENDPOINT_ID.toString()), (req, res) => {
      res.writeHead(301, { location: req.url === "/plain" ? "http://127.0.0.1:1/bundle" : "/loop" });
      res.end();
    });
    const e = await failure(fetchFrom(`${s.url}/plain`, spiffeProfile()));
    expect(isSigilError(e, "ERR_UNAVAILABLE")).toBe(true);
    expect(e.message).toMatch(/redirect to "http:\/\/127\.0\.0\.1:1\/bundle" refused: .*must use https/);
    await expect(fetchFrom(`${s.url}/loop`, spiffeProfile(), { maxRedirects: 2 })).rejects.toThrow(/more than 2 redirects/);
    expect(s.requests).toEqual(["/plain", "/loop", "/loop", "/loop"]);
  });

  it("refuses a 10 MB body, declared or streamed, without reading it all", async () => {
    const big = Buffer.alloc(10 * 1024 * 1024, 0x20);
    const s = await serve(svidPem(caB, ENDPOINT_ID.toString()), (req, res) => {
      res.on("error", () => undefined);
      if (req.url === "/declared") res.writeHead(200, { "content-type": "application/json", "content-length": String(big.length) });
      else res.writeHead(200, { "content-type": "application/json" }); // chunked
      res.end(big);
    });
    const declared = await failure(fetchFrom(`${s.url}/declared`, spiffeProfile()));
    expect(isSigilError(declared, "ERR_BUNDLE_INVALID")).toBe(true);
    expect(declared.message).toMatch(/the body is 10485760 bytes, more than the 1048576 allowed/);
    const streamed = await failure(fetchFrom(`${s.url}/streamed`, spiffeProfile()));
    expect(isSigilError(streamed, "ERR_BUNDLE_INVALID")).toBe(true);
    expect(streamed.message).toMatch(/larger than the 1048576 bytes allowed/);
  });

  it.each([
    ["garbage JSON", "{not json", /bundle: /],
    ["no keys array", '{"spiffe_sequence":1}', /keys is missing/],
    ["not UTF-8", Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), /not UTF-8/],
  ])("refuses a body that is %s", async (_label, body, message) => {
    const s = await serve(svidPem(caB, ENDPOINT_ID.toString()), (_req, res) => res.end(body));
    const e = await failure(fetchFrom(`${s.url}/bundle`, spiffeProfile()));
    expect(isSigilError(e, "ERR_BUNDLE_INVALID")).toBe(true);
    expect(e.message).toMatch(new RegExp(`^bundle endpoint ${s.url}/bundle: `));
    expect(e.message).toMatch(message);
  });

  it("refuses a non-2xx status with the status in the message", async () => {
    const s = await serve(svidPem(caB, ENDPOINT_ID.toString()), json('{"keys":[]}', 404));
    const e = await failure(fetchFrom(`${s.url}/bundle`, spiffeProfile()));
    expect(isSigilError(e, "ERR_UNAVAILABLE")).toBe(true);
    expect(e.message).toBe(`bundle endpoint ${s.url}/bundle: HTTP status 404 Not Found`);
  });

  it("gives up after timeoutMs on a server that never answers, and when the caller aborts", async () => {
    const s = await serve(svidPem(caB, ENDPOINT_ID.toString()), () => undefined);
    const e = await failure(fetchFrom(`${s.url}/bundle`, spiffeProfile(), { timeoutMs: 300 }));
    expect(isSigilError(e, "ERR_UNAVAILABLE")).toBe(true);
    expect(e.message).toMatch(/timed out after 300 ms/);
    // A TCP listener that never speaks TLS.
    const held: net.Socket[] = [];
    const silent = net.createServer((c) => held.push(c));
    servers.push({ close: (cb) => silent.close(cb), closeAllConnections: () => held.forEach((c) => c.destroy()) });
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const controller = new AbortController();
    const pending = fetchFrom(`https://127.0.0.1:${(silent.address() as AddressInfo).port}/`, spiffeProfile(), { signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    await expect(pending).rejects.toThrow(/aborted/);
  });

  it("FED-9: the bundle is parsed for the configured trust domain, not the URL's host", async () => {
    const s = await serve(svidPem(caB, ENDPOINT_ID.toString()), json(bundleDoc()), "localhost");
    const f = await fetchFrom(`${s.url}/bundle`, spiffeProfile());
    expect(f.bundle.trustDomain.name).toBe("b.test");
  });
});

describe("options", () => {
  it.each([
    ["http://127.0.0.1/bundle", /must use https, not http/],
    ["https://user:pass@127.0.0.1/bundle", /must not contain userinfo/],
    ["https://127.0.0.1/bundle#frag", /must not contain a fragment/],
    ["https://127.0.0.1/bundle\r\nHost: evil", /must not contain whitespace or control characters/],
    [" https://127.0.0.1/bundle", /must not contain whitespace or control characters/],
    ["not a url", /is not a valid absolute URL/],
    ["", /non-empty string/],
  ])("FED-11: validateEndpointUrl refuses %j", (url, message) => {
    let err: unknown;
    try {
      validateEndpointUrl(url);
    } catch (e) {
      err = e;
    }
    expect(isSigilError(err, "ERR_INVALID_ARGUMENT")).toBe(true);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).not.toMatch(/pass/);
  });

  it("FED-9, FED-20: refuses options missing the trust domain or with a profile that does not fit", async () => {
    const url = "https://127.0.0.1:1/bundle";
    await expect(fetchBundle({ url, profile: spiffeProfile() } as unknown as FetchBundleOptions)).rejects.toThrow(/trustDomain must be a parsed TrustDomain/);
    await expect(fetchFrom(url, { kind: "https_spiffe", endpointSpiffeId: parseSpiffeId("spiffe://c.test/x"), bundle: bundleB })).rejects.toThrow(
      /profile.bundle is for b.test but profile.endpointSpiffeId spiffe:\/\/c.test\/x is in c.test/,
    );
    await expect(fetchFrom(url, { kind: "https_web", trustedCas: [] })).rejects.toThrow(/trustedCas is an empty list/);
    await expect(fetchFrom(url, { kind: "web" } as unknown as EndpointProfile)).rejects.toThrow(/profile.kind must be/);
    await expect(fetchFrom(url, spiffeProfile(), { maxBytes: 0 })).rejects.toThrow(/maxBytes must be an integer >= 1/);
  });
});
