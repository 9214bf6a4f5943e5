/**
 * OpenSSL interop for X.509: every chain shape Sigil builds passes
 * `openssl verify -x509_strict` for both TLS purposes, `openssl x509 -text`
 * sees the SPIFFE URI SAN, and certificates made by `openssl req`/`x509`
 * verify (or are rejected) in `verifyX509Svid`. Gated by `requireTool`:
 * skipped with a printed reason locally, a failure under CI=true.
 */
import { spawnSync } from "node:child_process";
import { createPrivateKey } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { X509Bundle } from "../../spiffe/bundle/x509-bundle.js";
import { isSigilError } from "../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../spiffe/id.js";
import { decodePemCertificates, toPem } from "../../spiffe/pem.js";
import { createKeyObjectSigner, generateSigner, type KeyType } from "../../spiffe/signer.js";
import { createIntermediateCa } from "../../spiffe/x509/ca.js";
import { issueLeaf, prepareLeafTemplate } from "../../spiffe/x509/leaf.js";
import { randomSerial } from "../../spiffe/x509/serial.js";
import { StaticX509BundleSource } from "../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../spiffe/x509/verify.js";
import { makeIntermediate, makeLeaf, makeRoot, trusting, workloadKey, type TestCa } from "../fixtures/x509/pki.js";
import { requireTool } from "../support/tools.js";

const haveOpenssl = requireTool("openssl", ["version"], "X.509 interop tests");

// openssl verify checks against the wall clock, so these chains are valid around now.
const NOW = new Date();
const CA_WINDOW = { notBefore: new Date(NOW.getTime() - 3600_000), notAfter: new Date(NOW.getTime() + 7 * 86400_000) };
const LEAF_WINDOW = { notBefore: new Date(NOW.getTime() - 600_000), notAfter: new Date(NOW.getTime() + 3600_000) };

