/**
 * A foreign trust domain's CA for federation tests: a self-signed root, the
 * SPIFFE bundle documents it publishes, and X509-SVIDs it issues (for an
 * `https_spiffe` bundle endpoint). Valid from an hour ago for a year, since
 * TLS clients check validity against the real clock.
 */
import { generateKeyPairSync } from "node:crypto";
import { serializeSpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { parseSpiffeId, parseTrustDomain, type TrustDomain } from "../../spiffe/id.js";
import { toPem } from "../../spiffe/pem.js";
import { generateSigner } from "../../spiffe/signer.js";
import { createRootCa } from "../../spiffe/x509/ca.js";
import { issueLeaf, prepareLeafTemplate } from "../../spiffe/x509/leaf.js";
import { randomSerial } from "../../spiffe/x509/serial.js";

/** A test CA of one trust domain. */
export interface TestCa {
  readonly trustDomain: TrustDomain;
  readonly certDer: Uint8Array;
  readonly certPem: string;
  /** The SPIFFE bundle with this root, and `spiffe_sequence`/`spiffe_refresh_hint` when given. */
  bundleJson(sequence?: bigint, refreshHintSeconds?: number, extraRoots?: readonly Uint8Array[]): string;
  /** An X509-SVID for `spiffeId` (chain PEM, leaf only) and its key, PEM. */
  issueSvid(spiffeId: string): { readonly certPem: string; readonly keyPem: string };
}

/** Makes a CA for `trustDomain`. */
export function makeTestCa(trustDomain: string): TestCa {
  const td = parseTrustDomain(trustDomain);
  const signer = generateSigner("ec-p256");
  const now = Date.now();
  const certDer = createRootCa({ trustDomain: td, signer, notBefore: new Date(now - 3_600_000), notAfter: new Date(now + 365 * 86_400_000) });
  const template = prepareLeafTemplate({ issuerCertDer: certDer, issuerSigner: signer });
  return {
    trustDomain: td,
    certDer,
    certPem: toPem("CERTIFICATE", certDer),
    bundleJson: (sequence, refreshHintSeconds, extraRoots = []) =>
      serializeSpiffeBundle({
        trustDomain: td,
        x509Authorities: [certDer, ...extraRoots],
        jwtAuthorities: new Map(),
        ...(sequence === undefined ? {} : { sequenceNumber: sequence }),
        ...(refreshHintSeconds === undefined ? {} : { refreshHintSeconds }),
      }),
    issueSvid: (spiffeId) => {
      const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const der = issueLeaf(template, {
        spiffeId: parseSpiffeId(spiffeId),
        subjectPublicKeyDer: new Uint8Array(publicKey.export({ type: "spki", format: "der" })),
        serial: randomSerial(),
        notBefore: new Date(now - 3_600_000),
        notAfter: new Date(now + 30 * 86_400_000),
      });
      return { certPem: toPem("CERTIFICATE", der), keyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString() };
    },
  };
}
