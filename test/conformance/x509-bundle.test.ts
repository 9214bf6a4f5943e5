/**
 * X.509-SVID conformance, bundle part (spec/spiffe-requirements.md §1.2,
 * X509-22 … X509-27): how CA certificates are published in and read from a
 * SPIFFE bundle.
 */
import { createPublicKey, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { BundleSet } from "../../spiffe/bundle/bundle-set.js";
import { parseSpiffeBundle, serializeSpiffeBundle, toX509Bundle, type SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { isSigilError, type ErrorCode } from "../../spiffe/errors.js";
import { parseTrustDomain } from "../../spiffe/id.js";

const TD = parseTrustDomain("example.org");

function fixture(name: string): string {
  return readFileSync(new URL(`../fixtures/${name}`, import.meta.url), "utf8");
}

function firstCert(name: string, index = 0): Buffer {
  const doc = JSON.parse(fixture(name)) as { keys: { x5c?: string[] }[] };
  return Buffer.from(doc.keys[index]?.x5c?.[0] as string, "base64");
}

/** ca-a (EC P-256), ca-rsa (RSA-2048) from bundle-valid.json; ca-b (EC P-256) from bundle-x5c-two-certs.json. */
const CA_A = firstCert("bundle-valid.json", 0);
const CA_RSA = firstCert("bundle-valid.json", 1);
const CA_B = Buffer.from((JSON.parse(fixture("bundle-x5c-two-certs.json")) as { keys: { x5c: string[] }[] }).keys[0]?.x5c[1] as string, "base64");

type Jwk = Record<string, unknown> & { use: string; x5c?: string[] };

function emitted(bundle: SpiffeBundle): Jwk[] {
  return (JSON.parse(serializeSpiffeBundle(bundle)) as { keys: Jwk[] }).keys;
}

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

const derEq = (a: Uint8Array | undefined, b: Uint8Array): boolean => a !== undefined && Buffer.from(a).equals(b);

describe("X.509-SVID bundle conformance", () => {
  it("X509-22: each CA certificate is its own JWK with use x509-svid", () => {
    const keys = emitted({ trustDomain: TD, x509Authorities: [CA_A, CA_RSA, CA_B], jwtAuthorities: new Map() });
    expect(keys).toHaveLength(3);
    expect(keys.map((k) => k.use)).toEqual(["x509-svid", "x509-svid", "x509-svid"]);
    expect(keys.map((k) => Buffer.from(k.x5c?.[0] as string, "base64"))).toEqual([CA_A, CA_RSA, CA_B]);
  });

  it("X509-23: x509-svid JWKs carry no kid", () => {
    for (const k of emitted({ trustDomain: TD, x509Authorities: [CA_A, CA_RSA], jwtAuthorities: new Map() })) expect(k).not.toHaveProperty("kid");
    // Read side: a kid on an x509-svid entry is ignored with a warning; the certificate still counts.
    const { bundle, warnings } = parseSpiffeBundle(JSON.stringify({ keys: [{ use: "x509-svid", kty: "EC", kid: "k", x5c: [CA_A.toString("base64")] }] }), TD);
    expect(bundle.x509Authorities).toHaveLength(1);
    expect(bundle.jwtAuthorities.size).toBe(0);
    expect(warnings).toEqual(["bundle: keys[0] is an x509-svid entry with a kid; kid ignored"]);
  });

  it("X509-24: x5c holds exactly one standard-base64 DER certificate, and the key parameters match it", () => {
    for (const k of emitted({ trustDomain: TD, x509Authorities: [CA_A, CA_RSA], jwtAuthorities: new Map() })) {
      expect(k.x5c).toHaveLength(1);
      const b64 = k.x5c?.[0] as string;
      // Standard alphabet with padding, never base64url.
      expect(b64).toMatch(/^[A-Za-z0-9+/]+={0,2}$/);
      const der = Buffer.from(b64, "base64");
      expect(der.toString("base64")).toBe(b64);
      const cert = new X509Certificate(der);
      expect(cert.checkIssued(cert)).toBe(true);
      const { use: _use, x5c: _x5c, ...params } = k;
      const fromParams = createPublicKey({ key: params as Record<string, string>, format: "jwk" });
      expect(fromParams.export({ format: "der", type: "spki" })).toEqual(cert.publicKey.export({ format: "der", type: "spki" }));
    }
    // CA_A's DER has '+' and '/' in standard base64, so a base64url x5c really differs and is refused.
    const b64 = CA_A.toString("base64");
    expect(b64).toMatch(/[+/]/);
    rejects(() => parseSpiffeBundle(JSON.stringify({ keys: [{ use: "x509-svid", kty: "EC", x5c: [CA_A.toString("base64url")] }] }), TD), "ERR_BUNDLE_INVALID", /x5c\[0\] is not standard base64/);
    // Key parameters that do not match the certificate (pitfall A10).
    rejects(() => parseSpiffeBundle(fixture("bundle-x5c-key-mismatch.json"), TD), "ERR_BUNDLE_INVALID", /keys\[0\]: key parameters do not match the x5c\[0\] certificate's key/);
    rejects(() => parseSpiffeBundle(JSON.stringify({ keys: [{ use: "x509-svid", kty: "RSA", x5c: [b64] }] }), TD), "ERR_BUNDLE_INVALID", /kty "RSA" but its certificate holds an EC key/);
    rejects(() => parseSpiffeBundle(JSON.stringify({ keys: [{ use: "x509-svid", kty: "EC", x5c: ["AAAA"] }] }), TD), "ERR_BUNDLE_INVALID", /not a DER certificate/);
  });

  it("X509-25: entries with a missing or empty x5c are skipped; the bundle still loads", () => {
    const { bundle, warnings } = parseSpiffeBundle(fixture("bundle-x5c-missing-or-empty.json"), TD);
    expect(bundle.x509Authorities).toHaveLength(1);
    expect(derEq(bundle.x509Authorities[0], CA_A)).toBe(true);
    expect(warnings).toEqual(["bundle: keys[0] has no x5c; skipped", "bundle: keys[1] has an empty x5c; skipped"]);
  });

  it("X509-26: when x5c has several certificates, only the first is used", () => {
    const { bundle, warnings } = parseSpiffeBundle(fixture("bundle-x5c-two-certs.json"), TD);
    expect(bundle.x509Authorities).toHaveLength(1);
    expect(derEq(bundle.x509Authorities[0], CA_A)).toBe(true);
    expect(bundle.x509Authorities.some((d) => derEq(d, CA_B))).toBe(false);
    expect(warnings).toEqual(["bundle: keys[0].x5c has 2 certificates; only the first is used"]);
  });

  it("X509-27: the X.509 authorities are the union of all x509-svid entries; with none, the domain has no X.509 authorities", () => {
    const entry = (der: Buffer): object => ({ use: "x509-svid", kty: der === CA_RSA ? "RSA" : "EC", x5c: [der.toString("base64")] });
    const union = parseSpiffeBundle(JSON.stringify({ keys: [entry(CA_A), { use: "jwt-svid", kty: "EC", kid: "k", ...jwkOf(CA_B) }, entry(CA_RSA), entry(CA_B)] }), TD).bundle;
    const x509 = toX509Bundle(union);
    expect(x509.authorities.map((c) => c.subject)).toEqual(["O=Sigil test\nCN=ca-a", "O=Sigil test\nCN=ca-rsa", "O=Sigil test\nCN=ca-b"]);
    expect(x509.toDer()).toEqual(Buffer.concat([CA_A, CA_RSA, CA_B]));
    // Only jwt-svid keys: a validator finds no CA for the domain, so every X509-SVID of it fails.
    const jwtOnly = parseSpiffeBundle(JSON.stringify({ keys: [{ use: "jwt-svid", kty: "EC", kid: "k", ...jwkOf(CA_B) }] }), TD).bundle;
    const fromSet = new BundleSet([jwtOnly]).getX509BundleForTrustDomain(TD);
    expect(fromSet?.isEmpty()).toBe(true);
    expect(fromSet?.authorities).toEqual([]);
  });
});

function jwkOf(der: Buffer): Record<string, unknown> {
  const { kty: _kty, ...params } = new X509Certificate(der).publicKey.export({ format: "jwk" });
  return params;
}
