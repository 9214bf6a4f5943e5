/**
 * Leaf issuance and SVID parsing beyond the conformance suite: validity
 * clamping, trust-domain and issuer checks, SPKI checks, key matching.
 */
import { describe, expect, it } from "vitest";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { generateSigner } from "../../../../spiffe/signer.js";
import { decodeCertificate } from "../../../../spiffe/x509/decode-certificate.js";
import { issueLeaf, prepareLeafTemplate, type LeafOptions } from "../../../../spiffe/x509/leaf.js";
import { canonicalSerialHex, encodeSerial, randomSerial } from "../../../../spiffe/x509/serial.js";
import { parseX509Svid } from "../../../../spiffe/x509/svid.js";
import { CA_NOT_AFTER, craftCertificate, LEAF_NOT_AFTER, LEAF_NOT_BEFORE, makeLeaf, makeRoot, workloadKey } from "../../../fixtures/x509/pki.js";

function errorOf(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (e) {
    if (isSigilError(e)) return { code: e.code, message: e.message };
    throw e;
  }
  throw new Error("expected a SigilError");
}

describe("x509 leaf issuance", () => {
  const root = makeRoot("example.org");
  const template = prepareLeafTemplate({ issuerCertDer: root.der, issuerSigner: root.signer });
  const base: LeafOptions = {
    spiffeId: parseSpiffeId("spiffe://example.org/w"),
    subjectPublicKeyDer: workloadKey().spki,
    serial: 42n,
    notBefore: LEAF_NOT_BEFORE,
    notAfter: LEAF_NOT_AFTER,
  };

  it("clamps notAfter to the issuer's notAfter and truncates to whole seconds", () => {
    const der = issueLeaf(template, { ...base, notBefore: new Date("2030-12-31T00:00:00.750Z"), notAfter: new Date("2035-01-01T00:00:00Z") });
    const d = decodeCertificate(der);
    expect(d.notAfter.toISOString()).toBe(CA_NOT_AFTER.toISOString());
    expect(d.notBefore.toISOString()).toBe("2030-12-31T00:00:00.000Z");
    expect(template.issuerNotAfter.toISOString()).toBe(CA_NOT_AFTER.toISOString());
    expect(errorOf(() => issueLeaf(template, { ...base, notBefore: new Date("2032-01-01T00:00:00Z"), notAfter: new Date("2033-01-01T00:00:00Z") })).message).toMatch(
      /clamped to the issuer's notAfter/,
    );
  });

  it("refuses IDs of another trust domain, bad DNS names, bad serials and non-SPKI keys", () => {
    const build = (o: Partial<LeafOptions>): string => errorOf(() => issueLeaf(template, { ...base, ...o })).message;
    expect(build({ spiffeId: parseSpiffeId("spiffe://other.org/w") })).toMatch(/not in the issuer's trust domain example\.org/);
    expect(build({ dnsNames: ["bad name.example.org"] })).toMatch(/DNS name "bad name\.example\.org" is not valid/);
    expect(build({ serial: 0n })).toMatch(/serial number must be positive/);
    expect(build({ serial: new Uint8Array(21).fill(1) })).toMatch(/RFC 5280 allows 20/);
    expect(build({ subjectPublicKeyDer: root.der })).toMatch(/not a SubjectPublicKeyInfo/);
    expect(errorOf(() => issueLeaf(template, { ...base, serial: 0n })).code).toBe("ERR_X509_BUILD");
  });

  it("embeds serial, SPKI and a SubjectKeyIdentifier per leaf, and the issuer's key id as AKI", () => {
    const key = workloadKey("rsa");
    const d = decodeCertificate(issueLeaf(template, { ...base, serial: 0x8001n, subjectPublicKeyDer: key.spki }));
    expect(Buffer.from(d.serial).toString("hex")).toBe("8001");
    expect(Buffer.from(d.spki).equals(key.spki)).toBe(true);
    expect(d.subjectKeyId).toHaveLength(20);
    expect(Buffer.from(d.authorityKeyId ?? []).equals(decodeCertificate(root.der).subjectKeyId ?? new Uint8Array())).toBe(true);
    expect(Buffer.from(encodeSerial(0x8001n)).toString("hex")).toBe("0203008001");
  });

  it("prepareLeafTemplate refuses a non-CA issuer, a signer without the issuer's key, and a disagreeing trust domain", () => {
    const leaf = makeLeaf(root, "spiffe://example.org/w");
    expect(errorOf(() => prepareLeafTemplate({ issuerCertDer: leaf.der, issuerSigner: root.signer })).message).toMatch(/not a CA/);
    expect(errorOf(() => prepareLeafTemplate({ issuerCertDer: root.der, issuerSigner: generateSigner() })).message).toMatch(
      /does not hold the issuer certificate's key/,
    );
    expect(
      errorOf(() => prepareLeafTemplate({ issuerCertDer: root.der, issuerSigner: root.signer, trustDomain: parseTrustDomain("other.org") })).message,
    ).toMatch(/differs from the issuer's example\.org/);
  });

  it("signs with ECDSA SHA-384 under a P-384 CA and SHA-256 RSA under an RSA CA", () => {
    const p384 = makeRoot("example.org", { keyType: "ec-p384" });
    expect(decodeCertificate(makeLeaf(p384).der).signatureAlgorithmOid).toBe("1.2.840.10045.4.3.3");
    const rsa = makeRoot("example.org", { keyType: "rsa-2048" });
    expect(decodeCertificate(makeLeaf(rsa).der).signatureAlgorithmOid).toBe("1.2.840.113549.1.1.11");
    expect(decodeCertificate(makeLeaf(root).der).signatureAlgorithmOid).toBe("1.2.840.10045.4.3.2");
  });
});

describe("parseX509Svid", () => {
  const root = makeRoot("example.org");

  it("returns the ID, Node certificates, DERs and the private key that matches the leaf", () => {
    const leaf = makeLeaf(root, "spiffe://example.org/w");
    const parsed = parseX509Svid(Buffer.concat([leaf.der, root.der]), leaf.key.pkcs8);
    expect(parsed.id.toString()).toBe("spiffe://example.org/w");
    expect(parsed.certificates).toHaveLength(2);
    expect(parsed.certificateDers).toHaveLength(2);
    expect(parsed.leaf.subjectAltName).toBe("URI:spiffe://example.org/w");
    expect(parsed.privateKey?.type).toBe("private");
  });

  it("rejects a private key of another leaf, a non-PKCS#8 key, a non-CA after the leaf, and an empty chain", () => {
    const leaf = makeLeaf(root, "spiffe://example.org/w");
    const other = workloadKey();
    const parseErr = (fn: () => unknown): string => {
      const e = errorOf(fn);
      expect(e.code).toBe("ERR_X509_SVID_INVALID");
      return e.message;
    };
    expect(parseErr(() => parseX509Svid(leaf.chain, other.pkcs8))).toBe("x509svid: private key does not match the leaf's public key");
    expect(parseErr(() => parseX509Svid(leaf.chain, Uint8Array.of(0x30, 0x00)))).toMatch(/not unencrypted PKCS#8 DER/);
    const notCa = craftCertificate(root, { uris: ["spiffe://example.org/x"] });
    expect(parseErr(() => parseX509Svid([leaf.der, notCa.der]))).toMatch(/certificate 1 of the chain is not a CA/);
    expect(parseErr(() => parseX509Svid(new Uint8Array(0)))).toBe("x509svid: chain is empty");
    expect(parseErr(() => parseX509Svid(Uint8Array.of(0x30, 0x03, 0x02, 0x01, 0x01)))).toMatch(/certificate 0 of the chain cannot be decoded/);
    expect(parseErr(() => parseX509Svid(randomSerial()))).toMatch(/chain is not concatenated DER/);
  });
});

describe("randomSerial", () => {
  it("gives distinct, positive 16-octet serials that callers own (across pool refills)", () => {
    const seen = new Set<string>();
    const serials = Array.from({ length: 1000 }, () => randomSerial());
    for (const s of serials) {
      expect(s.length).toBe(16);
      expect((s[0] as number) & 0x80).toBe(0);
      expect(s[0]).not.toBe(0);
      seen.add(Buffer.from(s).toString("hex"));
    }
    expect(seen.size).toBe(1000);
    // Each serial is its own copy: changing one leaves the others alone.
    const [a, b] = serials as [Uint8Array, Uint8Array];
    const before = Buffer.from(b).toString("hex");
    a.fill(0);
    expect(Buffer.from(b).toString("hex")).toBe(before);
    expect(Buffer.from(encodeSerial(b)).subarray(2).toString("hex")).toBe(before);
  });

  it("starts with the issue time, so later serials sort after earlier ones", () => {
    const t0 = Date.now();
    const first = Buffer.from(randomSerial());
    const t1 = Date.now();
    const ms = first.readUIntBE(0, 6);
    expect(ms).toBeGreaterThanOrEqual(t0);
    expect(ms).toBeLessThanOrEqual(t1);
    // The random tail differs even within one millisecond.
    const tails = new Set(Array.from({ length: 200 }, () => Buffer.from(randomSerial()).subarray(6).toString("hex")));
    expect(tails.size).toBe(200);
    const later = Buffer.from(randomSerial());
    expect(later.subarray(0, 6).compare(first.subarray(0, 6))).toBeGreaterThanOrEqual(0);
    // Canonical hex (as the issuance log stores it) keeps that order.
    const hex = (b: Buffer) => canonicalSerialHex(b.toString("hex"));
    expect(hex(later).length).toBe(hex(first).length);
  });
});
