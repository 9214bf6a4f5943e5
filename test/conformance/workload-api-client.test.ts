/**
 * Workload API conformance of Sigil's client, X509Source and JwtSource
 * (SPIFFE Workload API spec; checklist §1.6 WAPI-*, pitfall A18), against the
 * in-process fake.
 */
import { status } from "@grpc/grpc-js";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { SpiffeWorkloadAPI } from "../../proto/gen/spiffe/workload_pb.js";
import { JwtBundle } from "../../spiffe/bundle/jwt-bundle.js";
import { X509Bundle } from "../../spiffe/bundle/x509-bundle.js";
import { isSigilError, type SigilError } from "../../spiffe/errors.js";
import { grpcServiceDefinition } from "../../spiffe/grpc/service.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import { validateJwtSvid } from "../../spiffe/jwt/validate.js";
import { createWorkloadApiClient, type WatchErrorInfo, type WorkloadApiClient } from "../../spiffe/workloadapi/client.js";
import { isWorkloadApiError } from "../../spiffe/workloadapi/errors.js";
import type { JwtBundles } from "../../spiffe/workloadapi/jwt-context.js";
import { parseX509BundlesResponse, parseX509SvidResponse, X509Bundles, type X509Context } from "../../spiffe/workloadapi/x509-context.js";
import { JwtSource } from "../../spiffe/workloadapi/jwt-source.js";
import { X509Source } from "../../spiffe/workloadapi/x509-source.js";
import { verifyX509Svid } from "../../spiffe/x509/verify.js";
import {
  AsyncQueue,
  concatCaDers,
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
import { craftCertificate, makeLeaf, makeRoot, NOW } from "../fixtures/x509/pki.js";
import { requireTool } from "../support/tools.js";

const TD_A = "a.test";
const TD_B = "b.test";
const TD_C = "c.test";
const WEB = `spiffe://${TD_A}/web`;
const DB = `spiffe://${TD_A}/db`;
const CACHE = `spiffe://${TD_A}/cache`;
const FAST = { initialDelayMs: 1, maxDelayMs: 5, multiplier: 2 };

// Test SVIDs are made with the OpenSSL CLI.
const haveOpenssl = requireTool("openssl", ["version"], "test certificates");

let caA: TestCa;
let caA2: TestCa;
let caB: TestCa;
let caC: TestCa;
let intermediateA: TestCa;
let web: TestX509Svid;
let db: TestX509Svid;
let cache: TestX509Svid;
let webViaIntermediate: TestX509Svid;
let jwtA: TestJwtAuthority;
let jwtB: TestJwtAuthority;
let fake: FakeWorkloadApi;
let client: WorkloadApiClient;
const closers: Array<{ close(): void }> = [];

beforeAll(async () => {
  if (!haveOpenssl) return;
  caA = createTestCa(TD_A);
  caA2 = createTestCa(TD_A);
  caB = createTestCa(TD_B);
  caC = createTestCa(TD_C);
  intermediateA = createTestCa(TD_A, caA);
  web = issueTestX509Svid(caA, WEB);
  db = issueTestX509Svid(caA, DB);
  cache = issueTestX509Svid(caA, CACHE);
  webViaIntermediate = issueTestX509Svid(intermediateA, WEB);
  jwtA = await createTestJwtAuthority(TD_A);
  jwtB = await createTestJwtAuthority(TD_B);
});

beforeEach(async () => {
  if (!haveOpenssl) return;
  fake = await FakeWorkloadApi.start();
  client = createWorkloadApiClient({ address: fake.address, backoff: FAST });
});

afterEach(async () => {
  if (!haveOpenssl) return;
  for (const c of closers.splice(0)) c.close();
  client.close();
  await fake.close();
});

function td(name: string) {
  return parseTrustDomain(name);
}

interface WatchError {
  readonly error: SigilError;
  readonly info: WatchErrorInfo;
}

function watchX509() {
  const updates = new AsyncQueue<X509Context>();
  const errors = new AsyncQueue<WatchError>();
  const watcher = client.watchX509Context(
    (u) => updates.push(u),
    (error, info) => errors.push({ error, info }),
  );
  closers.push(watcher);
  return { updates, errors, watcher };
}

async function x509Source(): Promise<X509Source> {
  const source = await X509Source.create({ client, signal: AbortSignal.timeout(10_000) });
  closers.push(source);
  return source;
}

/** Resolves with the next `update` event of a source. */
function nextUpdate(source: X509Source): Promise<X509Context>;
function nextUpdate(source: JwtSource): Promise<JwtBundles>;
function nextUpdate(source: X509Source | JwtSource): Promise<unknown> {
  return new Promise<unknown>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no update within 10 s")), 10_000);
    const listener = (v: unknown): void => {
      clearTimeout(timer);
      off();
      resolve(v);
    };
    const off = source instanceof X509Source ? source.on("update", listener) : source.on("update", listener);
  });
}

