/**
 * SPIFFE-ID §3 (SVIDs and signing authorities) for X.509: ID-14, ID-18..ID-22,
 * and the document types validators accept, X.509 and JWT: ID-23
 * (shared/spec/spiffe-requirements.md §1.1).
 */
import { X509Certificate } from "node:crypto";
import { describe, expect, it } from "vitest";
import { JwtBundle, type JwtBundleSource } from "../../spiffe/bundle/jwt-bundle.js";
import { buildCsr } from "../../spiffe/csr.js";
import { encodeBitString, encodeOid, encodeSequence, encodeUnsignedInteger, encodeUtcTime } from "../../spiffe/der.js";
import { isSigilError } from "../../spiffe/errors.js";
import { MAX_SPIFFE_ID_BYTES, parseSpiffeId, parseTrustDomain } from "../../spiffe/id.js";
import { encodeJsonSegment } from "../../spiffe/jwt/compact.js";
import { signJwtSvid } from "../../spiffe/jwt/sign.js";
import { validateJwtSvid } from "../../spiffe/jwt/validate.js";
import { generateSigner } from "../../spiffe/signer.js";
import { createRootCa } from "../../spiffe/x509/ca.js";
import { decodeCertificate } from "../../spiffe/x509/decode-certificate.js";
import { parseX509Svid } from "../../spiffe/x509/svid.js";
import { verifyX509Svid } from "../../spiffe/x509/verify.js";
import { CA_NOT_AFTER, CA_NOT_BEFORE, craftCertificate, makeIntermediate, makeLeaf, makeRoot, NOW, trusting, workloadKey } from "../fixtures/x509/pki.js";

function verifyError(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (isSigilError(e, "ERR_X509_CHAIN_INVALID")) return e.message;
    throw e;
  }
  throw new Error("expected verification to fail");
}

/** Flips one bit of the first occurrence of `needle` in `der` (which must occur exactly once). */
function flipInside(der: Uint8Array, needle: Uint8Array): Uint8Array {
  const at = Buffer.from(der).indexOf(Buffer.from(needle));
  expect(at).toBeGreaterThanOrEqual(0);
  expect(Buffer.from(der).indexOf(Buffer.from(needle), at + 1)).toBe(-1);
  const out = Uint8Array.from(der);
  const i = at + needle.length - 1;
  out[i] = (out[i] as number) ^ 0x01;
  return out;
}

