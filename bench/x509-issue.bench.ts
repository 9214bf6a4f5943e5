/**
 * X509-SVID issuance from a prepared DER template (spiffe/x509/leaf.ts) against
 * the ceiling under it: a raw `crypto.sign("sha256", …)` with the same P-256
 * key over a buffer the size of a real leaf TBSCertificate. Interleaved, 3
 * passes, medians; ratio target: issuance >= 0.35x raw signing
 * (spec/performance-limits.md). Each issuance uses a fresh random serial and a
 * pre-generated workload SPKI, as the server does. @peculiar/x509's generator
 * rate is printed for information only.
 *
 * Run: `node --import tsx bench/x509-issue.bench.ts`
 */
import { generateKeyPairSync, randomBytes, sign as cryptoSign, webcrypto } from "node:crypto";
import { parseSpiffeId, parseTrustDomain } from "../spiffe/id.js";
import { createKeyObjectSigner } from "../spiffe/signer.js";
import { createRootCa } from "../spiffe/x509/ca.js";
import { decodeCertificate } from "../spiffe/x509/decode-certificate.js";
import { issueLeaf, prepareLeafTemplate } from "../spiffe/x509/leaf.js";
import { randomSerial } from "../spiffe/x509/serial.js";
import { median, rateAsync, rateSync, report } from "./harness.js";

const PASSES = 3;
const MS = 1000;

const td = parseTrustDomain("example.org");
const caKey = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
const caSigner = createKeyObjectSigner(caKey.privateKey, "bench-ca");
const now = Date.now();
const rootDer = createRootCa({ trustDomain: td, signer: caSigner, notBefore: new Date(now - 3600_000), notAfter: new Date(now + 30 * 86400_000) });
const template = prepareLeafTemplate({ issuerCertDer: rootDer, issuerSigner: caSigner });
const spiffeId = parseSpiffeId("spiffe://example.org/ns/default/sa/bench-workload");

// Workload keys come from the agent: generating them is not the server's cost.
const spkis = Array.from({ length: 256 }, () =>
  new Uint8Array(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).publicKey.export({ type: "spki", format: "der" })),
);
let next = 0;
const issueOne = (): void => {
  const spki = spkis[next++ & 255] as Uint8Array;
  const t = Date.now();
  issueLeaf(template, { spiffeId, subjectPublicKeyDer: spki, serial: randomSerial(), notBefore: new Date(t - 10_000), notAfter: new Date(t + 3600_000) });
};

const sample = issueLeaf(template, { spiffeId, subjectPublicKeyDer: spkis[0] as Uint8Array, serial: randomSerial(), notBefore: new Date(now), notAfter: new Date(now + 3600_000) });
const tbsSized = randomBytes(decodeCertificate(sample).tbs.length);
const rawSign = (): void => {
  cryptoSign("sha256", tbsSized, { key: caKey.privateKey, dsaEncoding: "der" });
};

const raw: number[] = [];
const issued: number[] = [];
for (let pass = 0; pass < PASSES; pass++) {
  raw.push(rateSync(rawSign, MS));
  issued.push(rateSync(issueOne, MS));
}
const rawMedian = median(raw);
const issueMedian = median(issued);

// Informational: the generator the hot path must not use (~1% of raw signing).
// Under plain Node its CJS build needs a Reflect metadata polyfill (tsyringe), which
// Sigil does not depend on; the figure is then skipped with the reason.
async function peculiarRate(): Promise<string> {
  let x509: typeof import("@peculiar/x509");
  try {
    x509 = await import("@peculiar/x509");
  } catch (e) {
    return `skipped (${(e as Error).message.split(".")[0]})`;
  }
  const ecdsa = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
  const keys = (await webcrypto.subtle.generateKey(ecdsa, false, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const rate = await rateAsync(async () => {
    await x509.X509CertificateGenerator.create({
      serialNumber: `01${randomBytes(15).toString("hex")}`,
      subject: "",
      issuer: "O=Sigil",
      publicKey: keys.publicKey,
      signingKey: keys.privateKey,
      signingAlgorithm: ecdsa,
      notBefore: new Date(),
      notAfter: new Date(Date.now() + 3600_000),
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment | x509.KeyUsageFlags.keyAgreement, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension([{ type: "url", value: spiffeId.toString() }], true),
      ],
    });
    return 1;
  }, 500);
  return `${rate.toFixed(0)} SVIDs/s = ${(rate / rawMedian).toFixed(3)}x raw`;
}
const peculiar = await peculiarRate();

console.log(
  `passes: raw sign ${raw.map((r) => r.toFixed(0)).join(", ")} ops/s; issueLeaf ${issued.map((r) => r.toFixed(0)).join(", ")} SVIDs/s; ` +
    `@peculiar/x509 generator (info) ${peculiar}; leaf ${sample.length} bytes`,
);
report({
  name: "x509-svid-issue-template",
  value: issueMedian,
  unit: "SVIDs/s",
  baseline: { value: rawMedian, unit: "ops/s", what: "raw crypto.sign P-256" },
  target: { kind: "ratio", op: ">=", bound: 0.35 },
});
