/**
 * Verification of a peer's X509-SVID against the X.509 bundle of the peer's
 * own trust domain (SPIFFE X509-SVID §5, SPIFFE-ID §3, Workload API §4.6).
 *
 * Order: leaf profile first (it names the trust domain), then the bundle of
 * that trust domain only (ID-18, WAPI-13), then RFC 5280 path building and
 * validation: name chaining and signatures, every certificate's validity at
 * `now`, intermediates being CAs with keyCertSign (no URI SAN required, A3),
 * pathLenConstraint, matching signature algorithms, no unknown critical
 * extension, and the name constraints of every CA in the path, critical or
 * not, as Go's crypto/x509 applies them (see name-constraints.ts). EKU is not
 * enforced (as go-spiffe); Sigil issues both purposes.
 */
import type { KeyObject, X509Certificate } from "node:crypto";
import type { X509Bundle, X509BundleSource } from "../bundle/x509-bundle.js";
import { SigilError } from "../errors.js";
import type { SpiffeId } from "../id.js";
import { decodeCertificate, type DecodedCertificate } from "./decode-certificate.js";
import { checkPathNameConstraints } from "./name-constraints.js";
import { EXT } from "./oids.js";
import { decodeChain, nodeCertificate } from "./svid.js";
import { checkLeaf, checkSigningCertificate } from "./svid-rules.js";

/** Options of {@link verifyX509Svid}. */
export interface VerifyX509SvidOptions {
  /** The time validity is checked at (default: now). Tests inject it. */
  readonly now?: Date;
}

/** A verified peer identity. */
export interface VerifiedX509Svid {
  /** The leaf's SPIFFE ID. */
  readonly id: SpiffeId;
  /** The path that verified: leaf, intermediates used, then the bundle authority. */
  readonly verifiedChain: readonly X509Certificate[];
}

const CODE = "ERR_X509_CHAIN_INVALID";
const MAX_PATH = 16;
const UNDERSTOOD_EXTENSIONS: ReadonlySet<string> = new Set([
  EXT.basicConstraints,
  EXT.keyUsage,
  EXT.extKeyUsage,
  EXT.subjectAltName,
  EXT.subjectKeyIdentifier,
  EXT.authorityKeyIdentifier,
  // Enforced by checkPathNameConstraints, which refuses a critical one holding forms it cannot process.
  EXT.nameConstraints,
]);

// Bundle authorities are parsed once per DER, not per verification.
const decodedAuthorities = new WeakMap<Uint8Array, DecodedCertificate>();
const authorityKeys = new WeakMap<X509Certificate, KeyObject>();

function fail(message: string): never {
  throw new SigilError(CODE, `x509svid: ${message}`);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b);
}

/** A certificate's public key; Node parses some certificates whose key it cannot load, and throws a bare Error then. */
function publicKeyOf(node: X509Certificate, what: string): KeyObject {
  try {
    return node.publicKey;
  } catch (e) {
    throw new SigilError(CODE, `x509svid: the public key of ${what} cannot be loaded: ${(e as Error).message}`, { cause: e });
  }
}

function signedBy(child: X509Certificate, issuerKey: KeyObject): boolean {
  try {
    return child.verify(issuerKey);
  } catch {
    return false; // a key of another type cannot have signed it
  }
}

interface Authority {
  readonly decoded: DecodedCertificate;
  readonly node: X509Certificate;
  readonly key: KeyObject;
}

function authoritiesOf(bundle: X509Bundle): Authority[] {
  let nodes: readonly X509Certificate[];
  try {
    nodes = bundle.authorities;
  } catch (e) {
    throw new SigilError(CODE, `x509svid: the bundle of ${bundle.trustDomain.name} is unusable: ${(e as Error).message}`, { cause: e });
  }
  return bundle.authorityDers.map((der, i) => {
    const node = nodes[i] as X509Certificate;
    let decoded = decodedAuthorities.get(der);
    if (decoded === undefined) {
      try {
        decoded = decodeCertificate(der);
      } catch (e) {
        throw new SigilError(CODE, `x509svid: authority ${i} of ${bundle.trustDomain.name} cannot be decoded: ${(e as Error).message}`, { cause: e });
      }
      decodedAuthorities.set(der, decoded);
    }
    let key = authorityKeys.get(node);
    if (key === undefined) {
      key = publicKeyOf(node, `authority ${i} of ${bundle.trustDomain.name}`);
      authorityKeys.set(node, key);
    }
    return { decoded, node, key };
  });
}

function checkValidity(c: DecodedCertificate, what: string, now: Date): void {
  if (now.getTime() < c.notBefore.getTime()) fail(`${what} is not valid before ${c.notBefore.toISOString()}`);
  if (now.getTime() > c.notAfter.getTime()) fail(`${what} expired at ${c.notAfter.toISOString()}`);
}

function checkCriticalExtensions(c: DecodedCertificate, what: string): void {
  for (const ext of c.extensions.values()) {
    if (ext.critical && !UNDERSTOOD_EXTENSIONS.has(ext.oid)) fail(`${what} has an unsupported critical extension ${ext.oid}`);
  }
}

