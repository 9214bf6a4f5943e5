import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { isSigilError } from "../../../spiffe/errors.js";
import { decodePem, decodePemCertificates, decodePemPrivateKey, encodePemCertificates, encodePemPrivateKey, toPem } from "../../../spiffe/pem.js";
import { makeLeaf, makeRoot } from "../../fixtures/x509/pki.js";

function pemMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (isSigilError(e, "ERR_DER_INVALID")) return e.message;
    throw e;
  }
  throw new Error("expected ERR_DER_INVALID");
}

describe("pem", () => {
  const root = makeRoot("example.org");
  const leaf = makeLeaf(root, "spiffe://example.org/w");

  it("round-trips a chain, with 64-character lines, and matches Node's PEM export", () => {
    const text = encodePemCertificates([leaf.der, root.der]);
    expect(text.split("\n").every((l) => l.length <= 64)).toBe(true);
    expect(decodePemCertificates(text).map((d) => Buffer.from(d).toString("hex"))).toEqual(
      [leaf.der, root.der].map((d) => Buffer.from(d).toString("hex")),
    );
    const key = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey;
    const pkcs8 = new Uint8Array(key.export({ type: "pkcs8", format: "der" }));
    expect(encodePemPrivateKey(pkcs8)).toBe(key.export({ type: "pkcs8", format: "pem" }));
    expect(Buffer.from(decodePemPrivateKey(encodePemPrivateKey(pkcs8))).equals(pkcs8)).toBe(true);
  });

  it("ignores text around blocks (openssl -text output)", () => {
    expect(decodePem(`Certificate:\n  Data: ...\n${toPem("CERTIFICATE", root.der)}trailer\n`)).toHaveLength(1);
  });

  it("errors name the block that is wrong", () => {
    const good = toPem("CERTIFICATE", root.der);
    expect(pemMessage(() => decodePemCertificates(`${good}-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n`))).toBe(
      "pem: block 2 (CERTIFICATE) is not valid base64",
    );
    expect(pemMessage(() => decodePemCertificates(`${good}${toPem("PRIVATE KEY", root.der)}`))).toBe("pem: block 2 is PRIVATE KEY, expected CERTIFICATE");
    expect(pemMessage(() => decodePemCertificates("no pem here"))).toBe("pem: no CERTIFICATE block found");
    expect(pemMessage(() => decodePemPrivateKey(toPem("PRIVATE KEY", root.der).replace(/PRIVATE KEY/g, "EC PRIVATE KEY")))).toBe(
      "pem: block 1 is EC PRIVATE KEY, expected PRIVATE KEY",
    );
    const truncated = toPem("CERTIFICATE", root.der.subarray(0, root.der.length - 10));
    expect(pemMessage(() => decodePemCertificates(truncated))).toMatch(/^pem: block 1 \(CERTIFICATE\) is not DER: der: element 0x30 at offset 0/);
    expect(pemMessage(() => decodePem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END X509 CRL-----"))).toBe("pem: block 1 (CERTIFICATE) ends with END X509 CRL");
  });
});
