/**
 * The Workload API's JWK Set (FetchJWTBundles) is not a SPIFFE bundle (pitfall
 * A6): serialized without use or spiffe_* members, parsed without filtering on use.
 */
import { generateKeyPairSync } from "node:crypto";
import { createLocalJWKSet, jwtVerify } from "jose";
import { describe, expect, it } from "vitest";
import { parseJwks, serializeJwks } from "../../../../spiffe/bundle/jwks.js";
import { JwtBundle } from "../../../../spiffe/bundle/jwt-bundle.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { generateSigner } from "../../../../spiffe/signer.js";
import { signJwtSvid } from "../../../../spiffe/jwt/sign.js";

const TD = parseTrustDomain("example.org");

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(isSigilError(e, "ERR_BUNDLE_INVALID")).toBe(true);
    return (e as Error).message;
  }
  throw new Error("expected an error");
}

describe("serializeJwks / parseJwks", () => {
  it("writes kty, kid and key parameters only", () => {
    const ec = generateSigner("ec-p256", "ec-1");
    const rsa = generateSigner("rsa-2048", "rsa-1");
    const text = serializeJwks(new JwtBundle(TD, [[ec.id, ec.publicKey], [rsa.id, rsa.publicKey]]));
    const doc = JSON.parse(text) as { keys: Record<string, unknown>[] } & Record<string, unknown>;
    expect(Object.keys(doc)).toEqual(["keys"]);
    expect(doc.keys.map((k) => Object.keys(k).sort().join(","))).toEqual(["crv,kid,kty,x,y", "e,kid,kty,n"]);
    expect(text).not.toMatch(/use|spiffe_/);
  });

  it("round-trips keys by kid", () => {
    const a = generateSigner("ec-p384", "a");
    const back = parseJwks(serializeJwks(new JwtBundle(TD, [["a", a.publicKey]])), TD);
    expect(back.trustDomain.equals(TD)).toBe(true);
    expect(back.findAuthority("a")?.export({ format: "der", type: "spki" })).toEqual(a.publicKey.export({ format: "der", type: "spki" }));
  });

  it("does not filter on use: absent, sig and jwt-svid keys all load", () => {
    const jwk = generateSigner("ec-p256").publicKey.export({ format: "jwk" });
    const text = JSON.stringify({ keys: [{ ...jwk, kid: "none" }, { ...jwk, kid: "sig", use: "sig" }, { ...jwk, kid: "svid", use: "jwt-svid" }] });
    expect([...parseJwks(text, TD).authorities.keys()]).toEqual(["none", "sig", "svid"]);
  });

  it("requires a unique kid and a readable key; skips unsupported key types with a warning", () => {
    const jwk = generateSigner("ec-p256").publicKey.export({ format: "jwk" });
    expect(errorOf(() => parseJwks(JSON.stringify({ keys: [jwk] }), TD))).toBe("bundle: keys[0] has no kid");
    expect(errorOf(() => parseJwks(JSON.stringify({ keys: [{ ...jwk, kid: "k" }, { ...jwk, kid: "k" }] }), TD))).toBe('bundle: keys[1] repeats kid "k"');
    expect(errorOf(() => parseJwks(JSON.stringify({ keys: [{ ...jwk, kid: "k", x: "AAAA" }] }), TD))).toMatch(/^bundle: keys\[0\]: key parameters do not form a valid public key/);
    expect(errorOf(() => parseJwks("{}", TD))).toBe("bundle: keys is missing");
    expect(errorOf(() => parseJwks('{"keys":[1]}', TD))).toBe("bundle: keys[0] is not a JSON object");
    const warnings: string[] = [];
    const ed = generateKeyPairSync("ed25519").publicKey.export({ format: "jwk" });
    const b = parseJwks(JSON.stringify({ keys: [{ ...ed, kid: "ed" }, { ...jwk, kid: "ok" }] }), TD, { onWarning: (m) => warnings.push(m) });
    expect([...b.authorities.keys()]).toEqual(["ok"]);
    expect(warnings).toEqual(['bundle: keys[0] has unsupported kty "OKP"; skipped']);
  });

  it("is read by jose's local JWK Set, which would skip keys whose use is not sig", async () => {
    const signer = generateSigner("ec-p256", "k1");
    const jwks = createLocalJWKSet(JSON.parse(serializeJwks(new JwtBundle(TD, [[signer.id, signer.publicKey]]))) as { keys: [] });
    const now = new Date();
    const token = signJwtSvid({ spiffeId: parseSpiffeId("spiffe://example.org/w"), audience: ["api"], issuedAt: now, expiresAt: new Date(now.getTime() + 60_000), signer });
    const { payload, protectedHeader } = await jwtVerify(token, jwks, { audience: "api" });
    expect(payload.sub).toBe("spiffe://example.org/w");
    expect(protectedHeader.kid).toBe("k1");
  });
});
