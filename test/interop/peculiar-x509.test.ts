/**
 * Independent parser cross-check: certificates and CSRs built by Sigil's own
 * DER writers (spiffe/x509, spiffe/csr.ts) are read back with @peculiar/x509,
 * an unrelated ASN.1 implementation, and must say exactly what Sigil meant:
 * the SPIFFE ID in the URI SAN, CA flags, key usages, EKUs, validity, key
 * identifiers, and signatures that verify against the issuer's key.
 */
import "reflect-metadata";
import * as px from "@peculiar/x509";
import { createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { describe, expect, it } from "vitest";
import { buildCsr, parseCsr } from "../../spiffe/csr.js";
import { parseSpiffeId, parseTrustDomain } from "../../spiffe/id.js";
import { generateSigner, type KeyType, type Signer } from "../../spiffe/signer.js";
import { createIntermediateCa, createRootCa } from "../../spiffe/x509/ca.js";
import { issueLeaf, prepareLeafTemplate } from "../../spiffe/x509/leaf.js";

// @peculiar's verify() also checks validity at the current time, so the chain is valid around now.
const NOW = new Date(Math.floor(Date.now() / 1000) * 1000);
const CA_NOT_BEFORE = new Date(NOW.getTime() - 3600_000);
const CA_NOT_AFTER = new Date(NOW.getTime() + 7 * 86400_000);
const LEAF_NOT_BEFORE = new Date(NOW.getTime() - 600_000);
const LEAF_NOT_AFTER = new Date(NOW.getTime() + 3600_000);

const TD = parseTrustDomain("example.org");
const LEAF_ID = "spiffe://example.org/ns/prod/sa/web";

interface Chain {
  readonly root: Uint8Array;
  readonly intermediate: Uint8Array;
  readonly leaf: Uint8Array;
  /** The public key of a signer unrelated to the chain, of the intermediate's key type. */
  readonly strangerSpki: Uint8Array;
}

function spkiOf(key: KeyObject): Uint8Array {
  const pub = key.type === "private" ? createPublicKey(key) : key;
  return new Uint8Array(pub.export({ type: "spki", format: "der" }));
}

function buildChain(rootType: KeyType, intermediateType: KeyType, leafKey: KeyObject): Chain {
  const rootSigner: Signer = generateSigner(rootType);
  const root = createRootCa({ trustDomain: TD, signer: rootSigner, notBefore: CA_NOT_BEFORE, notAfter: CA_NOT_AFTER });
  const intermediateSigner = generateSigner(intermediateType);
  const intermediate = createIntermediateCa({
    trustDomain: TD,
    subjectPublicKey: intermediateSigner.publicKey,
    issuerCertDer: root,
    issuerSigner: rootSigner,
    notBefore: CA_NOT_BEFORE,
    notAfter: CA_NOT_AFTER,
    pathLen: 0,
  });
  const template = prepareLeafTemplate({ issuerCertDer: intermediate, issuerSigner: intermediateSigner });
  const leaf = issueLeaf(template, {
    spiffeId: parseSpiffeId(LEAF_ID),
    subjectPublicKeyDer: spkiOf(leafKey),
    serial: 0x1234_5678n,
    notBefore: LEAF_NOT_BEFORE,
    notAfter: LEAF_NOT_AFTER,
    dnsNames: ["web.example.org"],
  });
  return { root, intermediate, leaf, strangerSpki: spkiOf(generateSigner(intermediateType).publicKey) };
}

function peculiar(der: Uint8Array): px.X509Certificate {
  return new px.X509Certificate(Buffer.from(der));
}

function ext<T extends px.Extension>(cert: px.X509Certificate, type: new (raw: ArrayBuffer) => T): T {
  const e = cert.getExtension(type);
  if (e === null) throw new Error(`@peculiar/x509 found no ${type.name} in the certificate`);
  return e;
}

function hasFlag(usages: px.KeyUsageFlags, flag: px.KeyUsageFlags): boolean {
  return (usages & flag) === flag;
}

const CHAINS: readonly { readonly name: string; readonly chain: Chain }[] = [
  { name: "EC P-256 root, P-384 intermediate, P-256 leaf", chain: buildChain("ec-p256", "ec-p384", generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey) },
  { name: "RSA-2048 root and intermediate, RSA-2048 leaf", chain: buildChain("rsa-2048", "rsa-2048", generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey) },
];

describe.each(CHAINS)("@peculiar/x509 reads a Sigil chain ($name)", ({ chain }) => {
  const root = peculiar(chain.root);
  const intermediate = peculiar(chain.intermediate);
  const leaf = peculiar(chain.leaf);

  it("sees the leaf's SPIFFE ID as its only URI SAN, next to its DNS SAN, in a critical SAN (empty subject)", () => {
    const san = ext(leaf, px.SubjectAlternativeNameExtension);
    const names = san.names.toJSON();
    expect(names.filter((n) => n.type === "url").map((n) => n.value)).toEqual([LEAF_ID]);
    expect(names.filter((n) => n.type === "dns").map((n) => n.value)).toEqual(["web.example.org"]);
    expect(san.critical).toBe(true);
    expect(leaf.subject).toBe("");
  });

  it("sees each CA's URI SAN as the trust domain's own ID", () => {
    for (const ca of [root, intermediate]) {
      const uris = ext(ca, px.SubjectAlternativeNameExtension).names.toJSON().filter((n) => n.type === "url").map((n) => n.value);
      expect(uris).toEqual([TD.idString()]);
    }
  });

  it("reads basicConstraints as critical cA=false on the leaf and cA=true on both CAs", () => {
    const leafBc = ext(leaf, px.BasicConstraintsExtension);
    expect(leafBc.ca).toBe(false);
    expect(leafBc.critical).toBe(true);
    const rootBc = ext(root, px.BasicConstraintsExtension);
    expect(rootBc.ca).toBe(true);
    expect(rootBc.pathLength).toBeUndefined();
    expect(rootBc.critical).toBe(true);
    const intBc = ext(intermediate, px.BasicConstraintsExtension);
    expect(intBc.ca).toBe(true);
    expect(intBc.pathLength).toBe(0);
    expect(intBc.critical).toBe(true);
  });

  it("reads keyUsage digitalSignature|keyEncipherment|keyAgreement on the leaf and keyCertSign|cRLSign on CAs", () => {
    const leafKu = ext(leaf, px.KeyUsagesExtension);
    expect(leafKu.critical).toBe(true);
    expect(leafKu.usages).toBe(px.KeyUsageFlags.digitalSignature | px.KeyUsageFlags.keyEncipherment | px.KeyUsageFlags.keyAgreement);
    expect(hasFlag(leafKu.usages, px.KeyUsageFlags.keyCertSign)).toBe(false);
    for (const ca of [root, intermediate]) {
      const ku = ext(ca, px.KeyUsagesExtension);
      expect(ku.critical).toBe(true);
      expect(ku.usages).toBe(px.KeyUsageFlags.keyCertSign | px.KeyUsageFlags.cRLSign);
      expect(hasFlag(ku.usages, px.KeyUsageFlags.digitalSignature)).toBe(false);
    }
  });

  it("reads extendedKeyUsage serverAuth+clientAuth on the leaf and none on the CAs", () => {
    const eku = ext(leaf, px.ExtendedKeyUsageExtension);
    expect([...eku.usages].sort()).toEqual([px.ExtendedKeyUsage.serverAuth, px.ExtendedKeyUsage.clientAuth].sort());
    expect(root.getExtension(px.ExtendedKeyUsageExtension)).toBeNull();
    expect(intermediate.getExtension(px.ExtendedKeyUsageExtension)).toBeNull();
  });

  it("reads the validity windows and the serial number that were requested", () => {
    expect(leaf.notBefore.getTime()).toBe(LEAF_NOT_BEFORE.getTime());
    expect(leaf.notAfter.getTime()).toBe(LEAF_NOT_AFTER.getTime());
    for (const ca of [root, intermediate]) {
      expect(ca.notBefore.getTime()).toBe(CA_NOT_BEFORE.getTime());
      expect(ca.notAfter.getTime()).toBe(CA_NOT_AFTER.getTime());
    }
    expect(leaf.serialNumber.replace(/^0+/, "").toLowerCase()).toBe("12345678");
  });

  it("chains names and key identifiers: issuer = parent's subject, AKI = parent's SKI", () => {
    expect(root.issuer).toBe(root.subject);
    expect(intermediate.issuer).toBe(root.subject);
    expect(leaf.issuer).toBe(intermediate.subject);
    expect(ext(root, px.AuthorityKeyIdentifierExtension).keyId).toBe(ext(root, px.SubjectKeyIdentifierExtension).keyId);
    expect(ext(intermediate, px.AuthorityKeyIdentifierExtension).keyId).toBe(ext(root, px.SubjectKeyIdentifierExtension).keyId);
    expect(ext(leaf, px.AuthorityKeyIdentifierExtension).keyId).toBe(ext(intermediate, px.SubjectKeyIdentifierExtension).keyId);
  });

  it("verifies every signature with the issuer's public key, and not with an unrelated key", async () => {
    expect(await root.isSelfSigned()).toBe(true);
    expect(await root.verify({ publicKey: root.publicKey })).toBe(true);
    expect(await intermediate.verify({ publicKey: root.publicKey })).toBe(true);
    expect(await leaf.verify({ publicKey: intermediate.publicKey })).toBe(true);
    expect(await leaf.verify({ publicKey: intermediate.publicKey, date: NOW })).toBe(true);
    // A key of the right type that did not sign the leaf: a real verifier must say so.
    expect(await leaf.verify({ publicKey: new px.PublicKey(Buffer.from(chain.strangerSpki)), signatureOnly: true })).toBe(false);
  });
});

describe("@peculiar/x509 reads a Sigil CSR", () => {
  const keys: readonly { readonly name: string; readonly key: KeyObject }[] = [
    { name: "EC P-256", key: generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey },
    { name: "EC P-384", key: generateKeyPairSync("ec", { namedCurve: "secp384r1" }).privateKey },
    { name: "RSA-2048", key: generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey },
  ];

  it.each(keys)("parses a $name CSR as PKCS#10 with an empty subject, the key's SPKI and a signature that verifies", async ({ key }) => {
    const der = buildCsr(key);
    const csr = new px.Pkcs10CertificateRequest(Buffer.from(der));
    expect(await csr.verify()).toBe(true);
    expect(csr.subject).toBe("");
    expect(csr.attributes).toEqual([]);
    expect(Buffer.from(csr.publicKey.rawData).equals(Buffer.from(spkiOf(key)))).toBe(true);
    // Sigil's own parser agrees on the key it takes from the request.
    const parsed = parseCsr(der, ["ec-p256", "ec-p384", "rsa-2048"]);
    expect(Buffer.from(parsed.publicKeyDer).equals(Buffer.from(csr.publicKey.rawData))).toBe(true);
  });

  it("does not verify a CSR whose signature was altered", async () => {
    const der = buildCsr(keys[0]!.key);
    const tampered = new Uint8Array(der);
    tampered[tampered.length - 5] = (tampered[tampered.length - 5] as number) ^ 0x01;
    const csr = new px.Pkcs10CertificateRequest(Buffer.from(tampered));
    expect(await csr.verify()).toBe(false);
  });
});
