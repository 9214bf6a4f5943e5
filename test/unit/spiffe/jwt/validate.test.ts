/**
 * JWT-SVID validation beyond the conformance list: malformed segments, crit,
 * nbf, caller mistakes, weak keys, DER signatures, and the insecure parser.
 */
import { constants, generateKeyPairSync, sign as cryptoSign, type KeyObject } from "node:crypto";
import { describe, expect, it } from "vitest";
import { BundleSet } from "../../../../spiffe/bundle/bundle-set.js";
import { isSigilError, type ErrorCode } from "../../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { createKeyObjectSigner } from "../../../../spiffe/signer.js";
import { encodeJsonSegment } from "../../../../spiffe/jwt/compact.js";
import { parseJwtSvidInsecure } from "../../../../spiffe/jwt/parse-insecure.js";
import { signJwtSvid } from "../../../../spiffe/jwt/sign.js";
import { validateJwtSvid } from "../../../../spiffe/jwt/validate.js";

const TD = parseTrustDomain("example.org");
const NOW = new Date("2030-01-01T00:00:00Z");
const NOW_S = NOW.getTime() / 1000;
const key = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey;
const signer = createKeyObjectSigner(key, "k");
const set = new BundleSet([{ trustDomain: TD, x509Authorities: [], jwtAuthorities: new Map([["k", signer.publicKey]]) }]);
const claims = { sub: "spiffe://example.org/w", aud: "a", exp: NOW_S + 60 };

function craft(header: object, payload: object, k: KeyObject = key, opts: { hash?: string; der?: boolean; pss?: boolean; pssSalt?: number } = {}): string {
  const input = `${encodeJsonSegment(header)}.${encodeJsonSegment(payload)}`;
  const signOpts = k.asymmetricKeyType === "rsa"
    ? opts.pss
      ? { key: k, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: opts.pssSalt ?? constants.RSA_PSS_SALTLEN_DIGEST }
      : { key: k, padding: constants.RSA_PKCS1_PADDING }
    : { key: k, dsaEncoding: opts.der ? ("der" as const) : ("ieee-p1363" as const) };
  return `${input}.${cryptoSign(opts.hash ?? "sha256", Buffer.from(input), signOpts).toString("base64url")}`;
}

function code(fn: () => unknown): ErrorCode | string {
  try {
    fn();
  } catch (e) {
    return isSigilError(e) ? e.code : `not a SigilError: ${String(e)}`;
  }
  return "no error";
}

const validate = (token: string, extra = {}) => validateJwtSvid(token, set, { audience: "a", now: NOW, ...extra });

