/**
 * The OIDC documents: every key of the JWK Set carries `kid`, `use: "sig"` and
 * the `alg` Sigil signs with for its key type, and no private member; the
 * provider configuration names the issuer, the JWK Set and the algorithms in
 * use. Tokens signed by the CA verify with `jose` against the rendered set.
 */
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { createLocalJWKSet, jwtVerify } from "jose";
import { describe, expect, it } from "vitest";
import { defaultJwksUri, oidcJwks, oidcProviderMetadata, renderOidcDocuments } from "../../../../server/oidc/discovery.js";
import { parseSpiffeId } from "../../../../spiffe/id.js";
import { signJwtSvid } from "../../../../spiffe/jwt/sign.js";
import { generateSigner, type KeyType } from "../../../../spiffe/signer.js";

const PRIVATE_MEMBERS = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

function keys(entries: Record<string, KeyObject>): ReadonlyMap<string, KeyObject> {
  return new Map(Object.entries(entries));
}

describe("OIDC JWK Set", () => {
  it.each<[KeyType, string, Record<string, unknown>]>([
    ["ec-p256", "ES256", { kty: "EC", crv: "P-256" }],
    ["ec-p384", "ES384", { kty: "EC", crv: "P-384" }],
    ["rsa-2048", "RS256", { kty: "RSA", e: "AQAB" }],
  ])("a %s key is published with use sig, its kid and alg %s, and no private member", (keyType, alg, members) => {
    const signer = generateSigner(keyType, "kid-1");
    const [jwk] = oidcJwks(keys({ "kid-1": signer.publicKey })).keys;
    expect(jwk).toMatchObject({ kid: "kid-1", use: "sig", alg, ...members });
    for (const m of PRIVATE_MEMBERS) expect(jwk).not.toHaveProperty(m);
  });

  it("a private key given by mistake still publishes only its public half", () => {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const [jwk] = oidcJwks(keys({ k: privateKey })).keys;
    expect(Object.keys(jwk ?? {}).sort()).toEqual(["alg", "crv", "kid", "kty", "use", "x", "y"]);
  });

  it("keys are sorted by kid, so the same keys give the same bytes and entity tag", () => {
    const a = generateSigner("ec-p256").publicKey;
    const b = generateSigner("ec-p256").publicKey;
    const one = renderOidcDocuments({ issuer: "https://oidc.example.org" }, keys({ b, a }));
    const two = renderOidcDocuments({ issuer: "https://oidc.example.org" }, keys({ a, b }));
    expect(JSON.parse(one.jwks).keys.map((k: { kid: string }) => k.kid)).toEqual(["a", "b"]);
    expect(one.jwks).toBe(two.jwks);
    expect(one.jwksEtag).toBe(two.jwksEtag);
    const three = renderOidcDocuments({ issuer: "https://oidc.example.org" }, keys({ a }));
    expect(three.jwksEtag).not.toBe(one.jwksEtag);
  });

  it("an Ed25519 key is refused (not a JWT-SVID algorithm)", () => {
    const { publicKey } = generateKeyPairSync("ed25519");
    expect(() => oidcJwks(keys({ k: publicKey }))).toThrow(/EC and RSA/);
  });

  it("a token the CA's signer made verifies with jose against the rendered set", async () => {
    const signer = generateSigner("ec-p384", "jwt-A-1");
    const token = signJwtSvid({
      spiffeId: parseSpiffeId("spiffe://example.org/ci"),
      audience: ["sts.amazonaws.com"],
      expiresAt: new Date(Date.now() + 60_000),
      signer,
      extraClaims: { iss: "https://oidc.example.org" },
    });
    const docs = renderOidcDocuments({ issuer: "https://oidc.example.org" }, keys({ "jwt-A-1": signer.publicKey }));
    const { payload } = await jwtVerify(token, createLocalJWKSet(JSON.parse(docs.jwks)), { issuer: "https://oidc.example.org", audience: "sts.amazonaws.com" });
    expect(payload.sub).toBe("spiffe://example.org/ci");
  });
});

describe("OIDC provider configuration", () => {
  it("names the issuer, <issuer>/keys, id_token, public subjects and the algorithms of the keys", () => {
    const jwks = oidcJwks(keys({ a: generateSigner("ec-p256").publicKey, b: generateSigner("rsa-2048").publicKey, c: generateSigner("ec-p256").publicKey }));
    expect(oidcProviderMetadata({ issuer: "https://oidc.example.org/" }, jwks)).toEqual({
      issuer: "https://oidc.example.org/",
      jwks_uri: "https://oidc.example.org/keys",
      response_types_supported: ["id_token"],
      subject_types_supported: ["public"],
      id_token_signing_alg_values_supported: ["ES256", "RS256"],
    });
  });

  it("takes an explicit jwks_uri and authorization_endpoint, and an issuer with a path", () => {
    const meta = oidcProviderMetadata(
      { issuer: "https://example.org/sigil", jwksUri: "https://cdn.example.org/jwks.json", authorizationEndpoint: "https://example.org/auth" },
      { keys: [] },
    );
    expect(meta.jwks_uri).toBe("https://cdn.example.org/jwks.json");
    expect(meta.authorization_endpoint).toBe("https://example.org/auth");
    // Never an empty list, which relying parties refuse.
    expect(meta.id_token_signing_alg_values_supported).toEqual(["ES256"]);
    expect(defaultJwksUri("https://example.org/sigil")).toBe("https://example.org/sigil/keys");
  });
});
