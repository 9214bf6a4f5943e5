/**
 * Trust Domain and Bundle conformance (spec/spiffe-requirements.md §1.4): one
 * test per requirement ID, against the bundle library, or where the rule is
 * about what consumes bundles, against the server's admin API (BUNDLE-1) and
 * the agent's sync loop (BUNDLE-16, BUNDLE-18). Fixtures under
 * test/fixtures/bundle-*.json hold real CA certificates made with openssl.
 */
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import { importJWK } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentCache } from "../../agent/cache/agent-cache.js";
import { parseAgentConfig } from "../../agent/config/load.js";
import type { ServerClient } from "../../agent/sync/server-client.js";
import { SyncLoop } from "../../agent/sync/sync-loop.js";
import { ManualClock } from "../../common/clock.js";
import { createUnaryClient, type UnaryClient } from "../../common/rpc/unary-client.js";
import { BundleAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { parseServerConfig } from "../../server/config/load.js";
import { startServer, type RunningServer } from "../../server/main.js";
import { parseBundleMap, serializeBundleMap } from "../../spiffe/bundle/bundle-map.js";
import { BundleSet } from "../../spiffe/bundle/bundle-set.js";
import { parseSpiffeBundle, serializeSpiffeBundle, type SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { isSigilError, type ErrorCode } from "../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../spiffe/id.js";
import { generateSigner } from "../../spiffe/signer.js";
import { signJwtSvid } from "../../spiffe/jwt/sign.js";
import { validateJwtSvid } from "../../spiffe/jwt/validate.js";
import { makeRoot } from "../fixtures/x509/pki.js";
import { testServerConfigYaml } from "../integration/support/server-process.js";

const TD = parseTrustDomain("example.org");
const NOW = new Date("2030-01-01T00:00:00Z");

function fixture(name: string): string {
  return readFileSync(new URL(`../fixtures/${name}`, import.meta.url), "utf8");
}

/** The CA certificates (DER) of bundle-valid.json: ca-a (EC P-256) and ca-rsa (RSA-2048). */
const VALID = JSON.parse(fixture("bundle-valid.json")) as { keys: { use: string; x5c?: string[]; kid?: string }[] };
const CA_A = Buffer.from(VALID.keys[0]?.x5c?.[0] as string, "base64");
const CA_RSA = Buffer.from(VALID.keys[1]?.x5c?.[0] as string, "base64");

function rejects(fn: () => unknown, code: ErrorCode, message?: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(isSigilError(caught), `expected a SigilError ${code}, got ${String(caught)}`).toBe(true);
  expect((caught as { code: string }).code).toBe(code);
  if (message) expect((caught as Error).message).toMatch(message);
}

function bundleWithKeys(extra: Record<string, unknown> = {}, keys: unknown[] = []): string {
  return JSON.stringify({ keys, ...extra });
}

function jwtToken(td: string, signer = generateSigner("ec-p256", "k")): string {
  return signJwtSvid({
    spiffeId: parseSpiffeId(`spiffe://${td}/w`),
    audience: ["a"],
    issuedAt: NOW,
    expiresAt: new Date(NOW.getTime() + 60_000),
    signer,
  });
}

describe("Trust Domain and Bundle conformance", () => {
  it("BUNDLE-2: bundles are kept per trust domain and never merged", () => {
    const a = generateSigner("ec-p256", "k");
    const b = generateSigner("ec-p256", "k");
    const set = new BundleSet([
      { trustDomain: parseTrustDomain("a.example"), x509Authorities: [CA_A], jwtAuthorities: new Map([["k", a.publicKey]]) },
      { trustDomain: parseTrustDomain("b.example"), x509Authorities: [CA_RSA], jwtAuthorities: new Map([["k", b.publicKey]]) },
    ]);
    expect(set.getX509BundleForTrustDomain(parseTrustDomain("a.example"))?.authorityDers.map((d) => Buffer.from(d).equals(CA_A))).toEqual([true]);
    expect(set.getX509BundleForTrustDomain(parseTrustDomain("c.example"))).toBeUndefined();
    // b.example is trusted, but its key does not vouch for an a.example subject.
    rejects(() => validateJwtSvid(jwtToken("a.example", b), set, { audience: "a", now: NOW }), "ERR_JWT_SIGNATURE_INVALID");
    expect(validateJwtSvid(jwtToken("a.example", a), set, { audience: "a", now: NOW }).spiffeId.toString()).toBe("spiffe://a.example/w");
    // Two bundles for one trust domain are refused, not merged.
    const dup = { trustDomain: parseTrustDomain("a.example"), x509Authorities: [CA_RSA], jwtAuthorities: new Map() };
    rejects(() => new BundleSet([...set, dup]), "ERR_BUNDLE_INVALID", /duplicate trust domain "a.example"/);
  });

  it("BUNDLE-3: rotation publishes a new bundle with keys added or removed, and sources switch to it", () => {
    const oldKey = generateSigner("ec-p256", "old");
    const newKey = generateSigner("ec-p256", "new");
    const v1: SpiffeBundle = { trustDomain: TD, x509Authorities: [CA_A], jwtAuthorities: new Map([["old", oldKey.publicKey]]), sequenceNumber: 1n };
    // Publish: add the new key, then later drop the old one; each publication goes through the wire format.
    const v2 = parseSpiffeBundle(serializeSpiffeBundle({ ...v1, x509Authorities: [CA_A, CA_RSA], jwtAuthorities: new Map([["old", oldKey.publicKey], ["new", newKey.publicKey]]), sequenceNumber: 2n }), TD).bundle;
    const v3 = parseSpiffeBundle(serializeSpiffeBundle({ ...v2, x509Authorities: [CA_RSA], jwtAuthorities: new Map([["new", newKey.publicKey]]), sequenceNumber: 3n }), TD).bundle;
    const s1 = new BundleSet([v1]);
    const s2 = s1.with(v2);
    const s3 = s2.with(v3);
    const tokenNew = jwtToken("example.org", newKey);
    const tokenOld = jwtToken("example.org", oldKey);
    rejects(() => validateJwtSvid(tokenNew, s1, { audience: "a", now: NOW }), "ERR_JWT_KEY_NOT_FOUND");
    expect(validateJwtSvid(tokenNew, s2, { audience: "a", now: NOW }).header.kid).toBe("new");
    expect(validateJwtSvid(tokenOld, s2, { audience: "a", now: NOW }).header.kid).toBe("old");
    rejects(() => validateJwtSvid(tokenOld, s3, { audience: "a", now: NOW }), "ERR_JWT_KEY_NOT_FOUND");
    expect(s2.getX509BundleForTrustDomain(TD)?.authorityDers).toHaveLength(2);
    expect(s3.getX509BundleForTrustDomain(TD)?.authorityDers.map((d) => Buffer.from(d).equals(CA_RSA))).toEqual([true]);
    expect([s1, s2, s3].map((s) => s.get(TD)?.sequenceNumber)).toEqual([1n, 2n, 3n]);
  });

  it("BUNDLE-4: a bundle is an RFC 7517 JWK Set that JWKS codecs read", async () => {
    const { bundle } = parseSpiffeBundle(fixture("bundle-valid.json"), TD);
    const text = serializeSpiffeBundle(bundle);
    const doc = JSON.parse(text) as { keys: Record<string, unknown>[] };
    expect(Array.isArray(doc.keys)).toBe(true);
    expect(doc.keys).toHaveLength(3);
    // jose, an independent JWK implementation, imports every key.
    for (const jwk of doc.keys) {
      const alg = jwk["kty"] === "RSA" ? "RS256" : "ES256";
      await expect(importJWK(jwk, alg)).resolves.toBeDefined();
    }
    const again = parseSpiffeBundle(text, TD).bundle;
    expect(serializeSpiffeBundle(again)).toBe(text);
  });

  it("BUNDLE-5: extra top-level members are allowed and not needed", () => {
    const keysOnly = parseSpiffeBundle(bundleWithKeys(), TD);
    expect(keysOnly.bundle.sequenceNumber).toBeUndefined();
    expect(keysOnly.bundle.refreshHintSeconds).toBeUndefined();
    const valid = JSON.parse(fixture("bundle-valid.json")) as Record<string, unknown>;
    const extra = parseSpiffeBundle(JSON.stringify({ ...valid, vendor_extension: { a: [1] }, spiffe_future: true }), TD);
    expect(extra.bundle.x509Authorities).toHaveLength(2);
    expect(extra.bundle.jwtAuthorities.size).toBe(1);
    expect(extra.warnings).toEqual([]);
  });

  it("BUNDLE-6: spiffe_sequence is a 64-bit unsigned integer, kept exact", () => {
    const { bundle } = parseSpiffeBundle(fixture("bundle-sequence-above-2-53.json"), TD);
    expect(bundle.sequenceNumber).toBe(18446744073709551615n);
    expect(serializeSpiffeBundle(bundle)).toMatch(/"spiffe_sequence":18446744073709551615}$/);
    // Just above 2^53, where JSON.parse would round to an even number.
    const seq = 9007199254740993n;
    expect(parseSpiffeBundle(bundleWithKeys().replace("}", `,"spiffe_sequence":${seq}}`), TD).bundle.sequenceNumber).toBe(seq);
    expect(serializeSpiffeBundle({ trustDomain: TD, x509Authorities: [], jwtAuthorities: new Map(), sequenceNumber: seq })).toContain(`"spiffe_sequence":${seq}`);
    for (const bad of ["18446744073709551616", "-1", "1.5", "1e3", '"7"', "null"]) {
      rejects(() => parseSpiffeBundle(`{"keys":[],"spiffe_sequence":${bad}}`, TD), "ERR_BUNDLE_INVALID", /spiffe_sequence/);
    }
    rejects(() => serializeSpiffeBundle({ trustDomain: TD, x509Authorities: [], jwtAuthorities: new Map(), sequenceNumber: 1n << 64n }), "ERR_BUNDLE_INVALID");
  });

  it("BUNDLE-7: spiffe_refresh_hint is an integer number of seconds", () => {
    expect(parseSpiffeBundle('{"keys":[],"spiffe_refresh_hint":300}', TD).bundle.refreshHintSeconds).toBe(300);
    for (const bad of ['"5m"', "300.5", "-1", "3e2", "true"]) {
      rejects(() => parseSpiffeBundle(`{"keys":[],"spiffe_refresh_hint":${bad}}`, TD), "ERR_BUNDLE_INVALID", /spiffe_refresh_hint/);
    }
    // The spec's other spelling, refresh_hint, is the same field.
    expect(parseSpiffeBundle('{"keys":[],"refresh_hint":60}', TD).bundle.refreshHintSeconds).toBe(60);
    const out = serializeSpiffeBundle({ trustDomain: TD, x509Authorities: [], jwtAuthorities: new Map(), refreshHintSeconds: 300 });
    expect(out).toContain('"spiffe_refresh_hint":300');
    rejects(() => serializeSpiffeBundle({ trustDomain: TD, x509Authorities: [], jwtAuthorities: new Map(), refreshHintSeconds: 300.5 }), "ERR_BUNDLE_INVALID", /refresh hint/);
  });

  it("BUNDLE-8: keys must be present and an array; it may be empty", () => {
    rejects(() => parseSpiffeBundle(fixture("bundle-keys-missing.json"), TD), "ERR_BUNDLE_INVALID", /^bundle: keys is missing$/);
    rejects(() => parseSpiffeBundle('{"keys":{}}', TD), "ERR_BUNDLE_INVALID", /keys is not an array/);
    rejects(() => parseSpiffeBundle('{"keys":null}', TD), "ERR_BUNDLE_INVALID", /keys is not an array/);
    rejects(() => parseSpiffeBundle("[]", TD), "ERR_BUNDLE_INVALID", /not a JSON object/);
    const empty = parseSpiffeBundle('{"keys":[]}', TD);
    expect(empty.bundle.x509Authorities).toEqual([]);
    expect(empty.bundle.jwtAuthorities.size).toBe(0);
  });

  it("BUNDLE-9: JWKs with unknown kty or unknown or missing use are ignored without failing", () => {
    const { bundle, warnings } = parseSpiffeBundle(fixture("bundle-unknown-use-and-kty.json"), TD);
    expect(bundle.x509Authorities.map((d) => Buffer.from(d).equals(CA_A))).toEqual([true]);
    expect([...bundle.jwtAuthorities.keys()]).toEqual(["jwt-key-1"]);
    expect(warnings).toEqual([
      'bundle: keys[0] has unsupported kty "OKP"; skipped',
      'bundle: keys[1] has unsupported use "foo"; skipped',
      "bundle: keys[2] has no use; skipped",
      'bundle: keys[3] has unsupported use "X509-SVID"; skipped',
      'bundle: keys[4] has unsupported use "JWT-SVID"; skipped',
      'bundle: keys[5] has unsupported use "wit-svid"; skipped',
    ]);
    // Also for a jwt-svid JWK on a curve Sigil does not support.
    const k = generateKeyPairSync("ec", { namedCurve: "secp256k1" }).publicKey.export({ format: "jwk" });
    const r = parseSpiffeBundle(JSON.stringify({ keys: [{ ...k, use: "jwt-svid", kid: "k1" }] }), TD);
    expect(r.bundle.jwtAuthorities.size).toBe(0);
    expect(r.warnings).toEqual(['bundle: keys[0]: curve "secp256k1" is not supported; skipped']);
  });

  it("BUNDLE-10: a bundle with no usable keys makes every SVID of the domain invalid", () => {
    const set = new BundleSet([parseSpiffeBundle('{"keys":[]}', TD).bundle]);
    expect(set.getX509BundleForTrustDomain(TD)?.isEmpty()).toBe(true);
    expect(set.getX509BundleForTrustDomain(TD)?.toDer()).toHaveLength(0);
    rejects(() => validateJwtSvid(jwtToken("example.org"), set, { audience: "a", now: NOW }), "ERR_JWT_KEY_NOT_FOUND", /has no keys/);
    // Keys that were all skipped leave the same result.
    const allSkipped = parseSpiffeBundle('{"keys":[{"use":"foo","kty":"EC"},{"kty":"RSA"}]}', TD);
    expect(allSkipped.bundle.x509Authorities).toHaveLength(0);
    expect(allSkipped.bundle.jwtAuthorities.size).toBe(0);
  });

  it("BUNDLE-11: emitted JWKs hold only kty, use, key parameters and x5c or kid", () => {
    const { bundle } = parseSpiffeBundle(fixture("bundle-valid.json"), TD);
    const doc = JSON.parse(serializeSpiffeBundle(bundle)) as Record<string, unknown> & { keys: Record<string, unknown>[] };
    expect(Object.keys(doc).sort()).toEqual(["keys", "spiffe_refresh_hint", "spiffe_sequence"]);
    const members = doc.keys.map((k) => Object.keys(k).sort().join(","));
    expect(members).toEqual(["crv,kty,use,x,x5c,y", "e,kty,n,use,x5c", "crv,kid,kty,use,x,y"]);
  });

  it("BUNDLE-12: every emitted JWK has kty EC or RSA; other key types are refused", () => {
    const { bundle } = parseSpiffeBundle(fixture("bundle-valid.json"), TD);
    const keys = (JSON.parse(serializeSpiffeBundle(bundle)) as { keys: { kty: string }[] }).keys;
    expect(keys.map((k) => k.kty)).toEqual(["EC", "RSA", "EC"]);
    const ed = generateKeyPairSync("ed25519").publicKey;
    rejects(() => serializeSpiffeBundle({ trustDomain: TD, x509Authorities: [], jwtAuthorities: new Map([["ed", ed]]) }), "ERR_KEY_UNSUPPORTED", /ed25519/);
  });

  it("BUNDLE-13: use is set on every JWK and compared case-sensitively", () => {
    const { bundle } = parseSpiffeBundle(fixture("bundle-valid.json"), TD);
    const keys = (JSON.parse(serializeSpiffeBundle(bundle)) as { keys: { use: string }[] }).keys;
    expect(keys.map((k) => k.use)).toEqual(["x509-svid", "x509-svid", "jwt-svid"]);
    const x5c = [CA_A.toString("base64")];
    const upper = parseSpiffeBundle(JSON.stringify({ keys: [{ use: "X509-SVID", kty: "EC", x5c }, { use: "x509-svid ", kty: "EC", x5c }] }), TD);
    expect(upper.bundle.x509Authorities).toHaveLength(0);
    expect(upper.warnings).toHaveLength(2);
    const exact = parseSpiffeBundle(JSON.stringify({ keys: [{ use: "x509-svid", kty: "EC", x5c }] }), TD);
    expect(exact.bundle.x509Authorities).toHaveLength(1);
  });

  it("BUNDLE-14: a bundle map has trust_domains keyed by trust-domain name, possibly empty", () => {
    expect(parseBundleMap('{"trust_domains":{}}').bundles.size).toBe(0);
    const { bundle } = parseSpiffeBundle(fixture("bundle-valid.json"), TD);
    const other = { trustDomain: parseTrustDomain("a.example"), x509Authorities: [CA_RSA], jwtAuthorities: new Map() };
    const text = serializeBundleMap([bundle, other]);
    expect(Object.keys((JSON.parse(text) as { trust_domains: object }).trust_domains)).toEqual(["a.example", "example.org"]);
    const back = parseBundleMap(text).bundles;
    expect(back.trustDomains().map((t) => t.name)).toEqual(["a.example", "example.org"]);
    expect(back.get(TD)?.jwtAuthorities.size).toBe(1);
    // A SPIFFE-ID key (the Workload API form) is the wrong form here (pitfall A11).
    rejects(() => parseBundleMap('{"trust_domains":{"spiffe://example.org":{"keys":[]}}}'), "ERR_BUNDLE_INVALID", /not a trust-domain name/);
    rejects(() => parseBundleMap('{"domains":{}}'), "ERR_BUNDLE_INVALID", /trust_domains is missing/);
    rejects(() => parseBundleMap('{"trust_domains":[]}'), "ERR_BUNDLE_INVALID", /trust_domains is not a JSON object/);
  });

  it("BUNDLE-15: a bundle map with a duplicate trust domain is rejected", () => {
    const text = fixture("bundle-duplicate-td.json");
    // JSON.parse would silently keep the second, empty bundle.
    expect(() => JSON.parse(text) as unknown).not.toThrow();
    rejects(() => parseBundleMap(text), "ERR_BUNDLE_INVALID", /^bundle: invalid JSON: duplicate trust domain "example.org" in trust_domains at line \d+, column 5/);
    const b = { trustDomain: TD, x509Authorities: [CA_A], jwtAuthorities: new Map() };
    rejects(() => serializeBundleMap([b, { ...b, x509Authorities: [] }]), "ERR_BUNDLE_INVALID", /duplicate trust domain "example.org"/);
  });

  it("BUNDLE-16: bundles inside a map carry no refresh hint, and a map consumer drops any it finds", () => {
    const withHint = { trustDomain: TD, x509Authorities: [CA_A], jwtAuthorities: new Map(), refreshHintSeconds: 1, sequenceNumber: 4n };
    const text = serializeBundleMap([withHint]);
    expect(text).not.toMatch(/refresh_hint/);
    expect(text).toContain('"spiffe_sequence":4');
    const consumed = parseBundleMap('{"trust_domains":{"example.org":{"keys":[],"spiffe_refresh_hint":1}}}').bundles.get(TD);
    expect(consumed?.refreshHintSeconds).toBeUndefined();
  });

  it("BUNDLE-17: a bundle map is applied as a complete snapshot or not at all", () => {
    const good = parseBundleMap(serializeBundleMap([{ trustDomain: TD, x509Authorities: [CA_A], jwtAuthorities: new Map() }])).bundles;
    let current = good;
    // The second domain's bundle is broken: nothing of the map is returned, the first domain included.
    const broken = '{"trust_domains":{"a.example":{"keys":[]},"b.example":{"keys":[{"use":"jwt-svid","kty":"EC"}]}}}';
    rejects(() => {
      current = parseBundleMap(broken).bundles;
    }, "ERR_BUNDLE_INVALID", /trust_domains\["b.example"\]\.keys\[0\] is a jwt-svid key without a kid/);
    expect(current).toBe(good);
    // A reader holding a snapshot keeps seeing it whole while a writer replaces the set.
    const reader = current;
    current = current.with({ trustDomain: TD, x509Authorities: [CA_RSA], jwtAuthorities: new Map() }).with({ trustDomain: parseTrustDomain("a.example"), x509Authorities: [], jwtAuthorities: new Map() });
    expect(reader.size).toBe(1);
    expect(Buffer.from(reader.get(TD)?.x509Authorities[0] as Uint8Array).equals(CA_A)).toBe(true);
    expect(current.size).toBe(2);
    // Snapshots cannot be edited in place.
    const parsed = parseSpiffeBundle(fixture("bundle-valid.json"), TD).bundle;
    expect(Object.isFrozen(parsed)).toBe(true);
    expect(() => (parsed.x509Authorities as Uint8Array[]).push(CA_RSA)).toThrow(TypeError);
  });

});

/**
 * Where Sigil consumes bundles: the server stores federated bundles an
 * operator gives it (admin API), and the agent takes its own and federated
 * bundles from the server on every sync. Sigil fetches no bundle endpoint
 * itself, so the agent's sync is the refresh schedule BUNDLE-16 and BUNDLE-18
 * are about.
 */
describe("Trust Domain and Bundle conformance: the server's federated bundles", () => {
  let dir = "";
  let server: RunningServer | undefined;
  let admin: UnaryClient<(typeof BundleAdmin)["method"]> | undefined;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "sigil-bundle-"));
    const config = parseServerConfig(testServerConfigYaml(dir, { keyManager: "memory", serverExtra: "  audit_log_enabled: false\n" }));
    server = await startServer(config, { logDestination: { write: () => undefined } });
    admin = createUnaryClient(BundleAdmin, `unix:${server.adminSocketPath}`, credentials.createInsecure());
  }, 60_000);

  afterAll(async () => {
    try {
      admin?.close();
      await server?.stop();
    } finally {
      if (dir !== "") rmSync(dir, { recursive: true, force: true });
    }
  });

  function setFederated(b: SpiffeBundle): Promise<unknown> {
    return (admin as NonNullable<typeof admin>).setFederatedBundle({ bundle: { trustDomain: b.trustDomain.name, spiffeBundleJson: serializeSpiffeBundle(b) } });
  }

  async function refusal(p: Promise<unknown>): Promise<ServiceError> {
    try {
      await p;
    } catch (e) {
      return e as ServiceError;
    }
    throw new Error("expected the bundle to be refused");
  }

  it("BUNDLE-1: a bundle holding a key that is already another trust domain's authority is refused; each domain keeps its own keys", async () => {
    const { bundles } = parseBundleMap(fixture("bundle-map-shared-ca-key.json"));
    const a = bundles.get(parseTrustDomain("a.example")) as SpiffeBundle;
    const b = bundles.get(parseTrustDomain("b.example")) as SpiffeBundle;
    // Two different certificates (different subjects and SANs) around one key.
    expect(Buffer.from(a.x509Authorities[0] as Uint8Array).equals(Buffer.from(b.x509Authorities[0] as Uint8Array))).toBe(false);
    await setFederated(a);
    const sameKey = await refusal(setFederated(b));
    expect(sameKey.code).toBe(status.INVALID_ARGUMENT);
    expect(sameKey.details).toMatch(/^bundle\.spiffe_bundle_json: holds an authority key \(SPKI SHA-256 [0-9a-f]{64}\) that is already an authority of a\.example; .*\(BUNDLE-1\)$/);

    // The server's own bundle under another name would let this server's CA speak for that domain.
    const own = (server as RunningServer).ca.bundle();
    const renamed = await refusal(setFederated({ ...own, trustDomain: parseTrustDomain("c.example") }));
    expect(renamed.details).toContain("already an authority of example.org");

    // A JWT authority counts as much as an X.509 one.
    const k = generateSigner("ec-p256");
    await setFederated({ trustDomain: parseTrustDomain("d.example"), x509Authorities: [], jwtAuthorities: new Map([["x", k.publicKey]]) });
    const jwtKey = await refusal(setFederated({ trustDomain: parseTrustDomain("e.example"), x509Authorities: [], jwtAuthorities: new Map([["y", k.publicKey]]) }));
    expect(jwtKey.details).toContain("already an authority of d.example");

    // A domain replacing its own bundle with the same key, and a domain with keys of its own, are accepted.
    await setFederated(a);
    await setFederated({ trustDomain: parseTrustDomain("f.example"), x509Authorities: [], jwtAuthorities: new Map([["z", generateSigner("ec-p256").publicKey]]) });
    const listed = await (admin as NonNullable<typeof admin>).listFederatedBundles({});
    expect(listed.bundles.map((x) => x.trustDomain).sort()).toEqual(["a.example", "d.example", "f.example"]);
  });
});