describe("validateJwtSvid edge cases", () => {
  it("rejects malformed compact tokens as ERR_JWT_MALFORMED", () => {
    const good = craft({ alg: "ES256", kid: "k" }, claims);
    const [h, p, s] = good.split(".") as [string, string, string];
    for (const bad of ["", "a.b", "a.b.c.d", `${h}.${p}.${s}=`, `${h}=.${p}.${s}`, `${h}.${p}+.${s}`, `.${p}.${s}`, `${h}..${s}`, `${encodeJsonSegment([1])}.${p}.${s}`, `${Buffer.from("{").toString("base64url")}.${p}.${s}`]) {
      expect(code(() => validate(bad)), bad).toBe("ERR_JWT_MALFORMED");
    }
    expect(code(() => validate(`${h}.${encodeJsonSegment("str")}.${s}`))).toBe("ERR_JWT_MALFORMED");
    expect(code(() => validate(42 as unknown as string))).toBe("ERR_JWT_MALFORMED");
  });

  it("rejects any crit header, since Sigil implements no JWS extensions", () => {
    expect(code(() => validate(craft({ alg: "ES256", kid: "k", crit: ["exp"], exp: 1 }, claims)))).toBe("ERR_JWT_MALFORMED");
    expect(code(() => validate(craft({ alg: "ES256", kid: "k", crit: [] }, claims)))).toBe("ERR_JWT_MALFORMED");
    // Unknown non-critical headers are tolerated (pitfall A13) and returned.
    expect(validate(craft({ alg: "ES256", kid: "k", x_vendor: 1 }, claims)).header["x_vendor"]).toBe(1);
  });

  it("honours nbf with the leeway", () => {
    expect(code(() => validate(craft({ alg: "ES256", kid: "k" }, { ...claims, nbf: NOW_S + 120 })))).toBe("ERR_JWT_CLAIM_INVALID");
    expect(validate(craft({ alg: "ES256", kid: "k" }, { ...claims, nbf: NOW_S + 10 })).spiffeId.toString()).toBe("spiffe://example.org/w");
    expect(code(() => validate(craft({ alg: "ES256", kid: "k" }, { ...claims, nbf: "soon" })))).toBe("ERR_JWT_CLAIM_INVALID");
  });

  it("refuses caller mistakes before reading the token", () => {
    const token = craft({ alg: "ES256", kid: "k" }, claims);
    expect(code(() => validate(token, { leewaySeconds: -1 }))).toBe("ERR_INVALID_ARGUMENT");
    expect(code(() => validate(token, { now: new Date(Number.NaN) }))).toBe("ERR_INVALID_ARGUMENT");
    expect(code(() => validate("garbage", { audience: [] }))).toBe("ERR_INVALID_ARGUMENT");
    expect(code(() => validate(token, { audience: ["a", ""] }))).toBe("ERR_INVALID_ARGUMENT");
  });

  it("refuses DER-encoded ECDSA signatures and RSA keys below 2048 bits", () => {
    expect(code(() => validate(craft({ alg: "ES256", kid: "k" }, claims, key, { der: true })))).toBe("ERR_JWT_SIGNATURE_INVALID");
    const weak = generateKeyPairSync("rsa", { modulusLength: 1024 });
    const weakSet = new BundleSet([{ trustDomain: TD, x509Authorities: [], jwtAuthorities: new Map([["r", weak.publicKey]]) }]);
    const token = craft({ alg: "RS256", kid: "r" }, claims, weak.privateKey);
    expect(code(() => validateJwtSvid(token, weakSet, { audience: "a", now: NOW }))).toBe("ERR_JWT_ALG_NOT_ALLOWED");
  });

  it("does not accept a PKCS#1 v1.5 signature under a PS256 header, nor the reverse", () => {
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const rsaSet = new BundleSet([{ trustDomain: TD, x509Authorities: [], jwtAuthorities: new Map([["r", rsa.publicKey]]) }]);
    const v = (t: string) => code(() => validateJwtSvid(t, rsaSet, { audience: "a", now: NOW }));
    expect(v(craft({ alg: "PS256", kid: "r" }, claims, rsa.privateKey))).toBe("ERR_JWT_SIGNATURE_INVALID");
    expect(v(craft({ alg: "RS256", kid: "r" }, claims, rsa.privateKey, { pss: true }))).toBe("ERR_JWT_SIGNATURE_INVALID");
    expect(v(craft({ alg: "PS256", kid: "r" }, claims, rsa.privateKey, { pss: true }))).toBe("no error");
    // RFC 7518 §3.5 fixes the PSS salt at the hash length; another salt length is not a PS256 signature.
    expect(v(craft({ alg: "PS256", kid: "r" }, claims, rsa.privateKey, { pss: true, pssSalt: 20 }))).toBe("ERR_JWT_SIGNATURE_INVALID");
  });

  it("refuses a well-signed, unexpired token whose aud lacks every expected audience", () => {
    const mismatch = (aud: unknown, audience: string | string[]) => code(() => validate(craft({ alg: "ES256", kid: "k" }, { ...claims, aud }), { audience }));
    expect(mismatch("b", "a")).toBe("ERR_JWT_AUDIENCE_MISMATCH");
    expect(mismatch(["b", "c"], "a")).toBe("ERR_JWT_AUDIENCE_MISMATCH");
    expect(mismatch(["b"], ["a", "c"])).toBe("ERR_JWT_AUDIENCE_MISMATCH");
    // Whole, case-sensitive values: no substring, prefix or character of one.
    expect(mismatch("ab", "a")).toBe("ERR_JWT_AUDIENCE_MISMATCH");
    expect(mismatch("a", "ab")).toBe("ERR_JWT_AUDIENCE_MISMATCH");
    expect(mismatch("A", "a")).toBe("ERR_JWT_AUDIENCE_MISMATCH");
    expect(() => validate(craft({ alg: "ES256", kid: "k" }, { ...claims, aud: ["x", "y"] }), { audience: ["a", "b"] })).toThrow('jwtsvid: token audience ["x","y"] does not contain any of ["a","b"]');
    // One shared value is enough.
    expect(validate(craft({ alg: "ES256", kid: "k" }, { ...claims, aud: ["b", "c"] }), { audience: ["a", "c"] }).audience).toEqual(["b", "c"]);
  });

  it("returns claims untouched and aud as a list", () => {
    const svid = validate(craft({ alg: "ES256", kid: "k", typ: "JWT" }, { ...claims, aud: "a", custom: { n: 1 } }));
    expect(svid.audience).toEqual(["a"]);
    expect(svid.claims["aud"]).toBe("a");
    expect(svid.claims["custom"]).toEqual({ n: 1 });
    expect(svid.header).toEqual({ alg: "ES256", kid: "k", typ: "JWT" });
  });
});

describe("parseJwtSvidInsecure", () => {
  it("reads expired, wrongly signed or foreign-audience tokens without verifying them", () => {
    const expired = signJwtSvid({ spiffeId: parseSpiffeId("spiffe://x.example/w"), audience: ["b"], issuedAt: new Date(0), expiresAt: new Date(60_000), signer });
    const svid = parseJwtSvidInsecure(`${expired.slice(0, expired.lastIndexOf("."))}.AAAA`);
    expect(svid.spiffeId.toString()).toBe("spiffe://x.example/w");
    expect(svid.audience).toEqual(["b"]);
    expect(svid.expiresAt).toEqual(new Date(60_000));
  });

  it("still checks structure: alg allow-list, sub, aud and exp", () => {
    expect(code(() => parseJwtSvidInsecure(`${encodeJsonSegment({ alg: "none", kid: "k" })}.${encodeJsonSegment(claims)}.`))).toBe("ERR_JWT_ALG_NOT_ALLOWED");
    expect(code(() => parseJwtSvidInsecure(craft({ alg: "ES256", kid: "k" }, { ...claims, sub: "spiffe://example.org" })))).toBe("ERR_JWT_CLAIM_INVALID");
    expect(code(() => parseJwtSvidInsecure(craft({ alg: "ES256", kid: "k" }, { sub: claims.sub, exp: 1 })))).toBe("ERR_JWT_AUDIENCE_MISMATCH");
    expect(code(() => parseJwtSvidInsecure(craft({ alg: "ES256", kid: "k" }, { sub: claims.sub, aud: "a" })))).toBe("ERR_JWT_CLAIM_INVALID");
  });
});
