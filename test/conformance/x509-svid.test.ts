/**
 * SPIFFE X509-SVID conformance: one test per requirement X509-1..X509-21
 * (shared/spec/spiffe-requirements.md §1.2). Positive cases use Sigil's
 * builders; negative leaves are crafted through the same TBS builder or come
 * from the static openssl-made fixtures in test/fixtures/x509/ (named after
 * what is wrong with them). Node's X509Certificate gives an independent view
 * of what was issued; test/interop/openssl.test.ts adds OpenSSL's.
 */
import { X509Certificate } from "node:crypto";
import { describe, expect, it } from "vitest";
import { isSigilError } from "../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../spiffe/id.js";
import { generateSigner } from "../../spiffe/signer.js";
import { createIntermediateCa, createRootCa } from "../../spiffe/x509/ca.js";
import { decodeCertificate } from "../../spiffe/x509/decode-certificate.js";
import { encodeExtension } from "../../spiffe/x509/extensions.js";
import { issueLeaf, prepareLeafTemplate } from "../../spiffe/x509/leaf.js";
import { encodeName } from "../../spiffe/x509/name.js";
import { EKU, EXT } from "../../spiffe/x509/oids.js";
import { randomSerial } from "../../spiffe/x509/serial.js";
import { parseX509Svid } from "../../spiffe/x509/svid.js";
import { verifyX509Svid } from "../../spiffe/x509/verify.js";
import {
  CA_NOT_AFTER,
  CA_NOT_BEFORE,
  craftCertificate,
  craftIntermediate,
  fixture,
  LEAF_NOT_AFTER,
  LEAF_NOT_BEFORE,
  makeIntermediate,
  makeLeaf,
  makeRoot,
  NOW,
  openSslFixtureTrust,
  trusting,
  workloadKey,
} from "../fixtures/x509/pki.js";

const TD = "example.org";
const ID = "spiffe://example.org/ns/prod/sa/api";

/** Runs `fn` and returns the SigilError it throws (failing the test if it does not). */
function sigilErrorOf(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (e) {
    if (isSigilError(e)) return { code: e.code, message: e.message };
    throw new Error(`expected a SigilError, got ${String(e)}`);
  }
  throw new Error("expected an error, but the call succeeded");
}

/** The leaf is rejected both when parsed as our own SVID and when verified as a peer's. */
function expectLeafRejected(chain: readonly Uint8Array[], source: ReturnType<typeof trusting>, now: Date, message: RegExp): void {
  const parsed = sigilErrorOf(() => parseX509Svid(chain));
  expect(parsed.code).toBe("ERR_X509_SVID_INVALID");
  expect(parsed.message).toMatch(message);
  const verified = sigilErrorOf(() => verifyX509Svid(chain, source, { now }));
  expect(verified.code).toBe("ERR_X509_CHAIN_INVALID");
  expect(verified.message).toMatch(message);
}

function uriSans(der: Uint8Array): string[] {
  const san = new X509Certificate(der).subjectAltName ?? "";
  return san
    .split(", ")
    .filter((s) => s.startsWith("URI:"))
    .map((s) => s.slice(4));
}