describe("Trust Domain and Bundle conformance: the agent's bundle refresh", () => {
  /** The agent's sync loop and real cache against a server whose SyncAuthorized answers `bundles()` and no entries. */
  function agentSyncing(bundles: () => SpiffeBundle[], intervalMs: number): { loop: SyncLoop; cache: AgentCache; syncs: () => number } {
    let syncs = 0;
    const unused = (): never => {
      throw new Error("not called: the server has no entries for this agent");
    };
    const client: ServerClient = {
      attest: unused,
      renew: unused,
      batchNewX509Svid: unused,
      newJwtSvid: unused,
      setIdentity: unused,
      // As the agent's gRPC client does: each bundle parsed from the document the server sent.
      sync: async () => ({ notModified: false, revision: `r${++syncs}`, entries: [], bundles: bundles().map((b) => parseSpiffeBundle(serializeSpiffeBundle(b), b.trustDomain).bundle) }),
      setTrustBundle: () => undefined,
      close: () => undefined,
    };
    const clock = new ManualClock(NOW);
    const cache = new AgentCache({ trustDomain: TD, clock, mintJwtSvid: unused });
    return { loop: new SyncLoop({ client, cache, clock, intervalMs }), cache, syncs: () => syncs };
  }

  /** The agent's sync interval when the operator sets none. */
  function defaultSyncIntervalMs(): number {
    const yaml = "agent:\n  trust_domain: example.org\n  insecure_bootstrap: true\nplugins:\n  NodeAttestor:\n    join_token:\n  WorkloadAttestor:\n    unix:\n";
    return parseAgentConfig(yaml).agent.sync_interval;
  }

  const PARTNER = parseTrustDomain("partner.example");
  const withHint = (b: SpiffeBundle, hint: number | undefined): SpiffeBundle => (hint === undefined ? b : { ...b, refreshHintSeconds: hint });

  it("BUNDLE-16: per-bundle refresh hints, tiny or huge, do not set when the agent refreshes its bundles", async () => {
    const interval = defaultSyncIntervalMs();
    for (const hint of [1, 86_400]) {
      let partnerCa: Uint8Array = CA_RSA;
      const { loop, cache, syncs } = agentSyncing(
        () => [
          withHint({ trustDomain: TD, x509Authorities: [CA_A], jwtAuthorities: new Map() }, hint),
          withHint({ trustDomain: PARTNER, x509Authorities: [partnerCa], jwtAuthorities: new Map() }, hint),
        ],
        interval,
      );
      expect((await loop.syncNow()).ok).toBe(true);
      // The hints reached the agent; its next round is still one sync interval away.
      expect([cache.bundles().own.refreshHintSeconds, cache.bundles().federated.get(PARTNER.name)?.refreshHintSeconds]).toEqual([hint, hint]);
      expect(loop.nextDelayMs, `hint ${hint}`).toBe(interval);
      // A day-long hint does not keep a changed bundle away: the next round brings it.
      const rotated = makeRoot(PARTNER.name).der;
      partnerCa = rotated;
      expect((await loop.syncNow()).ok).toBe(true);
      expect(syncs()).toBe(2);
      expect(cache.bundles().federated.get(PARTNER.name)?.x509Authorities.map((d) => Buffer.from(d).equals(rotated))).toEqual([true]);
      expect(loop.nextDelayMs, `hint ${hint}`).toBe(interval);
    }
  });

  it("BUNDLE-18: bundles without a refresh hint are refreshed every sync interval, by default well under five minutes", async () => {
    const interval = defaultSyncIntervalMs();
    expect(interval).toBeLessThanOrEqual(300_000);
    const { loop, cache } = agentSyncing(
      () => [
        { trustDomain: TD, x509Authorities: [CA_A], jwtAuthorities: new Map() },
        { trustDomain: PARTNER, x509Authorities: [CA_RSA], jwtAuthorities: new Map() },
      ],
      interval,
    );
    expect((await loop.syncNow()).ok).toBe(true);
    expect(cache.bundles().federated.get(PARTNER.name)?.refreshHintSeconds).toBeUndefined();
    expect(loop.nextDelayMs).toBe(interval);
  });
});

// Keep the certificate fixtures honest: they are CA certificates of the trust domain they serve.
describe("bundle fixtures", () => {
  it("hold self-signed CA certificates", () => {
    for (const der of [CA_A, CA_RSA]) {
      const cert = new X509Certificate(der);
      expect(cert.ca).toBe(true);
      expect(cert.checkIssued(cert)).toBe(true);
      expect(cert.subjectAltName).toBe("URI:spiffe://example.org");
    }
  });
});
