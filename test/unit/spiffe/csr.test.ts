import { execFileSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { buildCsr, parseCsr, parseSubjectPublicKeyInfo } from "../../../spiffe/csr.js";
import { isSigilError } from "../../../spiffe/errors.js";
import { checkSubjectPublicKeyInfo } from "../../../spiffe/x509/subject-public-key.js";
import { testTempDir } from "../../support/temp-dir.js";
import { requireTool } from "../../support/tools.js";

const ALL = ["ec-p256", "ec-p384", "rsa-2048", "rsa-4096"] as const;
const haveOpenssl = requireTool("openssl");

function expectCsrError(fn: () => unknown, msg: RegExp): void {
  let caught: unknown;
  try { fn(); } catch (e) { caught = e; }
  expect(isSigilError(caught, "ERR_INVALID_ARGUMENT"), String(caught)).toBe(true);
  expect((caught as Error).message).toMatch(msg);
}

describe("CSR intake", () => {
  it("round-trips EC P-256, P-384 and RSA keys through buildCsr/parseCsr", () => {
    for (const [type, opts] of [["ec", { namedCurve: "prime256v1" }], ["ec", { namedCurve: "secp384r1" }], ["rsa", { modulusLength: 2048 }]] as const) {
      const { privateKey, publicKey } = generateKeyPairSync(type as "ec", opts as { namedCurve: string });
      const parsed = parseCsr(buildCsr(privateKey), ALL);
      expect(Buffer.from(parsed.publicKeyDer)).toEqual(publicKey.export({ format: "der", type: "spki" }));
    }
  });

  it("rejects a CSR whose signature does not verify", () => {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    const csr = buildCsr(privateKey);
    csr[csr.length - 5] = (csr[csr.length - 5] as number) ^ 0xff;
    expectCsrError(() => parseCsr(csr, ALL), /signature (does not verify|is malformed)/);
  });

  it("rejects a disallowed key type, naming it and the allowed ones", () => {
    const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    expectCsrError(() => parseCsr(buildCsr(privateKey), ["ec-p256"]), /key type rsa-2048 is not allowed \(allowed: ec-p256\)/);
  });

  it("rejects garbage bytes, truncation and trailing data with a clear error", () => {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    const csr = buildCsr(privateKey);
    expectCsrError(() => parseCsr(new Uint8Array([1, 2, 3, 4]), ALL), /malformed DER/);
    expectCsrError(() => parseCsr(csr.subarray(0, csr.length - 3), ALL), /malformed DER/);
    expectCsrError(() => parseCsr(Buffer.concat([csr, Buffer.from([0])]), ALL), /trailing bytes/);
    expectCsrError(() => parseCsr(new Uint8Array(), ALL), /empty/);
  });

  it("checks bare SubjectPublicKeyInfo keys the same way", () => {
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "secp384r1" });
    const der = new Uint8Array(publicKey.export({ format: "der", type: "spki" }));
    expect(parseSubjectPublicKeyInfo(der, ALL).keyType).toBe("ec-p384");
    expect(() => parseSubjectPublicKeyInfo(der, ["ec-p256"])).toThrow(/ec-p384 is not allowed/);
    expect(() => parseSubjectPublicKeyInfo(new Uint8Array([0x30, 0]), ALL)).toThrow(/public key: not a SubjectPublicKeyInfo/);
  });

  it("checks SubjectPublicKeyInfo by structure: key types, sizes and encodings", () => {
    const spki = (k: import("node:crypto").KeyObject) => new Uint8Array(k.export({ format: "der", type: "spki" }));
    expect(parseSubjectPublicKeyInfo(spki(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).publicKey), ALL).keyType).toBe("ec-p256");
    expect(parseSubjectPublicKeyInfo(spki(generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey), ALL).keyType).toBe("rsa-2048");
    expect(() => parseSubjectPublicKeyInfo(spki(generateKeyPairSync("ec", { namedCurve: "secp521r1" }).publicKey), ALL)).toThrow(/EC curve 1\.3\.132\.0\.35 is not supported/);
    expect(() => parseSubjectPublicKeyInfo(spki(generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey), ALL)).toThrow(/RSA modulus of 1024 bits/);
    expect(() => parseSubjectPublicKeyInfo(spki(generateKeyPairSync("ed25519").publicKey), ALL)).toThrow(/algorithm 1\.3\.101\.112 is not supported/);
    const p256 = spki(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).publicKey);
    expect(() => parseSubjectPublicKeyInfo(p256.subarray(0, p256.length - 1), ALL)).toThrow(/public key: /);
    const compressed = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).publicKey.export({ format: "der", type: "spki" });
    compressed[compressed.length - 65] = 0x02; // claim a compressed point in an uncompressed-size key
    expect(() => parseSubjectPublicKeyInfo(new Uint8Array(compressed), ALL)).toThrow(/uncompressed point/);
    // P-256 keys are recognised by their fixed bytes; the allow-list and exact length still hold.
    expect(() => parseSubjectPublicKeyInfo(p256, ["ec-p384"])).toThrow(/ec-p256 is not allowed/);
    expect(() => parseSubjectPublicKeyInfo(Uint8Array.of(...p256, 0), ALL)).toThrow(/trailing bytes/);
    expect(checkSubjectPublicKeyInfo(p256)).toEqual(p256.subarray(p256.length - 65));
    const curveChanged = Uint8Array.from(p256);
    curveChanged[22] = 0x06; // prime256v1's last OID byte: no longer a known curve
    expect(() => checkSubjectPublicKeyInfo(curveChanged)).toThrow(/algorithm is not EC P-256/);
  });

  it.each([
    ["P-256", "prime256v1"],
    ["P-384", "secp384r1"],
  ])("refuses a %s point that is not on the curve, on the API check and in the certificate builder (every SVID and CA path)", (curve, namedCurve) => {
    const good = new Uint8Array(generateKeyPairSync("ec", { namedCurve }).publicKey.export({ format: "der", type: "spki" }));
    const offCurve = Uint8Array.from(good);
    offCurve[offCurve.length - 1] = (offCurve[offCurve.length - 1] as number) ^ 1; // y changed: y² no longer matches x
    expect(() => parseSubjectPublicKeyInfo(offCurve, ALL)).toThrow(`public key: the ${curve} key is not a point on the curve`);
    expect(() => checkSubjectPublicKeyInfo(offCurve)).toThrow(`x509: subject public key: the ${curve} key is not a point on the curve`);
    const size = curve === "P-256" ? 32 : 48;
    const xTooLarge = Uint8Array.from(good);
    xTooLarge.fill(0xff, good.length - 2 * size, good.length - size);
    expect(() => parseSubjectPublicKeyInfo(xTooLarge, ALL)).toThrow(/coordinate not below the field prime/);
    expect(parseSubjectPublicKeyInfo(good, ALL).keyType).toBe(curve === "P-256" ? "ec-p256" : "ec-p384");
    expect(checkSubjectPublicKeyInfo(good)).toEqual(good.subarray(good.length - 1 - 2 * size));
  });

  it.skipIf(!haveOpenssl)("interop: openssl verifies our CSR, and we accept openssl's", () => {
    const dir = testTempDir("sigil-csr-");
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    writeFileSync(path.join(dir, "ours.der"), buildCsr(privateKey));
    const out = execFileSync("openssl", ["req", "-inform", "DER", "-in", path.join(dir, "ours.der"), "-verify", "-noout"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    expect(out + "").not.toMatch(/fail/i);
    execFileSync("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", path.join(dir, "k.pem"), "-subj", "/CN=x", "-outform", "DER", "-out", path.join(dir, "theirs.der")], { stdio: "ignore" });
    expect(parseCsr(readFileSync(path.join(dir, "theirs.der")), ALL).keyType).toBe("ec-p256");
  });
});