/** Resolves with the next `error` event of a source. */
function nextError(source: X509Source): Promise<SigilError> {
  return new Promise<SigilError>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no error within 10 s")), 10_000);
    const off = source.on("error", (e) => {
      clearTimeout(timer);
      off();
      resolve(e);
    });
  });
}

describe.skipIf(!haveOpenssl)("Workload API (client side)", () => {
  it("WAPI-2: methods are called on /SpiffeWorkloadAPI/<Rpc>, with no package", async () => {
    const def = grpcServiceDefinition(SpiffeWorkloadAPI);
    expect(Object.values(def).map((m) => [m.path, m.responseStream])).toEqual([
      ["/SpiffeWorkloadAPI/FetchX509SVID", true],
      ["/SpiffeWorkloadAPI/FetchX509Bundles", true],
      ["/SpiffeWorkloadAPI/FetchJWTSVID", false],
      ["/SpiffeWorkloadAPI/FetchJWTBundles", true],
      ["/SpiffeWorkloadAPI/ValidateJWTSVID", false],
      ["/SpiffeWorkloadAPI/FetchWITSVID", true],
      ["/SpiffeWorkloadAPI/FetchWITBundles", true],
    ]);
    for (const m of Object.values(def)) expect(m.requestStream).toBe(false);
    fake.x509Svid.push(x509SvidResponse({ svids: [x509SvidEntry(web, caA)] }));
    await client.fetchX509Context();
    expect(fake.calls.map((c) => c.path)).toEqual(["/SpiffeWorkloadAPI/FetchX509SVID"]);
  });

  it("WAPI-4: when a working stream ends, the client reconnects at once (no backoff)", async () => {
    // A backoff longer than the test timeout: only an immediate reconnect can pass.
    client.close();
    client = createWorkloadApiClient({ address: fake.address, backoff: { initialDelayMs: 600_000, maxDelayMs: 600_000 } });
    fake.x509Svid.push(x509SvidResponse({ svids: [x509SvidEntry(web, caA)] }));
    const { updates } = watchX509();
    expect((await updates.next()).defaultSvid.id.toString()).toBe(WEB);

    fake.x509Svid.endAll(); // normal end of stream
    await fake.x509Svid.waitForOpened(2);
    expect((await updates.next()).defaultSvid.id.toString()).toBe(WEB);

    fake.x509Svid.endAll({ code: status.UNAVAILABLE, details: "agent restarting" });
    await fake.x509Svid.waitForOpened(3);
    fake.x509Svid.push(x509SvidResponse({ svids: [x509SvidEntry(db, caA)] }));
    // The reconnected stream gets the initial message and then the push.
    const ids = [(await updates.next()).defaultSvid.id.toString(), (await updates.next()).defaultSvid.id.toString()];
    expect(ids).toEqual([WEB, DB]);
  });

  it("WAPI-9: an empty federated_bundles means the client drops the federated bundles it held", async () => {
    fake.x509Svid.push(
      x509SvidResponse({ svids: [x509SvidEntry(web, caA)], federatedBundles: { [`spiffe://${TD_B}`]: caB.der } }),
    );
    const source = await x509Source();
    expect(source.getX509BundleForTrustDomain(td(TD_B))?.authorityDers).toEqual([caB.der]);

    const updated = nextUpdate(source);
    fake.x509Svid.push(x509SvidResponse({ svids: [x509SvidEntry(web, caA)], federatedBundles: {} }));
    const ctx = await updated;
    expect([...ctx.bundles.keys()]).toEqual([TD_A]);
    expect(source.getX509BundleForTrustDomain(td(TD_B))).toBeUndefined();
    expect(source.getX509BundleForTrustDomain(td(TD_A))).toBeDefined();
  });

  it("WAPI-10: a trust domain missing from the next message is unloaded; the others stay", async () => {
    fake.x509Svid.push(
      x509SvidResponse({
        svids: [x509SvidEntry(web, caA)],
        federatedBundles: { [`spiffe://${TD_B}`]: caB.der, [`spiffe://${TD_C}`]: caC.der },
      }),
    );
    const source = await x509Source();
    expect(source.getX509BundleForTrustDomain(td(TD_C))).toBeDefined();
    const updated = nextUpdate(source);
    fake.x509Svid.push(
      x509SvidResponse({ svids: [x509SvidEntry(web, caA)], federatedBundles: { [`spiffe://${TD_B}`]: caB.der } }),
    );
    await updated;
    expect(source.getX509BundleForTrustDomain(td(TD_B))).toBeDefined();
    expect(source.getX509BundleForTrustDomain(td(TD_C))).toBeUndefined();
  });

  describe("WAPI-12: a message with a mandatory field empty is reported and discarded", () => {
    const cases: Array<[string, () => Parameters<typeof x509SvidResponse>[0], RegExp]> = [
      ["svids", () => ({ svids: [] }), /svids is empty/],
      ["spiffe_id", () => ({ svids: [{ ...x509SvidEntry(db, caA), spiffeId: "" }] }), /svids\[0\]\.spiffe_id is empty/],
      ["x509_svid", () => ({ svids: [{ ...x509SvidEntry(db, caA), x509Svid: new Uint8Array() }] }), /x509_svid is empty/],
      [
        "x509_svid_key",
        () => ({ svids: [x509SvidEntry(web, caA), { ...x509SvidEntry(db, caA), x509SvidKey: new Uint8Array() }] }),
        /svids\[1\]\.x509_svid_key is empty/,
      ],
      ["bundle", () => ({ svids: [{ ...x509SvidEntry(db, caA), bundle: new Uint8Array() }] }), /bundle is empty/],
    ];
    it.each(cases)("empty %s: error reported, previous state kept, stream continues", async (_field, init, why) => {
      fake.x509Svid.push(x509SvidResponse({ svids: [x509SvidEntry(web, caA)] }));
      const source = await x509Source();
      const errored = nextError(source);
      fake.x509Svid.push(x509SvidResponse(init()));
      const err = await errored;
      expect(isSigilError(err, "ERR_WORKLOAD_API_RESPONSE_INVALID")).toBe(true);
      expect(err.message).toMatch(/^workloadapi: invalid X509SVIDResponse: /);
      expect(err.message).toMatch(why);
      expect(source.getX509Svid().id.toString()).toBe(WEB);
      // The stream is still live: a later valid message is applied.
      const updated = nextUpdate(source);
      fake.x509Svid.push(x509SvidResponse({ svids: [x509SvidEntry(db, caA)] }));
      await updated;
      expect(source.getX509Svid().id.toString()).toBe(DB);
    });

    it("a JWT-SVID response with an empty svid is rejected", async () => {
      fake.onFetchJwtSvid = () => jwtSvidResponse({ svids: [{ spiffeId: WEB, svid: "" }] });
      await expect(client.fetchJwtSvid({ audience: "x" })).rejects.toThrow(/JWTSVIDResponse: svids\[0\]\.svid is empty/);
    });

    it("a malformed bundle map key is rejected, not guessed", () => {
      expect(() =>
        parseX509SvidResponse(
          x509SvidResponse({ svids: [x509SvidEntry(web, caA)], federatedBundles: { [TD_B]: caB.der } }),
        ),
      ).toThrow(/federated_bundles key "b.test" is not a trust-domain ID/);
    });
  });

  it("WAPI-14: X.509 bundles never serve JWT validation; JWT keys come only from FetchJWTBundles", async () => {
    fake.x509Svid.push(
      x509SvidResponse({ svids: [x509SvidEntry(web, caA)], federatedBundles: { [`spiffe://${TD_C}`]: caC.der } }),
    );
    fake.jwtBundles.push(jwtBundlesResponse({ bundles: { [`spiffe://${TD_A}`]: jwtA.jwksBytes } }));
    const x509 = await x509Source();
    const jwt = await JwtSource.create({ client });
    closers.push(jwt);
    expect("getJwtBundleForTrustDomain" in x509).toBe(false);
    expect(x509.getX509BundleForTrustDomain(td(TD_C))).toBeInstanceOf(X509Bundle);
    // td C has an X.509 bundle but no JWT bundle: JWT validation must not trust it.
    expect(jwt.getJwtBundleForTrustDomain(td(TD_C))).toBeUndefined();
    const bundleA = jwt.getJwtBundleForTrustDomain(td(TD_A));
    expect(bundleA).toBeInstanceOf(JwtBundle);
    expect(bundleA?.findAuthority(jwtA.kid)).toBeDefined();
  });

  it("WAPI-21: of SVIDs sharing a non-empty hint the first is used; empty hints are never duplicates", async () => {
    fake.x509Svid.push(
      x509SvidResponse({
        svids: [
          x509SvidEntry(web, caA, "internal"),
          x509SvidEntry(db, caA, "internal"),
          x509SvidEntry(cache, caA, ""),
          x509SvidEntry(db, caA, ""),
        ],
      }),
    );
    const source = await x509Source();
    expect(source.getX509Svids().map((s) => [s.id.toString(), s.hint])).toEqual([
      [WEB, "internal"],
      [CACHE, ""],
      [DB, ""],
    ]);
    expect(source.getX509Svid("internal").id.toString()).toBe(WEB);
    expect(() => source.getX509Svid("external")).toThrow(/no X509-SVID with hint "external"/);
  });

  it("WAPI-23: a redacted SVID is dropped, and PermissionDenied drops them all until re-issued", async () => {
    fake.x509Svid.push(x509SvidResponse({ svids: [x509SvidEntry(web, caA), x509SvidEntry(db, caA, "db")] }));
    const source = await x509Source();
    expect(source.getX509Svids()).toHaveLength(2);

    let updated = nextUpdate(source);
    fake.x509Svid.push(x509SvidResponse({ svids: [x509SvidEntry(web, caA)] }));
    await updated;
    expect(source.getX509Svids().map((s) => s.id.toString())).toEqual([WEB]);
    expect(() => source.getX509Svid("db")).toThrow(/hint "db"/);

    const errored = nextError(source);
    fake.x509Svid.clear();
    fake.x509Svid.endAll({ code: status.PERMISSION_DENIED, details: "no identity issued" });
    expect(isWorkloadApiError(await errored, status.PERMISSION_DENIED)).toBe(true);
    expect(() => source.getX509Svid()).toThrow(/holds no X509-SVID/);
    expect(source.getX509Svids()).toEqual([]);
    // Bundles still verify peers.
    expect(source.getX509BundleForTrustDomain(td(TD_A))).toBeDefined();

    updated = nextUpdate(source);
    fake.x509Svid.push(x509SvidResponse({ svids: [x509SvidEntry(db, caA)] }));
    await updated;
    expect(source.getX509Svid().id.toString()).toBe(DB);
  });

  it("WAPI-32: a JwtSource stops using a trust domain's JWT bundle once a message omits it, and recovers after PermissionDenied", async () => {
    fake.jwtBundles.push(jwtBundlesResponse({ bundles: { [`spiffe://${TD_A}`]: jwtA.jwksBytes, [`spiffe://${TD_B}`]: jwtB.jwksBytes } }));
    const jwt = await JwtSource.create({ client });
    closers.push(jwt);
    const tokenB = await signTestJwtSvid(jwtB, `spiffe://${TD_B}/web`, "api");
    expect(validateJwtSvid(tokenB, jwt, { audience: "api" }).spiffeId.toString()).toBe(`spiffe://${TD_B}/web`);

    // Redacted: td B is missing from the next message, so its keys no longer validate anything.
    let updated = nextUpdate(jwt);
    fake.jwtBundles.push(jwtBundlesResponse({ bundles: { [`spiffe://${TD_A}`]: jwtA.jwksBytes } }));
    expect([...(await updated).bundles.keys()]).toEqual([TD_A]);
    expect(jwt.getJwtBundleForTrustDomain(td(TD_B))).toBeUndefined();
    expect(jwt.getJwtBundleForTrustDomain(td(TD_A))?.findAuthority(jwtA.kid)).toBeDefined();
    expect(() => validateJwtSvid(tokenB, jwt, { audience: "api" })).toThrow(/no JWT bundle for trust domain "b.test"/);

    // Not entitled: PermissionDenied is reported and the source retries; the next bundles are applied.
    const errored = new Promise<{ error: SigilError; info: WatchErrorInfo }>((resolve) => {
      const off = jwt.on("error", (error, info) => {
        off();
        resolve({ error, info });
      });
    });
    fake.jwtBundles.clear();
    fake.jwtBundles.endAll({ code: status.PERMISSION_DENIED, details: "no identity issued" });
    const { error, info } = await errored;
    expect(isWorkloadApiError(error, status.PERMISSION_DENIED)).toBe(true);
    expect(info.terminal).toBe(false);
    updated = nextUpdate(jwt);
    fake.jwtBundles.push(jwtBundlesResponse({ bundles: { [`spiffe://${TD_B}`]: jwtB.jwksBytes } }));
    expect([...(await updated).bundles.keys()]).toEqual([TD_B]);
    expect(jwt.getJwtBundleForTrustDomain(td(TD_A))).toBeUndefined();
    expect(validateJwtSvid(tokenB, jwt, { audience: "api" }).spiffeId.toString()).toBe(`spiffe://${TD_B}/web`);
  });

  it("WAPI-36: the client validates JWT-SVIDs through ValidateJWTSVID", async () => {
    const token = await signTestJwtSvid(jwtA, WEB, "api");
    const seen: Array<{ audience: string; svid: string }> = [];
    fake.onValidateJwtSvid = (req) => {
      seen.push({ audience: req.audience, svid: req.svid });
      if (req.audience !== "api") return { code: status.INVALID_ARGUMENT, details: "audience mismatch" };
      return validateJwtSvidResponse({ spiffeId: WEB, claims: { sub: WEB, aud: ["api"], exp: 1 } });
    };
    const ok = await client.validateJwtSvid(token, "api");
    expect(ok.id.toString()).toBe(WEB);
    expect(ok.claims).toEqual({ sub: WEB, aud: ["api"], exp: 1 });
    expect(seen).toEqual([{ audience: "api", svid: token }]);

    const bad = await client.validateJwtSvid(token, "other").catch((e: unknown) => e);
    expect(isWorkloadApiError(bad, status.INVALID_ARGUMENT)).toBe(true);
    await expect(client.validateJwtSvid(token, "")).rejects.toThrow(/audience must be specified/);
    expect(seen).toHaveLength(2);
  });

  it("WAPI-37: local validation uses the JWT bundle of the token's own trust domain; none means untrusted", async () => {
    fake.jwtBundles.push(jwtBundlesResponse({ bundles: { [`spiffe://${TD_A}`]: jwtA.jwksBytes } }));
    const jwt = await JwtSource.create({ client });
    closers.push(jwt);
    const tokenA = await signTestJwtSvid(jwtA, WEB, "api");
    const tokenB = await signTestJwtSvid(jwtB, `spiffe://${TD_B}/web`, "api");
    // A td-B token signed by td-A's key: td-A's bundle must not vouch for it.
    const forged = await signTestJwtSvid({ ...jwtA, trustDomain: TD_B }, `spiffe://${TD_B}/web`, "api");

    expect(validateJwtSvid(tokenA, jwt, { audience: "api" }).spiffeId.toString()).toBe(WEB);
    expect(() => validateJwtSvid(tokenB, jwt, { audience: "api" })).toThrow(/no JWT bundle for trust domain "b.test"/);
    expect(() => validateJwtSvid(forged, jwt, { audience: "api" })).toThrow(/no JWT bundle for trust domain "b.test"/);

    // Once td B's bundle arrives it is used, and only for td B.
    const updated = nextUpdate(jwt);
    fake.jwtBundles.push(
      jwtBundlesResponse({ bundles: { [`spiffe://${TD_A}`]: jwtA.jwksBytes, [`spiffe://${TD_B}`]: jwtB.jwksBytes } }),
    );
    await updated;
    expect(validateJwtSvid(tokenB, jwt, { audience: "api" }).spiffeId.toString()).toBe(`spiffe://${TD_B}/web`);
    expect(() => validateJwtSvid(forged, jwt, { audience: "api" })).toThrow(/no key "a.test-key-1" in the JWT bundle of "b.test"/);
  });

  it("WAPI-39: the first SVID is the default, and order is kept", async () => {
    fake.x509Svid.push(
      x509SvidResponse({ svids: [x509SvidEntry(db, caA), x509SvidEntry(web, caA), x509SvidEntry(cache, caA)] }),
    );
    const source = await x509Source();
    expect(source.getX509Svid().id.toString()).toBe(DB);
    expect(source.getX509Svids().map((s) => s.id.toString())).toEqual([DB, WEB, CACHE]);

    const [t1, t2] = [await signTestJwtSvid(jwtA, CACHE, "x"), await signTestJwtSvid(jwtA, WEB, "x")];
    fake.onFetchJwtSvid = () => jwtSvidResponse({ svids: [{ spiffeId: CACHE, svid: t1 }, { spiffeId: WEB, svid: t2 }] });
    const first = await client.fetchJwtSvid({ audience: "x" });
    expect(first.spiffeId.toString()).toBe(CACHE);
    expect(first.token).toBe(t1);
    expect((await client.fetchJwtSvids({ audience: "x" })).map((s) => s.spiffeId.toString())).toEqual([CACHE, WEB]);
  });

  it("A18: x509_svid and bundle are concatenated DER, split into certificates (leaf first)", async () => {
    fake.x509Svid.push(
      x509SvidResponse({
        svids: [{ ...x509SvidEntry(webViaIntermediate, caA), bundle: concatCaDers([caA, caA2]) }],
      }),
    );
    const ctx = await client.fetchX509Context();
    const svid = ctx.defaultSvid;
    expect(svid.certificates).toHaveLength(2);
    expect(new Uint8Array(svid.leaf.raw)).toEqual(webViaIntermediate.leafDer);
    expect(new Uint8Array(svid.certificates[1]?.raw ?? [])).toEqual(intermediateA.der);
    expect(svid.leaf.checkPrivateKey(svid.privateKey)).toBe(true);
    expect(ctx.getX509BundleForTrustDomain(td(TD_A))?.authorityDers).toEqual([caA.der, caA2.der]);
  });

  it("A18: a PEM bundle is not accepted where DER is required", async () => {
    const pem = new TextEncoder().encode(caA.certPem);
    fake.x509Svid.push(x509SvidResponse({ svids: [{ ...x509SvidEntry(web, caA), bundle: pem }] }));
    const err = await client.fetchX509Context().catch((e: unknown) => e);
    expect(isSigilError(err, "ERR_WORKLOAD_API_RESPONSE_INVALID")).toBe(true);
    expect((err as Error).message).toMatch(/svids\[0\]\.bundle/);
  });
});