describe("SVID signing authorities (ID-*)", () => {
  const tdA = makeRoot("td-a.example");
  const tdB = makeRoot("td-b.example");

  it("ID-14: a 2048-byte SPIFFE ID round-trips through an issued leaf, parse and verify", () => {
    const prefix = "spiffe://td-a.example/";
    const segments: string[] = [];
    let path = "";
    while (prefix.length + path.length < MAX_SPIFFE_ID_BYTES - 100) {
      segments.push("s".repeat(99));
      path = segments.join("/");
    }
    const id = prefix + path + "/" + "x".repeat(MAX_SPIFFE_ID_BYTES - prefix.length - path.length - 1);
    expect(Buffer.byteLength(id)).toBe(MAX_SPIFFE_ID_BYTES);
    const leaf = makeLeaf(tdA, id);
    expect(parseX509Svid(leaf.chain, leaf.key.pkcs8).id.toString()).toBe(id);
    expect(verifyX509Svid(leaf.chain, trusting(tdA), { now: NOW }).id.toString()).toBe(id);
    expect(new X509Certificate(leaf.der).subjectAltName).toBe(`URI:${id}`);
  });

  it("ID-18: an SVID is valid only if an authority of its own trust domain signed it", () => {
    // td-b's CA signs a leaf claiming a td-a identity.
    const impostor = craftCertificate(tdB, { uris: ["spiffe://td-a.example/payments"] });
    // The validator trusts td-b (which did sign it) but has no td-a bundle: rejected.
    expect(verifyError(() => verifyX509Svid([impostor.der], trusting(tdB), { now: NOW }))).toMatch(/no X.509 bundle for trust domain td-a\.example/);
    // With both bundles, only td-a's authorities are consulted: rejected.
    expect(verifyError(() => verifyX509Svid([impostor.der], trusting(tdA, tdB), { now: NOW }))).toMatch(/unknown root|does not verify/);
    // The same identity from td-a's own CA passes.
    const genuine = makeLeaf(tdA, "spiffe://td-a.example/payments");
    expect(verifyX509Svid(genuine.chain, trusting(tdA, tdB), { now: NOW }).id.toString()).toBe("spiffe://td-a.example/payments");
  });

  it("ID-19: the trust domain's signing authority holds its own SVID (a URI SAN on the CA certificate)", () => {
    const uris = decodeCertificate(tdA.der).subjectAltNames?.uris;
    expect(uris).toHaveLength(1);
    expect(() => parseSpiffeId(uris?.[0] ?? "")).not.toThrow();
  });

  it("ID-20: the authority's ID is in its own trust domain and has no path: exactly spiffe://<td>", () => {
    expect(new X509Certificate(tdA.der).subjectAltName).toBe("URI:spiffe://td-a.example");
    expect(new X509Certificate(makeIntermediate(tdA).der).subjectAltName).toBe("URI:spiffe://td-a.example");
    let code = "";
    try {
      createRootCa({ trustDomain: parseSpiffeId("spiffe://td-a.example/ca"), signer: generateSigner(), notBefore: CA_NOT_BEFORE, notAfter: CA_NOT_AFTER });
    } catch (e) {
      code = isSigilError(e) ? e.code : "not a SigilError";
    }
    expect(code).toBe("ERR_X509_BUILD");
  });

  it("ID-21: a root authority's SVID is self-signed; a chained one is signed by the foreign authority", () => {
    const root = new X509Certificate(tdA.der);
    expect(root.issuer).toBe(root.subject);
    expect(Buffer.from(decodeCertificate(tdA.der).issuer).equals(decodeCertificate(tdA.der).subject)).toBe(true);
    expect(root.verify(tdA.signer.publicKey)).toBe(true);
    expect(root.checkIssued(root)).toBe(true);
    // td-b's intermediate chained under td-a's root: signed by td-a, not by itself.
    const chained = makeIntermediate(tdA, { td: "td-b.example" });
    const cert = new X509Certificate(chained.der);
    expect(cert.subjectAltName).toBe("URI:spiffe://td-b.example");
    expect(cert.checkIssued(root)).toBe(true);
    expect(cert.verify(tdA.signer.publicKey)).toBe(true);
    expect(cert.verify(chained.signer.publicKey)).toBe(false);
  });

  it("ID-22: the SPIFFE ID and the public key are in the signed portion: editing either breaks verification", () => {
    const leaf = makeLeaf(tdA, "spiffe://td-a.example/billing");
    const source = trusting(tdA);
    expect(verifyX509Svid(leaf.chain, source, { now: NOW }).id.toString()).toBe("spiffe://td-a.example/billing");
    // Change the URI SAN to spiffe://td-a.example/billinf (still a valid ID in the same trust domain).
    const editedId = flipInside(leaf.der, Buffer.from("spiffe://td-a.example/billing"));
    expect(decodeCertificate(editedId).subjectAltNames?.uris).toEqual(["spiffe://td-a.example/billinf"]);
    expect(verifyError(() => verifyX509Svid([editedId], source, { now: NOW }))).toMatch(/signature of the leaf does not verify/);
    // Change one bit of the public key.
    const editedKey = flipInside(leaf.der, decodeCertificate(leaf.der).subjectPublicKeyBits.subarray(20, 40));
    expect(verifyError(() => verifyX509Svid([editedKey], source, { now: NOW }))).toMatch(/signature of the leaf does not verify/);
    // Change one bit of the signature itself.
    const editedSig = Uint8Array.from(leaf.der);
    editedSig[editedSig.length - 3] = (editedSig[editedSig.length - 3] as number) ^ 0x01;
    expect(verifyError(() => verifyX509Svid([editedSig], source, { now: NOW }))).toMatch(/signature of the leaf does not verify/);
  });

  it("ID-23: validators accept only SVID document types: X.509 certificates and JWS JWT-SVIDs (no CSR, CRL, WIT-SVID or JWE)", () => {
    // X.509: a DER object that is not a certificate never verifies, even from the trust domain's own key.
    const source = trusting(tdA);
    const leaf = makeLeaf(tdA, "spiffe://td-a.example/web");
    expect(verifyX509Svid(leaf.chain, source, { now: NOW }).id.toString()).toBe("spiffe://td-a.example/web");
    const csr = buildCsr(workloadKey().privateKey);
    const ecdsaSha256 = encodeSequence(encodeOid("1.2.840.10045.4.3.2"));
    const crlLike = encodeSequence(
      encodeSequence(encodeUnsignedInteger(new Uint8Array([1])), ecdsaSha256, encodeSequence(), encodeUtcTime(NOW)), // TBSCertList: version, signature, issuer, thisUpdate
      ecdsaSha256,
      encodeBitString(new Uint8Array(64)),
    );
    for (const [what, der] of [["CSR", csr], ["CRL-like SEQUENCE", crlLike]] as const) {
      expect(verifyError(() => verifyX509Svid([der], source, { now: NOW })), what).toMatch(/certificate 0 of the chain cannot be decoded/);
      expect(verifyError(() => verifyX509Svid(der, source, { now: NOW })), what).toMatch(/cannot be decoded/);
    }

    // JWT: a JWT-SVID passes; the same claims as a WIT-SVID (typ wit+jwt), signed by the same key, do not.
    const td = parseTrustDomain("td-a.example");
    const signer = generateSigner("ec-p256", "jwt-key-1");
    const jwtSource: JwtBundleSource = { getJwtBundleForTrustDomain: (t) => (t.name === td.name ? new JwtBundle(td, [[signer.id, signer.publicKey]]) : undefined) };
    const options = { audience: "api", now: NOW };
    const claims = { sub: "spiffe://td-a.example/web", aud: "api", exp: NOW.getTime() / 1000 + 300, iat: NOW.getTime() / 1000 };
    const jwtSvid = signJwtSvid({ spiffeId: parseSpiffeId(claims.sub), audience: ["api"], issuedAt: NOW, expiresAt: new Date(NOW.getTime() + 300_000), signer });
    expect(validateJwtSvid(jwtSvid, jwtSource, options).spiffeId.toString()).toBe(claims.sub);
    const signed = (header: object, payload: object): string => {
      const input = `${encodeJsonSegment(header)}.${encodeJsonSegment(payload)}`;
      return `${input}.${Buffer.from(signer.sign(Buffer.from(input), { hash: "sha256", dsaEncoding: "ieee-p1363" })).toString("base64url")}`;
    };
    const jwk = workloadKey().privateKey.export({ format: "jwk" });
    const witSvid = signed({ alg: "ES256", kid: signer.id, typ: "wit+jwt" }, { ...claims, cnf: { jwk: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y } } });
    expect(() => validateJwtSvid(witSvid, jwtSource, options)).toThrow(/typ "wit\+jwt" is not allowed/);
    // The control: the same header with typ JWT validates, so only the document type was refused.
    expect(validateJwtSvid(signed({ alg: "ES256", kid: signer.id, typ: "JWT" }, claims), jwtSource, options).spiffeId.toString()).toBe(claims.sub);
    // A JWE (5 parts: header, encrypted key, IV, ciphertext, tag) is not a JWT-SVID.
    const jwe = [encodeJsonSegment({ alg: "RSA-OAEP-256", enc: "A256GCM", kid: signer.id }), "a2V5", "aXY", "Y2lwaGVy", "dGFn"].join(".");
    expect(() => validateJwtSvid(jwe, jwtSource, options)).toThrow(/5 parts, so it is a JWE/);
  });
});