describe("X.509-SVID (X509-*)", () => {
  const root = makeRoot(TD);
  const inter = makeIntermediate(root);
  const source = trusting(root);

  it("X509-1: an issued leaf has exactly one URI SAN, holding the registered SPIFFE ID", () => {
    const leaf = makeLeaf(root, ID, { dnsNames: ["api.example.org"] });
    expect(uriSans(leaf.der)).toEqual([ID]);
    expect(parseX509Svid(leaf.chain).id.toString()).toBe(ID);
  });

  it("X509-2: rejects a leaf with two URI SANs and a leaf with none", () => {
    const two = craftCertificate(root, { uris: [`spiffe://${TD}/a`, `spiffe://${TD}/b`] });
    expectLeafRejected([two.der], source, NOW, /has 2 URI SANs/);
    const none = craftCertificate(root, { uris: [], dnsNames: ["a.example.org"] });
    expectLeafRejected([none.der], source, NOW, /has 0 URI SANs/);
    const noSan = craftCertificate(root, { noSan: true, subject: encodeName({ commonName: "no san" }) });
    expectLeafRejected([noSan.der], source, NOW, /has 0 URI SANs/);
    // The openssl-made fixtures fail the same way.
    const ossl = openSslFixtureTrust();
    expectLeafRejected([fixture("leaf-two-uri-sans.pem")], ossl.source, ossl.now, /has 2 URI SANs/);
    expectLeafRejected([fixture("leaf-no-uri-san.pem")], ossl.source, ossl.now, /has 0 URI SANs/);
    expect(verifyX509Svid([fixture("leaf-valid.pem")], ossl.source, { now: ossl.now }).id.toString()).toBe(`spiffe://${TD}/workload`);
  });

  it("X509-3: DNS SANs may be added beside the one URI SAN, and the SVID still validates", () => {
    const leaf = makeLeaf(root, ID, { dnsNames: ["api.example.org", "*.api.example.org"] });
    expect(new X509Certificate(leaf.der).subjectAltName).toBe(`URI:${ID}, DNS:api.example.org, DNS:*.api.example.org`);
    expect(verifyX509Svid(leaf.chain, source, { now: NOW }).id.toString()).toBe(ID);
  });

  it("X509-4: issuing a leaf for the trust-domain ID (no path) is refused", () => {
    const template = prepareLeafTemplate({ issuerCertDer: root.der, issuerSigner: root.signer });
    const err = sigilErrorOf(() =>
      issueLeaf(template, {
        spiffeId: parseSpiffeId(`spiffe://${TD}`),
        subjectPublicKeyDer: workloadKey().spki,
        serial: randomSerial(),
        notBefore: LEAF_NOT_BEFORE,
        notAfter: LEAF_NOT_AFTER,
      }),
    );
    expect(err.code).toBe("ERR_X509_BUILD");
    expect(err.message).toMatch(/has no path/);
  });

  it("X509-5: a leaf with an empty subject has a critical SAN extension; with a subject it is not critical", () => {
    const empty = makeLeaf(root, ID);
    expect(new X509Certificate(empty.der).subject ?? "").toBe(""); // Node reports an empty Name as undefined
    expect(decodeCertificate(empty.der).subjectAltNames?.critical).toBe(true);
    const named = makeLeaf(root, ID, { subject: { organization: "Acme", commonName: "api" } });
    expect(new X509Certificate(named.der).subject).toBe("O=Acme\nCN=api");
    expect(decodeCertificate(named.der).subjectAltNames?.critical).toBe(false);
  });

  it("X509-6: every CA the issuer produces has cA=true and keyCertSign", () => {
    for (const ca of [root, inter, makeRoot(TD, { keyType: "rsa-2048" }), makeIntermediate(inter)]) {
      const d = decodeCertificate(ca.der);
      expect(new X509Certificate(ca.der).ca).toBe(true);
      expect(d.basicConstraints?.ca).toBe(true);
      expect(d.keyUsage?.has("keyCertSign")).toBe(true);
    }
  });

  it("X509-7: a signing certificate is itself an SVID: root and intermediate carry URI SAN spiffe://<td>", () => {
    expect(uriSans(root.der)).toEqual([`spiffe://${TD}`]);
    expect(uriSans(inter.der)).toEqual([`spiffe://${TD}`]);
  });

  it("X509-8: the CA builder refuses a CA SPIFFE ID with a path", () => {
    const signer = generateSigner();
    const rootErr = sigilErrorOf(() =>
      createRootCa({ trustDomain: parseSpiffeId(`spiffe://${TD}/ca`), signer, notBefore: CA_NOT_BEFORE, notAfter: CA_NOT_AFTER }),
    );
    expect(rootErr.code).toBe("ERR_X509_BUILD");
    expect(rootErr.message).toMatch(/spiffe:\/\/example\.org\/ca/);
    const interErr = sigilErrorOf(() =>
      createIntermediateCa({
        trustDomain: parseSpiffeId(`spiffe://${TD}/intermediate`),
        subjectPublicKey: signer.publicKey,
        issuerCertDer: root.der,
        issuerSigner: root.signer,
        notBefore: CA_NOT_BEFORE,
        notAfter: CA_NOT_AFTER,
      }),
    );
    expect(interErr.code).toBe("ERR_X509_BUILD");
    // The trust domain's own ID is accepted.
    const ok = createRootCa({ trustDomain: parseSpiffeId(`spiffe://${TD}`), signer, notBefore: CA_NOT_BEFORE, notAfter: CA_NOT_AFTER });
    expect(uriSans(ok)).toEqual([`spiffe://${TD}`]);
  });

  it("X509-9: a CA may issue further CAs: root -> intermediate -> intermediate -> leaf validates", () => {
    const inter2 = makeIntermediate(inter);
    const leaf = makeLeaf(inter2, ID);
    expect(leaf.chain).toHaveLength(3);
    const v = verifyX509Svid(leaf.chain, source, { now: NOW });
    expect(v.id.toString()).toBe(ID);
    expect(v.verifiedChain).toHaveLength(4);
    expect(Buffer.from(v.verifiedChain[3]?.raw ?? []).equals(root.der)).toBe(true);
    // A root of one trust domain may sign an intermediate of another (the leaf's bundle then holds that root).
    const foreignInter = makeIntermediate(root, { td: "other.org" });
    const foreignLeaf = makeLeaf(foreignInter, "spiffe://other.org/w");
    const otherSource = trusting({ ...root, td: parseTrustDomain("other.org") });
    expect(verifyX509Svid(foreignLeaf.chain, otherSource, { now: NOW }).id.toString()).toBe("spiffe://other.org/w");
  });

  it("X509-10: a CA certificate presented as the leaf is rejected (signing certificates never authenticate)", () => {
    expectLeafRejected([root.der], source, NOW, /is a CA certificate|has no path/);
    expectLeafRejected(inter.intermediates, source, NOW, /is a CA certificate|has no path/);
    // Even with a workload-looking SPIFFE ID, a cA=true certificate is refused.
    const caWithPath = craftCertificate(root, { ca: true, keyUsage: ["digitalSignature"], uris: [ID] });
    expectLeafRejected([caWithPath.der], source, NOW, /is a CA certificate/);
  });

  it("X509-11: pathLenConstraint is honoured: root pathLen=0 admits no intermediate, pathLen=1 admits one", () => {
    const strict = makeRoot(TD, { pathLen: 0 });
    expect(decodeCertificate(strict.der).basicConstraints?.pathLen).toBe(0);
    // Our builder refuses to break the constraint...
    expect(sigilErrorOf(() => makeIntermediate(strict)).message).toMatch(/pathLenConstraint is 0/);
    // ...and the validator rejects a chain that does.
    const sneaky = craftIntermediate(strict);
    const leaf = makeLeaf(sneaky, ID);
    const err = sigilErrorOf(() => verifyX509Svid(leaf.chain, trusting(strict), { now: NOW }));
    expect(err.code).toBe("ERR_X509_CHAIN_INVALID");
    expect(err.message).toMatch(/pathLenConstraint 0/);
    // Direct issuance under pathLen=0 is fine.
    expect(verifyX509Svid(makeLeaf(strict, ID).chain, trusting(strict), { now: NOW }).id.toString()).toBe(ID);
    const one = makeRoot(TD, { pathLen: 1 });
    const oneInter = makeIntermediate(one);
    expect(verifyX509Svid(makeLeaf(oneInter, ID).chain, trusting(one), { now: NOW }).id.toString()).toBe(ID);
    const tooDeep = craftIntermediate(oneInter);
    expect(sigilErrorOf(() => verifyX509Svid(makeLeaf(tooDeep, ID).chain, trusting(one), { now: NOW })).message).toMatch(
      /pathLenConstraint 1 but 2 intermediates/,
    );
  });

  it("X509-12: leaves carry BasicConstraints (critical) with cA=false; CAs cA=true", () => {
    const leaf = makeLeaf(root, ID);
    const d = decodeCertificate(leaf.der);
    expect(d.extensions.get(EXT.basicConstraints)?.critical).toBe(true);
    expect(d.basicConstraints).toEqual({ ca: false });
    expect(new X509Certificate(leaf.der).ca).toBe(false);
    expect(decodeCertificate(root.der).basicConstraints?.ca).toBe(true);
    expect(decodeCertificate(inter.der).basicConstraints?.ca).toBe(true);
  });

  it("X509-13: CAs carry no URI name constraints by default; URI name constraints on a CA are enforced, critical or not", () => {
    for (const ca of [root, inter]) expect(decodeCertificate(ca.der).extensions.has(EXT.nameConstraints)).toBe(false);
    // permittedSubtrees [0] { GeneralSubtree { uniformResourceIdentifier [6] <host> } }
    const uriSubtree = (host: string): Uint8Array =>
      Uint8Array.of(0x30, host.length + 6, 0xa0, host.length + 4, 0x30, host.length + 2, 0x86, host.length, ...Buffer.from(host));
    for (const critical of [true, false]) {
      const inside = craftIntermediate(root, { extraExtensions: [encodeExtension(EXT.nameConstraints, critical, uriSubtree("example.org"))] });
      expect(verifyX509Svid(makeLeaf(inside, ID).chain, source, { now: NOW }).id.toString()).toBe(ID);
      const outside = craftIntermediate(root, { extraExtensions: [encodeExtension(EXT.nameConstraints, critical, uriSubtree("other.org"))] });
      const err = sigilErrorOf(() => verifyX509Svid(makeLeaf(outside, ID).chain, source, { now: NOW }));
      expect(err.message).toBe(`x509svid: the leaf's URI SAN "${ID}" is not permitted by the name constraints of intermediate 1`);
    }
  });

  it("X509-14: KeyUsage is present and critical on root, intermediate and leaf", () => {
    for (const der of [root.der, inter.der, makeLeaf(inter, ID).der]) {
      expect(decodeCertificate(der).extensions.get(EXT.keyUsage)?.critical).toBe(true);
    }
    // A leaf without KeyUsage is not an SVID.
    expectLeafRejected([craftCertificate(root, { keyUsage: null }).der], source, NOW, /has no KeyUsage/);
  });

  it("X509-15: CA KeyUsage is exactly keyCertSign and cRLSign (no digitalSignature, pitfall A8)", () => {
    for (const ca of [root, inter]) {
      expect([...(decodeCertificate(ca.der).keyUsage ?? [])].sort()).toEqual(["cRLSign", "keyCertSign"]);
    }
  });

  it("X509-16: leaf KeyUsage is digitalSignature|keyEncipherment|keyAgreement, never keyCertSign or cRLSign", () => {
    for (const key of [workloadKey("ec"), workloadKey("rsa")]) {
      const ku = decodeCertificate(makeLeaf(root, ID, {}, key).der).keyUsage;
      expect([...(ku ?? [])].sort()).toEqual(["digitalSignature", "keyAgreement", "keyEncipherment"]);
    }
    const ossl = openSslFixtureTrust();
    expectLeafRejected([fixture("leaf-no-digital-signature.pem")], ossl.source, ossl.now, /lacks KeyUsage digitalSignature/);
  });

  it("X509-17: leaf ExtendedKeyUsage holds both serverAuth and clientAuth", () => {
    const leaf = makeLeaf(root, ID);
    expect(decodeCertificate(leaf.der).extKeyUsage).toEqual([EKU.serverAuth, EKU.clientAuth]);
    expect(new X509Certificate(leaf.der).keyUsage).toEqual([EKU.serverAuth, EKU.clientAuth]); // Node 20: EKU OIDs
  });

  it("X509-18: our CAs carry no EKU; an intermediate that carries serverAuth+clientAuth is accepted", () => {
    for (const ca of [root, inter]) expect(decodeCertificate(ca.der).extKeyUsage).toBeUndefined();
    const withEku = craftIntermediate(root); // craftCertificate always adds serverAuth+clientAuth
    expect(decodeCertificate(withEku.der).extKeyUsage).toEqual([EKU.serverAuth, EKU.clientAuth]);
    expect(verifyX509Svid(makeLeaf(withEku, ID).chain, source, { now: NOW }).id.toString()).toBe(ID);
  });

  it("X509-19: RFC 5280 path validation against the leaf's bundle: expired or not-yet-valid leaf, expired intermediate, bad signature, unknown root all fail", () => {
    const good = makeLeaf(inter, ID);
    expect(verifyX509Svid(good.chain, source, { now: NOW }).id.toString()).toBe(ID);
    const check = (chain: readonly Uint8Array[], now: Date, message: RegExp, src = source): void => {
      const err = sigilErrorOf(() => verifyX509Svid(chain, src, { now }));
      expect(err.code).toBe("ERR_X509_CHAIN_INVALID");
      expect(err.message).toMatch(message);
    };
    check(good.chain, new Date(LEAF_NOT_AFTER.getTime() + 1000), /the leaf expired/);
    check(good.chain, new Date(LEAF_NOT_BEFORE.getTime() - 1000), /the leaf is not valid before/);
    const shortInter = makeIntermediate(root, { notAfter: new Date("2030-03-01T00:00:00Z") });
    const leafUnderShort = craftCertificate(shortInter, { notAfter: new Date("2030-12-01T00:00:00Z") });
    check([leafUnderShort.der, shortInter.der], new Date("2030-06-01T00:00:00Z"), /intermediate 1 expired/);
    const forged = Uint8Array.from(good.der);
    forged[forged.length - 5] = (forged[forged.length - 5] as number) ^ 0x01;
    check([forged, ...good.chain.slice(1)], NOW, /signature of the leaf does not verify/);
    const strangerRoot = makeRoot(TD);
    check(good.chain, NOW, /signature of intermediate 1 does not verify|unknown root/, trusting(strangerRoot));
    const differentlyNamed = makeLeaf(makeRoot(TD), ID);
    check(differentlyNamed.chain, NOW, /unknown root/);
  });

  it("X509-20: a leaf with cA=true, KeyUsage keyCertSign or KeyUsage cRLSign is rejected", () => {
    expectLeafRejected([craftCertificate(root, { ca: true }).der], source, NOW, /is a CA certificate/);
    expectLeafRejected(
      [craftCertificate(root, { keyUsage: ["digitalSignature", "keyCertSign"] }).der],
      source,
      NOW,
      /has KeyUsage keyCertSign/,
    );
    expectLeafRejected([craftCertificate(root, { keyUsage: ["digitalSignature", "cRLSign"] }).der], source, NOW, /has KeyUsage cRLSign/);
    const ossl = openSslFixtureTrust();
    expectLeafRejected([fixture("leaf-is-ca.pem")], ossl.source, ossl.now, /is a CA certificate/);
    expectLeafRejected([fixture("leaf-key-cert-sign.pem")], ossl.source, ossl.now, /has KeyUsage keyCertSign/);
    expectLeafRejected([fixture("leaf-crl-sign.pem")], ossl.source, ossl.now, /has KeyUsage cRLSign/);
  });

  it("X509-21: the leaf URI must be a spiffe ID with a non-root path: spiffe://td and https://x/y are rejected", () => {
    expectLeafRejected([craftCertificate(root, { uris: [`spiffe://${TD}`] }).der], source, NOW, /has no path/);
    expectLeafRejected([craftCertificate(root, { uris: ["https://example.org/workload"] }).der], source, NOW, /is not a SPIFFE ID/);
    const ossl = openSslFixtureTrust();
    expectLeafRejected([fixture("leaf-trust-domain-id.pem")], ossl.source, ossl.now, /has no path/);
    expectLeafRejected([fixture("leaf-https-uri.pem")], ossl.source, ossl.now, /is not a SPIFFE ID/);
  });
});