// Built with Sigil's own X.509 builders (spiffe/x509), so these need no external tool.
describe("Workload API validator (client side)", () => {
  it("WAPI-13: a peer is authenticated with its own trust domain's bundle only; a td-b leaf signed by td-a's CA is rejected", () => {
    const tdA = makeRoot("td-a");
    const tdB = makeRoot("td-b");
    const self = makeLeaf(tdA, "spiffe://td-a/self");
    // td-a's CA signs a leaf naming a td-b identity (Sigil's leaf builder refuses to, so it is crafted).
    const impostor = craftCertificate(tdA, { uris: ["spiffe://td-b/x"] });
    const genuine = makeLeaf(tdB, "spiffe://td-b/x");
    const svid = { spiffeId: "spiffe://td-a/self", x509Svid: self.der, x509SvidKey: self.key.pkcs8, bundle: tdA.der };

    // What FetchX509SVID gives a workload of td-a with no federation: td-a's bundle only.
    const onlyA = parseX509SvidResponse(x509SvidResponse({ svids: [svid] }));
    expect(() => verifyX509Svid([impostor.der], onlyA, { now: NOW })).toThrow(/no X.509 bundle for trust domain td-b: spiffe:\/\/td-b\/x is not trusted/);
    expect(() => verifyX509Svid(genuine.chain, onlyA, { now: NOW })).toThrow(/no X.509 bundle for trust domain td-b/);
    expect(verifyX509Svid(self.chain, onlyA, { now: NOW }).id.toString()).toBe("spiffe://td-a/self");
    // The impostor's chain does verify against td-a's root: only the choice of bundle rejects it.
    const misfiled = new X509Bundles(new Map([["td-b", new X509Bundle(td("td-b"), [tdA.der])]]));
    expect(verifyX509Svid([impostor.der], misfiled, { now: NOW }).id.toString()).toBe("spiffe://td-b/x");

    // Federated with td-b (its real root): td-b peers are checked against td-b's bundle alone.
    const withB = parseX509SvidResponse(x509SvidResponse({ svids: [svid], federatedBundles: { "spiffe://td-b": tdB.der } }));
    expect(() => verifyX509Svid([impostor.der], withB, { now: NOW })).toThrow(/unknown root/);
    expect(verifyX509Svid(genuine.chain, withB, { now: NOW }).id.toString()).toBe("spiffe://td-b/x");

    // The same holds for the bundles of FetchX509Bundles.
    const bundles = parseX509BundlesResponse(x509BundlesResponse({ bundles: { "spiffe://td-a": tdA.der, "spiffe://td-b": tdB.der } }));
    expect(() => verifyX509Svid([impostor.der], bundles, { now: NOW })).toThrow(/unknown root/);
    expect(verifyX509Svid(genuine.chain, bundles, { now: NOW }).id.toString()).toBe("spiffe://td-b/x");
  });
});