function openssl(args: readonly string[], cwd: string): { status: number; out: string } {
  const r = spawnSync("openssl", args, { cwd, encoding: "utf8" });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

describe.skipIf(!haveOpenssl)("OpenSSL interop (X.509)", () => {
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-openssl-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const write = (name: string, ders: readonly Uint8Array[]): string => {
    const file = `${++n}-${name}.pem`;
    writeFileSync(path.join(dir, file), ders.map((d) => toPem("CERTIFICATE", d)).join(""));
    return file;
  };
  const expectOpensslVerifies = (rootDer: Uint8Array, leafDer: Uint8Array, intermediates: readonly Uint8Array[]): void => {
    const root = write("root", [rootDer]);
    const leaf = write("leaf", [leafDer]);
    const untrusted = intermediates.length > 0 ? ["-untrusted", write("inter", intermediates)] : [];
    for (const purpose of ["sslclient", "sslserver"]) {
      const r = openssl(["verify", "-x509_strict", "-CAfile", root, ...untrusted, "-purpose", purpose, leaf], dir);
      expect(r.out).toContain(`${leaf}: OK`);
      expect(r.status).toBe(0);
    }
  };
  const root = (td: string, keyType: KeyType = "ec-p256"): TestCa => makeRoot(td, { keyType, ...CA_WINDOW });
  const inter = (parent: TestCa, keyType: KeyType = "ec-p256"): TestCa => makeIntermediate(parent, { keyType, ...CA_WINDOW });

  it.each([
    { name: "EC P-256 root -> leaf", rootType: "ec-p256" as KeyType, interType: undefined, key: "ec" as const, opts: {} },
    { name: "EC root -> EC intermediate -> leaf", rootType: "ec-p256" as KeyType, interType: "ec-p256" as KeyType, key: "ec" as const, opts: {} },
    { name: "RSA root -> RSA intermediate -> RSA leaf", rootType: "rsa-2048" as KeyType, interType: "rsa-2048" as KeyType, key: "rsa" as const, opts: {} },
    { name: "EC P-384 root -> RSA leaf", rootType: "ec-p384" as KeyType, interType: undefined, key: "rsa" as const, opts: {} },
    { name: "RSA root -> EC intermediate -> leaf with DNS names", rootType: "rsa-2048" as KeyType, interType: "ec-p256" as KeyType, key: "ec" as const, opts: { dnsNames: ["api.example.org", "*.svc.example.org"] } },
    { name: "leaf with a subject (non-critical SAN)", rootType: "ec-p256" as KeyType, interType: "ec-p256" as KeyType, key: "ec" as const, opts: { subject: { organization: "Acme", commonName: "api" } } },
  ])("$name passes openssl verify -x509_strict for sslclient and sslserver", ({ rootType, interType, key, opts }) => {
    const r = root("example.org", rootType);
    const issuer = interType === undefined ? r : inter(r, interType);
    const leaf = makeLeaf(issuer, "spiffe://example.org/ns/prod/api", { ...LEAF_WINDOW, ...opts }, workloadKey(key));
    expectOpensslVerifies(r.der, leaf.der, issuer.intermediates);
    expect(verifyX509Svid(leaf.chain, trusting(r)).id.toString()).toBe("spiffe://example.org/ns/prod/api");
  });

  it("openssl x509 -text shows the URI SAN (critical with an empty subject) and the CA profile", () => {
    const r = root("example.org");
    const leaf = makeLeaf(r, "spiffe://example.org/web", { ...LEAF_WINDOW, dnsNames: ["web.example.org"] });
    const leafText = openssl(["x509", "-noout", "-text", "-in", write("leaf", [leaf.der])], dir).out;
    expect(leafText).toMatch(/X509v3 Subject Alternative Name: critical\s+URI:spiffe:\/\/example\.org\/web, DNS:web\.example\.org/);
    expect(leafText).toMatch(/X509v3 Basic Constraints: critical\s+CA:FALSE/);
    expect(leafText).toMatch(/X509v3 Key Usage: critical\s+Digital Signature, Key Encipherment, Key Agreement/);
    expect(leafText).toMatch(/X509v3 Extended Key Usage:\s*\n\s+TLS Web Server Authentication, TLS Web Client Authentication/);
    const rootText = openssl(["x509", "-noout", "-text", "-in", write("root", [r.der])], dir).out;
    expect(rootText).toMatch(/X509v3 Subject Alternative Name:\s*\n\s+URI:spiffe:\/\/example\.org\n/);
    expect(rootText).toMatch(/X509v3 Basic Constraints: critical\s+CA:TRUE/);
    expect(rootText).toMatch(/X509v3 Key Usage: critical\s+Certificate Sign, CRL Sign\n/);
  });

  describe("certificates made by openssl", () => {
    const conf = (name: string, lines: readonly string[]): string => {
      writeFileSync(path.join(dir, name), `${lines.join("\n")}\n`);
      return name;
    };
    const ecKey = (name: string): string => {
      expect(openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name], dir).status).toBe(0);
      return name;
    };
    const readPem = (name: string): Uint8Array[] => decodePemCertificates(readFileSync(path.join(dir, name), "utf8"));

    // An openssl root CA for example.org, with its SPIFFE ID.
    const makeOpensslRoot = (withUri: boolean): { cert: string; key: string } => {
      const key = ecKey(`root-${++n}.key`);
      const cert = `root-${n}.pem`;
      const sans = withUri ? ["-addext", "subjectAltName=URI:spiffe://example.org"] : [];
      const r = openssl(
        ["req", "-x509", "-new", "-key", key, "-days", "2", "-subj", `/O=openssl/CN=root ${n}`, "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", ...sans, "-out", cert],
        dir,
      );
      expect(r.status, r.out).toBe(0);
      return { cert, key };
    };
    const signWithOpenssl = (ca: { cert: string; key: string }, ext: readonly string[]): string => {
      const key = ecKey(`cert-${++n}.key`);
      const csr = `cert-${n}.csr`;
      expect(openssl(["req", "-new", "-key", key, "-subj", `/O=openssl/CN=cert ${n}`, "-out", csr], dir).status).toBe(0);
      const out = `cert-${n}.pem`;
      const r = openssl(["x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial", String(1000 + n), "-days", "1", "-extfile", conf(`cert-${n}.ext`, ext), "-out", out], dir);
      expect(r.status, r.out).toBe(0);
      return out;
    };
    const LEAF_EXT = [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement",
      "extendedKeyUsage=serverAuth,clientAuth",
      "subjectAltName=URI:spiffe://example.org/openssl-workload",
    ];
    const trustRoot = (cert: string): StaticX509BundleSource =>
      new StaticX509BundleSource([new X509Bundle(parseTrustDomain("example.org"), readPem(cert))]);

    it("an openssl root -> leaf with a spiffe URI SAN verifies in verifyX509Svid", () => {
      const ca = makeOpensslRoot(true);
      const leaf = signWithOpenssl(ca, LEAF_EXT);
      expect(verifyX509Svid(readPem(leaf), trustRoot(ca.cert)).id.toString()).toBe("spiffe://example.org/openssl-workload");
    });

    it("an openssl intermediate without a URI SAN is accepted in the chain (pitfall A3)", () => {
      const ca = makeOpensslRoot(true);
      const interCert = signWithOpenssl(ca, ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"]);
      const interKey = interCert.replace(/\.pem$/, ".key");
      const leaf = signWithOpenssl({ cert: interCert, key: interKey }, LEAF_EXT);
      const chain = [...readPem(leaf), ...readPem(interCert)];
      expect(verifyX509Svid(chain, trustRoot(ca.cert)).id.toString()).toBe("spiffe://example.org/openssl-workload");
    });

    it("an openssl-made leaf with CA:TRUE is rejected", () => {
      const ca = makeOpensslRoot(true);
      const leaf = signWithOpenssl(ca, ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,digitalSignature,keyCertSign", "subjectAltName=URI:spiffe://example.org/openssl-workload"]);
      let message = "";
      try {
        verifyX509Svid(readPem(leaf), trustRoot(ca.cert));
      } catch (e) {
        message = isSigilError(e, "ERR_X509_CHAIN_INVALID") ? e.message : String(e);
      }
      expect(message).toMatch(/leaf is a CA certificate/);
    });

    it("an openssl upstream root without a URI SAN signs a Sigil intermediate whose leaves verify everywhere", () => {
      const upstream = makeOpensslRoot(false);
      const upstreamSigner = createKeyObjectSigner(createPrivateKey(readFileSync(path.join(dir, upstream.key))));
      const [upstreamDer] = readPem(upstream.cert);
      if (upstreamDer === undefined) throw new Error("no upstream certificate");
      // Leaves cannot come straight from a CA without a SPIFFE ID unless the trust domain is named.
      expect(() => prepareLeafTemplate({ issuerCertDer: upstreamDer, issuerSigner: upstreamSigner })).toThrow(/pass trustDomain/);
      const interSigner = generateSigner("ec-p256");
      const interDer = createIntermediateCa({
        trustDomain: parseTrustDomain("example.org"),
        subjectPublicKey: interSigner.publicKey,
        issuerCertDer: upstreamDer,
        issuerSigner: upstreamSigner,
        ...CA_WINDOW,
      });
      const template = prepareLeafTemplate({ issuerCertDer: interDer, issuerSigner: interSigner });
      const leafDer = issueLeaf(template, {
        spiffeId: parseSpiffeId("spiffe://example.org/behind-upstream"),
        subjectPublicKeyDer: workloadKey().spki,
        serial: randomSerial(),
        ...LEAF_WINDOW,
      });
      expectOpensslVerifies(upstreamDer, leafDer, [interDer]);
      expect(verifyX509Svid([leafDer, interDer], trustRoot(upstream.cert)).id.toString()).toBe("spiffe://example.org/behind-upstream");
    });
  });
});
