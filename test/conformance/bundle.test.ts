/**
 * Trust Domain and Bundle conformance (spec/spiffe-requirements.md §1.4): one
 * test per requirement ID that applies to the bundle library. Fixtures under
 * test/fixtures/bundle-*.json hold real CA certificates made with openssl.
 */
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { importJWK } from "jose";
import { describe, expect, it } from "vitest";
import { parseBundleMap, serializeBundleMap } from "../../spiffe/bundle/bundle-map.js";
import { BundleSet } from "../../spiffe/bundle/bundle-set.js";
import { DEFAULT_BUNDLE_REFRESH_SECONDS, bundleRefreshSeconds } from "../../spiffe/bundle/refresh.js";
import { findSharedAuthorityKeys } from "../../spiffe/bundle/shared-authorities.js";
import { parseSpiffeBundle, serializeSpiffeBundle, type SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { isSigilError, type ErrorCode } from "../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../spiffe/id.js";
import { generateSigner } from "../../spiffe/signer.js";
import { signJwtSvid } from "../../spiffe/jwt/sign.js";
import { validateJwtSvid } from "../../spiffe/jwt/validate.js";

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
  it("BUNDLE-1: a key used as an authority by two trust domains is found", () => {
    const { bundles } = parseBundleMap(fixture("bundle-map-shared-ca-key.json"));
    // Two different certificates (different subjects and SANs) around one key.
    const [a, b] = [...bundles].map((x) => x.x509Authorities[0] as Uint8Array);
    expect(Buffer.from(a as Uint8Array).equals(Buffer.from(b as Uint8Array))).toBe(false);
    const shared = findSharedAuthorityKeys(bundles);
    expect(shared).toHaveLength(1);
    expect(shared[0]?.trustDomains).toEqual(["a.example", "b.example"]);
    expect(shared[0]?.spkiSha256).toMatch(/^[0-9a-f]{64}$/);
    // A JWT key reused across domains counts too; distinct keys are not reported.
    const k = generateSigner("ec-p256");
    const jwtShared: SpiffeBundle[] = [
      { trustDomain: parseTrustDomain("a.example"), x509Authorities: [CA_A], jwtAuthorities: new Map([["x", k.publicKey]]) },
      { trustDomain: parseTrustDomain("b.example"), x509Authorities: [CA_RSA], jwtAuthorities: new Map([["y", k.publicKey]]) },
    ];
    expect(findSharedAuthorityKeys(jwtShared).map((s) => s.trustDomains)).toEqual([["a.example", "b.example"]]);
    expect(findSharedAuthorityKeys(parseBundleMap(fixture("bundle-duplicate-td.json").replace('"example.org": { "keys": [] }', '"third.example": { "keys": [] }')).bundles)).toEqual([]);
  });

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

  it("BUNDLE-16: bundles inside a map carry no refresh hint, and per-bundle hints do not set the map's schedule", () => {
    const withHint = { trustDomain: TD, x509Authorities: [CA_A], jwtAuthorities: new Map(), refreshHintSeconds: 1, sequenceNumber: 4n };
    const text = serializeBundleMap([withHint]);
    expect(text).not.toMatch(/refresh_hint/);
    expect(text).toContain('"spiffe_sequence":4');
    const consumed = parseBundleMap('{"trust_domains":{"example.org":{"keys":[],"spiffe_refresh_hint":1}}}').bundles.get(TD);
    expect(consumed?.refreshHintSeconds).toBeUndefined();
    expect(bundleRefreshSeconds(consumed?.refreshHintSeconds)).toBe(DEFAULT_BUNDLE_REFRESH_SECONDS);
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

  it("BUNDLE-18: without a refresh hint the refresh interval defaults to five minutes", () => {
    expect(DEFAULT_BUNDLE_REFRESH_SECONDS).toBe(300);
    const noHint = parseSpiffeBundle('{"keys":[]}', TD).bundle;
    expect(bundleRefreshSeconds(noHint.refreshHintSeconds)).toBe(300);
    expect(bundleRefreshSeconds(parseSpiffeBundle('{"keys":[],"spiffe_refresh_hint":60}', TD).bundle.refreshHintSeconds)).toBe(60);
    // Hints are bounded: neither a polling storm nor a day-long blind spot for new keys.
    expect(bundleRefreshSeconds(0)).toBe(10);
    expect(bundleRefreshSeconds(86_400)).toBe(3600);
    expect(bundleRefreshSeconds(undefined, { defaultSeconds: 120 })).toBe(120);
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