/**
 * Verifies an X509-SVID chain (concatenated DER or a list, leaf first, optional
 * intermediates in any order) and returns the peer's SPIFFE ID.
 *
 * @throws SigilError `ERR_X509_CHAIN_INVALID` for every reason it is rejected:
 * leaf profile (0 or 2+ URI SANs, non-`spiffe` or root-path ID, cA=true,
 * keyCertSign, cRLSign, no digitalSignature), no bundle for the leaf's trust
 * domain, unknown root, bad signature, a certificate outside its validity,
 * a non-CA intermediate, an exceeded pathLenConstraint, a SAN name (of the
 * leaf or an intermediate) outside the name constraints of a CA above it.
 */
export function verifyX509Svid(
  chain: Uint8Array | readonly Uint8Array[],
  bundleSource: X509BundleSource,
  options: VerifyX509SvidOptions = {},
): VerifiedX509Svid {
  const now = options.now ?? new Date();
  const decoded = decodeChain(chain, CODE);
  const leaf = decoded[0] as DecodedCertificate;
  const id = checkLeaf(leaf, CODE);
  const td = id.trustDomain;

  let bundle: X509Bundle | undefined;
  try {
    bundle = bundleSource.getX509BundleForTrustDomain(td);
  } catch (e) {
    throw new SigilError(CODE, `x509svid: getting the bundle of ${td.name} failed: ${(e as Error).message}`, { cause: e });
  }
  if (bundle === undefined) fail(`no X.509 bundle for trust domain ${td.name}: ${id.toString()} is not trusted`);
  if (bundle.isEmpty()) fail(`the X.509 bundle of ${td.name} holds no authorities`);
  const authorities = authoritiesOf(bundle);

  const nodes: (X509Certificate | undefined)[] = [];
  const nodeOf = (i: number): X509Certificate => {
    let n = nodes[i];
    if (n === undefined) {
      n = nodeCertificate((decoded[i] as DecodedCertificate).der, i === 0 ? "the leaf" : `intermediate ${i}`, CODE);
      nodes[i] = n;
    }
    return n;
  };
  const label = (i: number): string => (i === 0 ? "the leaf" : `intermediate ${i}`);

  // Build the path upwards: prefer a bundle authority, else a presented intermediate.
  const path: number[] = [0];
  let anchor: Authority | undefined;
  let badSignature: string | undefined;
  while (anchor === undefined) {
    if (path.length > MAX_PATH) fail(`chain is longer than ${MAX_PATH} certificates`);
    const currentIndex = path[path.length - 1] as number;
    const current = decoded[currentIndex] as DecodedCertificate;
    for (const a of authorities) {
      if (!sameBytes(a.decoded.subject, current.issuer)) continue;
      if (signedBy(nodeOf(currentIndex), a.key)) {
        anchor = a;
        break;
      }
      badSignature = `the signature of ${label(currentIndex)} does not verify with the ${td.name} authority of the same name`;
    }
    if (anchor !== undefined) break;
    let next: number | undefined;
    for (let k = 1; k < decoded.length && next === undefined; k++) {
      if (path.includes(k) || !sameBytes((decoded[k] as DecodedCertificate).subject, current.issuer)) continue;
      if (signedBy(nodeOf(currentIndex), publicKeyOf(nodeOf(k), label(k)))) next = k;
      else badSignature = `the signature of ${label(currentIndex)} does not verify with ${label(k)}`;
    }
    if (next === undefined) {
      fail(badSignature ?? `${label(currentIndex)} was not issued by an authority of trust domain ${td.name} (unknown root)`);
    }
    path.push(next);
  }

  for (const [depth, index] of path.entries()) {
    const c = decoded[index] as DecodedCertificate;
    const what = label(index);
    checkValidity(c, what, now);
    checkCriticalExtensions(c, what);
    if (!sameBytes(c.signatureAlgorithm, c.tbsSignatureAlgorithm)) fail(`${what}'s signature algorithm differs from the one it signed`);
    if (depth === 0) continue;
    checkSigningCertificate(c, what, CODE);
    const pathLen = c.basicConstraints?.pathLen;
    if (pathLen !== undefined && depth - 1 > pathLen) {
      fail(`${what} has pathLenConstraint ${pathLen} but ${depth - 1} intermediates follow it`);
    }
  }
  checkValidity(anchor.decoded, `the ${td.name} authority`, now);
  checkSigningCertificate(anchor.decoded, `the ${td.name} authority`, CODE, false);
  const anchorPathLen = anchor.decoded.basicConstraints?.pathLen;
  if (anchorPathLen !== undefined && path.length - 1 > anchorPathLen) {
    fail(`the ${td.name} authority has pathLenConstraint ${anchorPathLen} but ${path.length - 1} intermediates follow it`);
  }
  checkPathNameConstraints(
    [...path.map((index) => ({ cert: decoded[index] as DecodedCertificate, what: label(index) })), { cert: anchor.decoded, what: `the ${td.name} authority` }],
    CODE,
  );
  return { id, verifiedChain: [...path.map(nodeOf), anchor.node] };
}
