/**
 * JWT-SVID standard conformance (spec/spiffe-requirements.md §1.3): one test per
 * requirement ID, issuer and validator sides together.
 */
import { createHmac, generateKeyPairSync, sign as cryptoSign, constants, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import type { IncomingHttpHeaders } from "node:http2";
import { Metadata } from "@grpc/grpc-js";
import { beforeAll, describe, expect, it } from "vitest";
import { BundleSet } from "../../spiffe/bundle/bundle-set.js";
import type { JwtBundle, JwtBundleSource } from "../../spiffe/bundle/jwt-bundle.js";
import { parseSpiffeBundle, serializeSpiffeBundle, type SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { isSigilError, type ErrorCode } from "../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain, type TrustDomain } from "../../spiffe/id.js";
import { createKeyObjectSigner, generateSigner, type Signer } from "../../spiffe/signer.js";
import { JWT_SVID_ALGS, jwtAlgParams, type JwtAlg } from "../../spiffe/jwt/alg.js";
import { encodeJsonSegment } from "../../spiffe/jwt/compact.js";
import { signJwtSvid, type SignJwtSvidOptions } from "../../spiffe/jwt/sign.js";
import { validateJwtSvid, type ValidateJwtSvidOptions } from "../../spiffe/jwt/validate.js";

const NOW = new Date("2030-01-01T00:00:00Z");
const NOW_S = NOW.getTime() / 1000;
const TD = parseTrustDomain("example.org");
const OTHER_TD = parseTrustDomain("other.example");
const WEB = parseSpiffeId("spiffe://example.org/web");
const AUD = "spiffe://example.org/api";

let signer: Signer;
/** The signer's private key, kept so tests can craft headers the issuer would never emit. */
let signerKey: KeyObject;
let otherSigner: Signer;
let bundles: BundleSet;

function bundle(td: TrustDomain, keys: Iterable<[string, KeyObject]>): SpiffeBundle {
  return { trustDomain: td, x509Authorities: [], jwtAuthorities: new Map(keys) };
}

beforeAll(() => {
  signerKey = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey;
  signer = createKeyObjectSigner(signerKey, "kid-example");
  otherSigner = generateSigner("ec-p256", "kid-other");
  bundles = new BundleSet([bundle(TD, [[signer.id, signer.publicKey]]), bundle(OTHER_TD, [[otherSigner.id, otherSigner.publicKey]])]);
});

function issue(overrides: Partial<SignJwtSvidOptions> = {}): string {
  return signJwtSvid({
    spiffeId: WEB,
    audience: [AUD],
    issuedAt: NOW,
    expiresAt: new Date(NOW.getTime() + 300_000),
    signer,
    ...overrides,
  });
}

function validate(token: string, options: Partial<ValidateJwtSvidOptions> = {}, source: JwtBundleSource = bundles) {
  return validateJwtSvid(token, source, { audience: AUD, now: NOW, ...options });
}

/** Signs arbitrary header and claims with a raw key, bypassing every issuer check. */
function craft(header: object, claims: object, key: KeyObject, alg: JwtAlg = "ES256"): string {
  const input = `${encodeJsonSegment(header)}.${encodeJsonSegment(claims)}`;
  const p = jwtAlgParams(alg);
  const opts =
    p.family === "ecdsa"
      ? { key, dsaEncoding: "ieee-p1363" as const }
      : p.family === "rsa-pss"
        ? { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }
        : { key, padding: constants.RSA_PKCS1_PADDING };
  return `${input}.${cryptoSign(p.hash, Buffer.from(input), opts).toString("base64url")}`;
}

const goodClaims = (): Record<string, unknown> => ({ sub: WEB.toString(), aud: AUD, exp: NOW_S + 300 });

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

function decodeHeader(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split(".")[0] as string, "base64url").toString("utf8")) as Record<string, unknown>;
}

