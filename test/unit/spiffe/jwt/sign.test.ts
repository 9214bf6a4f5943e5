/**
 * JWT-SVID issuance details: key types and algorithms, misbehaving signers, and
 * interoperability with jose in both directions.
 */
import { generateKeyPairSync } from "node:crypto";
import { SignJWT, createLocalJWKSet, jwtVerify } from "jose";
import { describe, expect, it } from "vitest";
import { serializeJwks } from "../../../../spiffe/bundle/jwks.js";
import { JwtBundle } from "../../../../spiffe/bundle/jwt-bundle.js";
import { BundleSet } from "../../../../spiffe/bundle/bundle-set.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { createKeyObjectSigner, generateSigner, type Signer } from "../../../../spiffe/signer.js";
import { signJwtSvid } from "../../../../spiffe/jwt/sign.js";
import { validateJwtSvid } from "../../../../spiffe/jwt/validate.js";

const TD = parseTrustDomain("example.org");
const ID = parseSpiffeId("spiffe://example.org/w");
const NOW = new Date("2030-01-01T00:00:00Z");
const EXP = new Date(NOW.getTime() + 60_000);

function errorCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return isSigilError(e) ? e.code : `not a SigilError: ${String(e)}`;
  }
  return "no error";
}

function roundTrip(s: Signer, alg?: "PS256" | "RS384" | "ES256"): string {
  const token = signJwtSvid({ spiffeId: ID, audience: ["a"], issuedAt: NOW, expiresAt: EXP, signer: s, ...(alg ? { alg } : {}) });
  const set = new BundleSet([{ trustDomain: TD, x509Authorities: [], jwtAuthorities: new Map([[s.id, s.publicKey]]) }]);
  return validateJwtSvid(token, set, { audience: "a", now: NOW }).header.alg;
}

describe("signJwtSvid", () => {
  it("derives alg from the key type and accepts fitting overrides", () => {
    expect(roundTrip(generateSigner("ec-p256"))).toBe("ES256");
    expect(roundTrip(generateSigner("ec-p384"))).toBe("ES384");
    const rsa = generateSigner("rsa-2048");
    expect(roundTrip(rsa)).toBe("RS256");
    expect(roundTrip(rsa, "PS256")).toBe("PS256");
    expect(roundTrip(rsa, "RS384")).toBe("RS384");
    expect(errorCode(() => roundTrip(rsa, "ES256"))).toBe("ERR_JWT_ALG_NOT_ALLOWED");
    expect(errorCode(() => roundTrip(generateSigner("ec-p384"), "ES256"))).toBe("ERR_JWT_ALG_NOT_ALLOWED");
  });

  it("wraps signer failures and refuses non-P1363 ECDSA output", () => {
    const real = generateSigner("ec-p256", "k");
    const failing: Signer = { ...real, sign: () => { throw new Error("HSM offline"); } };
    expect(errorCode(() => signJwtSvid({ spiffeId: ID, audience: ["a"], issuedAt: NOW, expiresAt: EXP, signer: failing }))).toBe("ERR_JWT_SIGN");
    // A signer that ignores dsaEncoding and returns DER.
    const der: Signer = { ...real, sign: (d, o) => real.sign(d, { ...o, dsaEncoding: "der" }) };
    expect(errorCode(() => signJwtSvid({ spiffeId: ID, audience: ["a"], issuedAt: NOW, expiresAt: EXP, signer: der }))).toBe("ERR_JWT_SIGN");
  });

  it("refuses invalid dates", () => {
    const s = generateSigner("ec-p256");
    expect(errorCode(() => signJwtSvid({ spiffeId: ID, audience: ["a"], issuedAt: NOW, expiresAt: new Date(Number.NaN), signer: s }))).toBe("ERR_JWT_CLAIM_INVALID");
  });

  it("produces tokens jose verifies, and validates tokens jose signs", async () => {
    const pair = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    const s = createKeyObjectSigner(pair.privateKey, "jose-kid");
    const jwks = createLocalJWKSet(JSON.parse(serializeJwks(new JwtBundle(TD, [[s.id, s.publicKey]]))) as { keys: [] });
    const ours = signJwtSvid({ spiffeId: ID, audience: ["a", "b"], issuedAt: NOW, expiresAt: EXP, signer: s });
    const { payload } = await jwtVerify(ours, jwks, { audience: "b", currentDate: NOW });
    expect(payload).toMatchObject({ sub: ID.toString(), aud: ["a", "b"], exp: EXP.getTime() / 1000, iat: NOW.getTime() / 1000 });

    const theirs = await new SignJWT({}).setProtectedHeader({ alg: "ES256", kid: "jose-kid", typ: "JWT" }).setSubject(ID.toString()).setAudience("a").setExpirationTime(EXP).sign(pair.privateKey);
    const set = new BundleSet([{ trustDomain: TD, x509Authorities: [], jwtAuthorities: new Map([["jose-kid", s.publicKey]]) }]);
    expect(validateJwtSvid(theirs, set, { audience: "a", now: NOW }).spiffeId.equals(ID)).toBe(true);
  });
});