function decodePayload(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split(".")[1] as string, "base64url").toString("utf8")) as Record<string, unknown>;
}

describe("JWT-SVID conformance", () => {
  it("JWT-1: compact serialization only; the JWS JSON serialization is rejected", () => {
    const token = issue();
    const parts = token.split(".");
    expect(parts).toHaveLength(3);
    for (const p of parts) expect(p).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(validate(token).spiffeId.equals(WEB)).toBe(true);
    // The same, validly signed JWS in general and flattened JSON serialization (the latter with an unprotected header).
    const [protectedHeader, payload, signature] = parts as [string, string, string];
    const general = JSON.stringify({ payload, signatures: [{ protected: protectedHeader, signature }] });
    const flattened = JSON.stringify({ payload, protected: protectedHeader, header: { kid: signer.id }, signature });
    rejects(() => validate(general), "ERR_JWT_MALFORMED", /JSON serialization/);
    rejects(() => validate(flattened), "ERR_JWT_MALFORMED", /JSON serialization/);
  });

  it("JWT-2: the issued header holds exactly alg, kid and typ", () => {
    expect(Object.keys(decodeHeader(issue())).sort()).toEqual(["alg", "kid", "typ"]);
    expect(decodeHeader(issue())).toEqual({ alg: "ES256", kid: "kid-example", typ: "JWT" });
    const rsa = generateSigner("rsa-2048", "rsa-kid");
    expect(decodeHeader(issue({ signer: rsa }))).toEqual({ alg: "RS256", kid: "rsa-kid", typ: "JWT" });
    expect(decodeHeader(issue({ signer: rsa, alg: "PS256", typ: "JOSE" }))).toEqual({ alg: "PS256", kid: "rsa-kid", typ: "JOSE" });
    // extraClaims go into the payload, never the header.
    expect(Object.keys(decodeHeader(issue({ extraClaims: { iss: "x", kid: "y" } }))).sort()).toEqual(["alg", "kid", "typ"]);
  });

  it("JWT-3: a 5-part JWE is rejected", () => {
    const jwe = [encodeJsonSegment({ alg: "RSA-OAEP", enc: "A256GCM", kid: signer.id }), "a2V5", "aXY", "Y2lwaGVy", "dGFn"].join(".");
    rejects(() => validate(jwe), "ERR_JWT_MALFORMED", /JWE/);
  });

  it("JWT-4: only RS/ES/PS 256/384/512 are accepted; none, HS256 and EdDSA are rejected", () => {
    // Every allowed algorithm validates with a fitting key.
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const curves: Record<string, string> = { ES256: "prime256v1", ES384: "secp384r1", ES512: "secp521r1" };
    for (const alg of JWT_SVID_ALGS) {
      const pair = alg.startsWith("ES") ? generateKeyPairSync("ec", { namedCurve: curves[alg] as string }) : rsa;
      const source = new BundleSet([bundle(TD, [["k", pair.publicKey]])]);
      const token = craft({ alg, kid: "k", typ: "JWT" }, goodClaims(), pair.privateKey, alg);
      expect(validate(token, {}, source).header.alg, alg).toBe(alg);
    }
    // none with an empty signature.
    const none = `${encodeJsonSegment({ alg: "none", kid: signer.id })}.${encodeJsonSegment(goodClaims())}.`;
    rejects(() => validate(none), "ERR_JWT_ALG_NOT_ALLOWED", /"none"/);
    // HS256 keyed with the public key's PEM: the classic algorithm-confusion attack.
    const pem = signer.publicKey.export({ format: "pem", type: "spki" });
    const hsInput = `${encodeJsonSegment({ alg: "HS256", kid: signer.id, typ: "JWT" })}.${encodeJsonSegment(goodClaims())}`;
    const hs = `${hsInput}.${createHmac("sha256", pem).update(hsInput).digest("base64url")}`;
    rejects(() => validate(hs), "ERR_JWT_ALG_NOT_ALLOWED", /"HS256"/);
    // A genuine EdDSA signature from a key the bundle holds.
    const ed = generateKeyPairSync("ed25519");
    const edSource = new BundleSet([bundle(TD, [["ed", ed.publicKey]])]);
    const edInput = `${encodeJsonSegment({ alg: "EdDSA", kid: "ed", typ: "JWT" })}.${encodeJsonSegment(goodClaims())}`;
    const edToken = `${edInput}.${cryptoSign(null, Buffer.from(edInput), ed.privateKey).toString("base64url")}`;
    rejects(() => validate(edToken, {}, edSource), "ERR_JWT_ALG_NOT_ALLOWED", /"EdDSA"/);
    // The allow-list is case-sensitive and closed.
    for (const alg of ["es256", "ES256K", "RS1", "toString", ""]) {
      rejects(() => validate(craft({ alg, kid: signer.id }, goodClaims(), otherKey())), "ERR_JWT_ALG_NOT_ALLOWED");
    }
  });

  it("JWT-5: alg is checked before any other processing", () => {
    let lookedUp = false;
    const spy: JwtBundleSource = {
      getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined {
        lookedUp = true;
        return bundles.getJwtBundleForTrustDomain(td);
      },
    };
    // alg:none, no kid, a payload that is not even JSON, an empty signature: the alg error wins, nothing crashes.
    const token = `${encodeJsonSegment({ alg: "none" })}.${Buffer.from("not json").toString("base64url")}.`;
    rejects(() => validate(token, {}, spy), "ERR_JWT_ALG_NOT_ALLOWED");
    // The same with a bad typ and an unknown crit: still the alg error.
    const token2 = `${encodeJsonSegment({ alg: "HS256", typ: "at+jwt", crit: ["x"] })}.${encodeJsonSegment({})}.`;
    rejects(() => validate(token2, {}, spy), "ERR_JWT_ALG_NOT_ALLOWED");
    expect(lookedUp).toBe(false);
  });

  it("JWT-6: the issuer always sets kid, matching a jwt-svid JWK; tokens without kid are rejected", () => {
    const token = issue();
    expect(decodeHeader(token)["kid"]).toBe(signer.id);
    // The kid names a jwt-svid key in the published bundle, and validation through that bundle succeeds.
    const published = serializeSpiffeBundle(bundles.get(TD) as SpiffeBundle);
    const jwk = (JSON.parse(published) as { keys: { use: string; kid?: string }[] }).keys.find((k) => k.kid === signer.id);
    expect(jwk?.use).toBe("jwt-svid");
    const reparsed = new BundleSet([parseSpiffeBundle(published, TD).bundle]);
    expect(validate(token, {}, reparsed).header.kid).toBe(signer.id);
    rejects(() => validate(craft({ alg: "ES256", typ: "JWT" }, goodClaims(), otherKey())), "ERR_JWT_MALFORMED", /no kid/);
    rejects(() => validate(craft({ alg: "ES256", kid: "" }, goodClaims(), otherKey())), "ERR_JWT_MALFORMED", /kid/);
  });

  it("JWT-7: typ, when present, is JWT or JOSE", () => {
    const key = signerKey;
    for (const typ of ["JWT", "JOSE", undefined]) {
      const header = typ === undefined ? { alg: "ES256", kid: signer.id } : { alg: "ES256", kid: signer.id, typ };
      expect(validate(craft(header, goodClaims(), key)).header.typ).toBe(typ);
    }
    for (const typ of ["at+jwt", "jwt+jwe", "", 1]) {
      rejects(() => validate(craft({ alg: "ES256", kid: signer.id, typ }, goodClaims(), key)), "ERR_JWT_MALFORMED", /typ/);
    }
  });

  it("JWT-8: sub is the workload's SPIFFE ID; other subjects are rejected", () => {
    const deep = parseSpiffeId("spiffe://example.org/ns/prod/sa/Web_1");
    const token = issue({ spiffeId: deep });
    expect(decodePayload(token)["sub"]).toBe("spiffe://example.org/ns/prod/sa/Web_1");
    expect(validate(token).spiffeId.equals(deep)).toBe(true);
    const key = signerKey;
    for (const sub of ["https://example.org/web", "spiffe://example.org/a%2Fb", "spiffe://example.org", "web", 42]) {
      rejects(() => validate(craft({ alg: "ES256", kid: signer.id }, { ...goodClaims(), sub }, key)), "ERR_JWT_CLAIM_INVALID", /sub/);
    }
    rejects(() => validate(craft({ alg: "ES256", kid: signer.id }, { aud: AUD, exp: NOW_S + 60 }, key)), "ERR_JWT_CLAIM_INVALID", /no sub/);
    // The issuer refuses a trust-domain ID as subject.
    rejects(() => issue({ spiffeId: TD.id() }), "ERR_JWT_CLAIM_INVALID", /trust-domain ID/);
  });

  it("JWT-9: aud holds the requested audience values; an empty audience is refused", () => {
    expect(decodePayload(issue({ audience: ["a"] }))["aud"]).toBe("a");
    expect(decodePayload(issue({ audience: ["a", "b"] }))["aud"]).toEqual(["a", "b"]);
    expect(validate(issue({ audience: ["a", "b"] }), { audience: "b" }).audience).toEqual(["a", "b"]);
    rejects(() => issue({ audience: [] }), "ERR_JWT_CLAIM_INVALID", /audience/);
    rejects(() => issue({ audience: [""] }), "ERR_JWT_CLAIM_INVALID", /audience/);
  });

  it("JWT-10: no aud or a foreign aud is rejected; string and array forms are accepted; an empty expected list never skips the check", () => {
    const key = signerKey;
    const withAud = (aud: unknown): string => craft({ alg: "ES256", kid: signer.id }, { ...goodClaims(), aud }, key);
    const noAud = craft({ alg: "ES256", kid: signer.id }, { sub: WEB.toString(), exp: NOW_S + 60 }, key);
    rejects(() => validate(noAud, { audience: "x" }), "ERR_JWT_AUDIENCE_MISMATCH", /no aud/);
    expect(validate(withAud("x"), { audience: "x" }).audience).toEqual(["x"]);
    expect(validate(withAud(["y", "x"]), { audience: "x" }).audience).toEqual(["y", "x"]);
    expect(validate(withAud(["y", "x"]), { audience: ["z", "x"] }).audience).toEqual(["y", "x"]);
    rejects(() => validate(withAud(["y"]), { audience: "x" }), "ERR_JWT_AUDIENCE_MISMATCH");
    // A string aud is one audience, not a list of characters (py-spiffe #324).
    rejects(() => validate(withAud("xy"), { audience: "x" }), "ERR_JWT_AUDIENCE_MISMATCH");
    rejects(() => validate(withAud([]), { audience: "x" }), "ERR_JWT_AUDIENCE_MISMATCH");
    rejects(() => validate(withAud(7), { audience: "x" }), "ERR_JWT_CLAIM_INVALID");
    // Pitfall A5: an empty expected audience is an error, for tokens with and without aud alike.
    for (const token of [noAud, withAud("x")]) {
      rejects(() => validate(token, { audience: [] }), "ERR_INVALID_ARGUMENT", /audience/);
      rejects(() => validate(token, { audience: "" }), "ERR_INVALID_ARGUMENT", /audience/);
    }
  });

  it("JWT-11: the issuer warns when a token gets more than one audience", () => {
    const warnings: string[] = [];
    issue({ audience: ["a"], onWarning: (m) => warnings.push(m) });
    expect(warnings).toEqual([]);
    issue({ audience: ["a", "b"], onWarning: (m) => warnings.push(m) });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^jwtsvid: .*2 audiences; a single audience is strongly recommended/);
  });

  it("JWT-12: exp is always set; tokens without exp are rejected", () => {
    const token = issue({ expiresAt: new Date(NOW.getTime() + 90_500) });
    expect(decodePayload(token)["exp"]).toBe(NOW_S + 90);
    expect(validate(token).expiresAt).toEqual(new Date((NOW_S + 90) * 1000));
    const key = signerKey;
    rejects(() => validate(craft({ alg: "ES256", kid: signer.id }, { sub: WEB.toString(), aud: AUD }, key)), "ERR_JWT_CLAIM_INVALID", /no exp/);
    rejects(() => validate(craft({ alg: "ES256", kid: signer.id }, { ...goodClaims(), exp: "2031-01-01" }, key)), "ERR_JWT_CLAIM_INVALID", /exp/);
    // The issuer refuses an expiry that is not after issuance.
    rejects(() => issue({ expiresAt: NOW }), "ERR_JWT_CLAIM_INVALID", /not after/);
    rejects(() => issue({ expiresAt: new Date(NOW.getTime() - 1000) }), "ERR_JWT_CLAIM_INVALID", /not after/);
  });

  it("JWT-13: an expired token is rejected, with a small leeway", () => {
    const key = signerKey;
    const expiring = (exp: number): string => craft({ alg: "ES256", kid: signer.id }, { ...goodClaims(), exp }, key);
    rejects(() => validate(expiring(NOW_S - 300)), "ERR_JWT_EXPIRED", /expired at 2029-12-31T23:55:00/);
    expect(validate(expiring(NOW_S - 2)).spiffeId.equals(WEB)).toBe(true);
    rejects(() => validate(expiring(NOW_S - 2), { leewaySeconds: 0 }), "ERR_JWT_EXPIRED");
    rejects(() => validate(expiring(NOW_S), { leewaySeconds: 0 }), "ERR_JWT_EXPIRED");
    expect(validate(expiring(NOW_S + 1), { leewaySeconds: 0 }).spiffeId.equals(WEB)).toBe(true);
    // Same token, later clock.
    const token = issue();
    expect(validate(token, { now: new Date(NOW.getTime() + 299_000) }).spiffeId.equals(WEB)).toBe(true);
    rejects(() => validate(token, { now: new Date(NOW.getTime() + 400_000) }), "ERR_JWT_EXPIRED");
  });

  it("JWT-14: signatures are checked with the subject's own trust domain's keys", () => {
    const token = issue();
    const [h, p, s] = token.split(".") as [string, string, string];
    // Flip one payload byte (sub changes from /web to /wec).
    const payload = Buffer.from(p, "base64url");
    const i = payload.indexOf("/web");
    payload[i + 3] = "c".charCodeAt(0);
    rejects(() => validate(`${h}.${payload.toString("base64url")}.${s}`), "ERR_JWT_SIGNATURE_INVALID");
    // Flip one signature bit.
    const sig = Buffer.from(s, "base64url");
    sig[5] = (sig[5] as number) ^ 1;
    rejects(() => validate(`${h}.${p}.${sig.toString("base64url")}`), "ERR_JWT_SIGNATURE_INVALID");
    // A valid signature by other.example's key, for an example.org subject: other.example is trusted, but not for example.org.
    rejects(() => validate(issue({ signer: otherSigner })), "ERR_JWT_KEY_NOT_FOUND", /no key "kid-other" in the JWT bundle of "example.org"/);
    // Even when the foreign key reuses a kid the subject's domain also has.
    const impostor = generateSigner("ec-p256", signer.id);
    const collide = new BundleSet([bundle(TD, [[signer.id, signer.publicKey]]), bundle(OTHER_TD, [[signer.id, impostor.publicKey]])]);
    rejects(() => validate(issue({ signer: impostor }), {}, collide), "ERR_JWT_SIGNATURE_INVALID");
    // A subject whose trust domain has no bundle at all.
    rejects(() => validate(issue({ spiffeId: parseSpiffeId("spiffe://stranger.example/x") })), "ERR_BUNDLE_NOT_FOUND", /"stranger.example"/);
    // A key of the wrong type for the alg (RS256 header, EC key in the bundle).
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
    rejects(() => validate(craft({ alg: "RS256", kid: signer.id }, goodClaims(), rsa.privateKey, "RS256")), "ERR_JWT_ALG_NOT_ALLOWED", /cannot verify RS256/);
  });

  it("JWT-15: other claims are allowed, ignored by checks and returned", () => {
    const extraClaims = { iss: "https://oidc.example.org", jti: "abc", nested: { a: [1, 2] } };
    const svid = validate(issue({ extraClaims }));
    expect(svid.claims).toMatchObject({ sub: WEB.toString(), aud: AUD, exp: NOW_S + 300, iat: NOW_S, ...extraClaims });
    // Claims the spec constrains cannot be smuggled in through extraClaims.
    for (const name of ["sub", "aud", "exp", "iat"]) rejects(() => issue({ extraClaims: { [name]: 1 } }), "ERR_JWT_CLAIM_INVALID", new RegExp(name));
  });

  it("JWT-16: validators need not track jti: one short-lived token validates repeatedly", () => {
    const token = issue({ extraClaims: { jti: "once" } });
    expect(validate(token).claims["jti"]).toBe("once");
    expect(validate(token).claims["jti"]).toBe("once");
    // Short lifetimes are what bounds replay: the same token is refused once expired.
    rejects(() => validate(token, { now: new Date(NOW.getTime() + 331_000) }), "ERR_JWT_EXPIRED");
  });

  // JWT-17 and JWT-18 are about the client that presents a JWT-SVID. Sigil ships none: the agent authenticates
  // to the server with its X509-SVID, and a workload sends the token FetchJWTSVID gave it in its own requests.
  // What Sigil owes that workload is a token that goes into the header or metadata as it is, and that the
  // receiver validates once it takes it back out: the issuer's signJwtSvid and the validator the agent's
  // ValidateJWTSVID runs, through the HTTP and gRPC libraries' own header handling.
  it("JWT-17: an issued token goes verbatim into an HTTP Authorization: Bearer header and validates when taken back out", () => {
    for (const alg of ["ec-p256", "rsa-2048"] as const) {
      const s = alg === "ec-p256" ? signer : generateSigner(alg, "kid-rsa");
      const token = issue({ signer: s, extraClaims: { iss: "https://oidc.example.org", note: "a b\nc" } });
      const headers = new Headers({ Authorization: `Bearer ${token}` });
      // HTTP/2 carries header names in lowercase.
      expect([...headers.keys()]).toEqual(["authorization"]);
      const value = headers.get("authorization") ?? "";
      // RFC 6750 §2.1: b64token, no quoting or escaping needed.
      const m = /^Bearer ([A-Za-z0-9\-._~+/]+=*)$/.exec(value);
      expect(m?.[1]).toBe(token);
      const source = new BundleSet([bundle(TD, [[s.id, s.publicKey]])]);
      expect(validate(m?.[1] ?? "", {}, source).spiffeId.equals(WEB)).toBe(true);
    }
  });

  it("JWT-18: an issued token goes verbatim into gRPC authorization metadata and validates when taken back out", () => {
    const token = issue({ extraClaims: { note: "a b\nc" } });
    const metadata = new Metadata();
    // grpc-js refuses a value with characters gRPC cannot carry as ASCII metadata.
    metadata.set("authorization", `Bearer ${token}`);
    const wire = metadata.toHttp2Headers();
    expect(Object.keys(wire)).toEqual(["authorization"]);
    const received = Metadata.fromHttp2Headers(wire as IncomingHttpHeaders).get("authorization");
    expect(received).toEqual([`Bearer ${token}`]);
    expect(validate(String(received[0]).slice("Bearer ".length)).spiffeId.equals(WEB)).toBe(true);
  });

  it("JWT-19: each JWT key in a SPIFFE bundle is its own JWK with use jwt-svid and a unique, non-empty kid", () => {
    const k2 = generateSigner("rsa-2048", "kid-2");
    const b = bundle(TD, [[signer.id, signer.publicKey], [k2.id, k2.publicKey]]);
    const keys = (JSON.parse(serializeSpiffeBundle(b)) as { keys: { use: string; kid: string }[] }).keys;
    expect(keys.map((k) => [k.use, k.kid])).toEqual([["jwt-svid", "kid-example"], ["jwt-svid", "kid-2"]]);
    rejects(() => serializeSpiffeBundle(bundle(TD, [["", signer.publicKey]])), "ERR_BUNDLE_INVALID", /empty kid/);
    rejects(() => parseSpiffeBundle(readFileSync(new URL("../fixtures/bundle-jwt-key-without-kid.json", import.meta.url), "utf8"), TD), "ERR_BUNDLE_INVALID", /^bundle: keys\[1\] is a jwt-svid key without a kid$/);
    // Consumers refuse a bundle that repeats a kid rather than picking one key.
    const twice = JSON.stringify({ keys: [keys[0], { ...keys[1], kid: "kid-example" }] });
    rejects(() => parseSpiffeBundle(twice, TD), "ERR_BUNDLE_INVALID", /repeats kid "kid-example"/);
  });

  it("JWT-20: only jwt-svid entries are JWT authorities; without any, the domain supports no JWT-SVIDs", () => {
    const jwk = { kty: "EC", kid: signer.id, ...(signer.publicKey.export({ format: "jwk" }) as object) };
    // The key is there, but labelled x509-svid (and without a certificate): it is not a JWT authority.
    const onlyX509 = JSON.stringify({ keys: [{ ...jwk, use: "x509-svid" }] });
    const parsed = parseSpiffeBundle(onlyX509, TD).bundle;
    expect(parsed.jwtAuthorities.size).toBe(0);
    rejects(() => validate(issue(), {}, new BundleSet([parsed])), "ERR_JWT_KEY_NOT_FOUND", /does not support JWT-SVIDs/);
    const asJwt = parseSpiffeBundle(JSON.stringify({ keys: [{ ...jwk, use: "jwt-svid" }] }), TD).bundle;
    expect(validate(issue(), {}, new BundleSet([asJwt])).spiffeId.equals(WEB)).toBe(true);
  });

  // JWT-21 asks operators to keep JWT-SVIDs on confidential links; the checklist makes it a documentation item
  // only, since no code can tell how a workload forwards its token. So this reads the operator document, and
  // checks the section that carries the advice rather than words anywhere in it.
  it("JWT-21: docs/security.md tells operators JWT-SVIDs are bearer tokens for confidential links only", () => {
    const doc = readFileSync(new URL("../../docs/security.md", import.meta.url), "utf8");
    const section = /^## JWT-SVIDs \(JWT-21\)\n([\s\S]*?)(?=^## |(?![\s\S]))/m.exec(doc)?.[1] ?? "";
    // Prose is reflowed freely: words may be split by any whitespace.
    expect(section).toMatch(/\*\*bearer\s+token\*\*/);
    expect(section).toMatch(/only\s+over\s+confidential\s+links/);
    expect(section).toMatch(/\bTLS\b/);
    expect(section).toMatch(/Unix\s+domain\s+socket/);
    expect(section).toMatch(/never\s+over\s+plain\s+HTTP/);
  });
});

let spareKey: KeyObject | undefined;
/** Some EC private key unrelated to the bundles. */
function otherKey(): KeyObject {
  spareKey ??= generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey;
  return spareKey;
}
