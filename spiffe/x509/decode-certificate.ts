/**
 * A DER walk of an X.509 certificate (RFC 5280 §4.1) that exposes exactly what
 * SVID parsing, path validation and leaf templates need: raw TBS and names for
 * byte-exact chaining, validity as Dates, and the decoded extensions of the
 * SPIFFE profile plus nameConstraints (which verification enforces). Node's `X509Certificate` is not enough here: in Node 20 its
 * `keyUsage` returns EKU OIDs and it exposes neither BasicConstraints nor
 * extension criticality.
 */
import {
  decodeNamedBits,
  decodeOid,
  decodeSmallInteger,
  decodeTime,
  expectTlv,
  integerMagnitude,
  readChildren,
  readTlv,
  TAG,
  type DerElement,
} from "../der.js";
import { SigilError, toSigilError } from "../errors.js";
import { KEY_USAGE_BITS, type KeyUsage } from "./extensions.js";
import { decodeNameConstraints, type NameConstraints } from "./name-constraints.js";
import { EXT } from "./oids.js";

/** One raw extension. */
export interface RawExtension {
  readonly oid: string;
  readonly critical: boolean;
  /** The DER inside `extnValue` (the OCTET STRING's content). */
  readonly value: Uint8Array;
}

/** BasicConstraints as decoded. */
export interface BasicConstraints {
  readonly ca: boolean;
  /** pathLenConstraint, when present. */
  readonly pathLen?: number;
}

/** SubjectAltName as decoded. */
export interface SubjectAltNames {
  readonly critical: boolean;
  readonly uris: readonly string[];
  readonly dnsNames: readonly string[];
  /** `rfc822Name [1]` values (checked only against name constraints). */
  readonly emails: readonly string[];
  /** `iPAddress [7]` values, 4 or 16 octets (checked only against name constraints). */
  readonly ips: readonly Uint8Array[];
  /** Number of GeneralNames of other types (otherName, directoryName, …), kept only as a count. */
  readonly otherCount: number;
}

/** A decoded certificate. Byte fields are views into `der`. */
export interface DecodedCertificate {
  /** The whole certificate. */
  readonly der: Uint8Array;
  /** The complete TBSCertificate element (what the signature covers). */
  readonly tbs: Uint8Array;
  /** 1, 2 or 3. */
  readonly version: number;
  /** Serial number magnitude (big-endian, sign octet removed). */
  readonly serial: Uint8Array;
  /** The TBS `signature` AlgorithmIdentifier element. */
  readonly tbsSignatureAlgorithm: Uint8Array;
  /** The outer `signatureAlgorithm` AlgorithmIdentifier element. */
  readonly signatureAlgorithm: Uint8Array;
  /** Dotted OID of the outer signature algorithm. */
  readonly signatureAlgorithmOid: string;
  /** The issuer Name element, byte-exact. */
  readonly issuer: Uint8Array;
  /** The subject Name element, byte-exact. */
  readonly subject: Uint8Array;
  /** True when the subject Name has no RDNs. */
  readonly subjectIsEmpty: boolean;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** The SubjectPublicKeyInfo element. */
  readonly spki: Uint8Array;
  /** The subjectPublicKey bits (BIT STRING content without the unused-bits octet). */
  readonly subjectPublicKeyBits: Uint8Array;
  /** Every extension, keyed by OID (duplicates are rejected). */
  readonly extensions: ReadonlyMap<string, RawExtension>;
  readonly basicConstraints?: BasicConstraints;
  /** KeyUsage bits when the extension is present. */
  readonly keyUsage?: ReadonlySet<KeyUsage>;
  /** EKU purpose OIDs when the extension is present. */
  readonly extKeyUsage?: readonly string[];
  readonly subjectAltNames?: SubjectAltNames;
  /** nameConstraints, critical or not (both are enforced on CAs during verification). */
  readonly nameConstraints?: NameConstraints;
  readonly subjectKeyId?: Uint8Array;
  readonly authorityKeyId?: Uint8Array;
}

const KEY_USAGE_BY_BIT = new Map<number, KeyUsage>(
  (Object.entries(KEY_USAGE_BITS) as [KeyUsage, number][]).map(([name, bit]) => [bit, name]),
);

function fail(message: string): never {
  throw new SigilError("ERR_DER_INVALID", `x509: ${message}`);
}

function ascii(bytes: Uint8Array, what: string): string {
  for (const b of bytes) if (b > 0x7f) fail(`${what} is not ASCII`);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
}

function decodeBasicConstraints(der: Uint8Array): BasicConstraints {
  const seq = expectTlv(der, 0, TAG.SEQUENCE, "BasicConstraints");
  if (seq.end !== der.length) fail("BasicConstraints has trailing bytes");
  let ca = false;
  let pathLen: number | undefined;
  for (const child of readChildren(der, seq)) {
    if (child.tag === TAG.BOOLEAN && pathLen === undefined) {
      if (child.content.length !== 1) fail("BasicConstraints cA is not a one-octet BOOLEAN");
      ca = child.content[0] !== 0;
    } else if (child.tag === TAG.INTEGER && pathLen === undefined) {
      pathLen = decodeSmallInteger(child);
    } else {
      fail(`BasicConstraints has an unexpected element (tag 0x${child.tag.toString(16)})`);
    }
  }
  return pathLen === undefined ? { ca } : { ca, pathLen };
}

function decodeKeyUsage(der: Uint8Array): Set<KeyUsage> {
  const bits = expectTlv(der, 0, TAG.BIT_STRING, "KeyUsage");
  const out = new Set<KeyUsage>();
  for (const bit of decodeNamedBits(bits.content, bits.start)) {
    const name = KEY_USAGE_BY_BIT.get(bit);
    if (name !== undefined) out.add(name);
  }
  return out;
}

function decodeExtKeyUsage(der: Uint8Array): string[] {
  const seq = expectTlv(der, 0, TAG.SEQUENCE, "ExtendedKeyUsage");
  return readChildren(der, seq).map((c) => {
    if (c.tag !== TAG.OID) fail("ExtendedKeyUsage holds a non-OID element");
    return decodeOid(c.content, c.start);
  });
}

function decodeSubjectAltNames(der: Uint8Array, critical: boolean): SubjectAltNames {
  const seq = expectTlv(der, 0, TAG.SEQUENCE, "SubjectAltName");
  const uris: string[] = [];
  const dnsNames: string[] = [];
  const emails: string[] = [];
  const ips: Uint8Array[] = [];
  let otherCount = 0;
  for (const name of readChildren(der, seq)) {
    if (name.tag === 0x86) uris.push(ascii(name.content, "URI SAN"));
    else if (name.tag === 0x82) dnsNames.push(ascii(name.content, "DNS SAN"));
    else if (name.tag === 0x81) emails.push(ascii(name.content, "email SAN"));
    else if (name.tag === 0x87) {
      if (name.content.length !== 4 && name.content.length !== 16) fail(`IP address SAN at offset ${name.start} has ${name.content.length} octets`);
      ips.push(name.content);
    } else otherCount++;
  }
  return { critical, uris, dnsNames, emails, ips, otherCount };
}

function decodeAuthorityKeyId(der: Uint8Array): Uint8Array | undefined {
  const seq = expectTlv(der, 0, TAG.SEQUENCE, "AuthorityKeyIdentifier");
  for (const child of readChildren(der, seq)) if (child.tag === 0x80) return child.content;
  return undefined;
}

function decodeExtensions(der: Uint8Array, wrapper: DerElement): Map<string, RawExtension> {
  const seq = expectTlv(der, wrapper.contentStart, TAG.SEQUENCE, "extensions", wrapper.end);
  if (seq.end !== wrapper.end) fail(`extensions [3] at offset ${wrapper.start} has trailing bytes`);
  const out = new Map<string, RawExtension>();
  for (const ext of readChildren(der, seq)) {
    if (ext.tag !== TAG.SEQUENCE) fail(`extension at offset ${ext.start} is not a SEQUENCE`);
    const parts = readChildren(der, ext);
    const [oidEl, second, third] = parts;
    if (oidEl?.tag !== TAG.OID) fail(`extension at offset ${ext.start} has no extnID`);
    const oid = decodeOid(oidEl.content, oidEl.start);
    let critical = false;
    let valueEl: DerElement | undefined = second;
    if (second?.tag === TAG.BOOLEAN) {
      critical = second.content[0] !== 0;
      valueEl = third;
    }
    if (valueEl?.tag !== TAG.OCTET_STRING || parts.length > (second?.tag === TAG.BOOLEAN ? 3 : 2)) {
      fail(`extension ${oid} at offset ${ext.start} is malformed`);
    }
    if (out.has(oid)) fail(`extension ${oid} appears twice (RFC 5280 §4.2)`);
    out.set(oid, { oid, critical, value: valueEl.content });
  }
  return out;
}

/**
 * Decodes a certificate's structure and the extensions of the SPIFFE profile.
 * It checks structure only: no signature, validity or profile rules.
 *
 * @throws SigilError `ERR_DER_INVALID` naming the malformed part.
 */
export function decodeCertificate(der: Uint8Array): DecodedCertificate {
  try {
    return decode(der);
  } catch (e) {
    throw toSigilError(e, "ERR_DER_INVALID", "x509");
  }
}

function decode(der: Uint8Array): DecodedCertificate {
  const cert = expectTlv(der, 0, TAG.SEQUENCE, "Certificate");
  if (cert.end !== der.length) fail(`certificate is followed by ${der.length - cert.end} extra bytes`);
  const [tbsEl, sigAlgEl, sigEl, extra] = readChildren(der, cert);
  if (tbsEl?.tag !== TAG.SEQUENCE || sigAlgEl?.tag !== TAG.SEQUENCE || sigEl?.tag !== TAG.BIT_STRING || extra !== undefined) {
    fail("certificate is not SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }");
  }
  const sigOidEl = readTlv(der, sigAlgEl.contentStart, sigAlgEl.end);
  if (sigOidEl.tag !== TAG.OID) fail("signatureAlgorithm has no OID");
  if (sigEl.content[0] !== 0) fail("signatureValue has unused bits");

  const fields = readChildren(der, tbsEl);
  let i = 0;
  let version = 1;
  const versionEl = fields[0];
  if (versionEl?.tag === 0xa0) {
    version = decodeSmallInteger(expectTlv(der, versionEl.contentStart, TAG.INTEGER, "version", versionEl.end)) + 1;
    if (version < 2 || version > 3) fail(`unsupported certificate version ${version}`);
    i = 1;
  }
  const take = (tag: number, what: string): DerElement => {
    const el = fields[i++];
    if (el?.tag !== tag) fail(`tbsCertificate.${what} is missing or has the wrong type`);
    return el;
  };
  const serialEl = take(TAG.INTEGER, "serialNumber");
  const tbsSigAlg = take(TAG.SEQUENCE, "signature");
  const issuer = take(TAG.SEQUENCE, "issuer");
  const validity = take(TAG.SEQUENCE, "validity");
  const subject = take(TAG.SEQUENCE, "subject");
  const spki = take(TAG.SEQUENCE, "subjectPublicKeyInfo");
  const [nbEl, naEl, extraTime] = readChildren(der, validity);
  if (nbEl === undefined || naEl === undefined || extraTime !== undefined) fail("validity is not SEQUENCE { notBefore, notAfter }");
  const [, spkBits] = readChildren(der, spki);
  if (spkBits?.tag !== TAG.BIT_STRING || spkBits.content[0] !== 0) fail("subjectPublicKeyInfo has no subjectPublicKey BIT STRING");

  let extensions = new Map<string, RawExtension>();
  for (; i < fields.length; i++) {
    const el = fields[i] as DerElement;
    if (el.tag === 0x81 || el.tag === 0x82) continue; // issuer/subject unique IDs: unused by SPIFFE
    if (el.tag === 0xa3 && i === fields.length - 1) {
      if (version !== 3) fail("extensions present in a certificate that is not version 3");
      extensions = decodeExtensions(der, el);
      continue;
    }
    fail(`tbsCertificate has an unexpected element at offset ${el.start}`);
  }

  const ext = (oid: string): RawExtension | undefined => extensions.get(oid);
  const bc = ext(EXT.basicConstraints);
  const ku = ext(EXT.keyUsage);
  const eku = ext(EXT.extKeyUsage);
  const san = ext(EXT.subjectAltName);
  const nc = ext(EXT.nameConstraints);
  const ski = ext(EXT.subjectKeyIdentifier);
  const aki = ext(EXT.authorityKeyIdentifier);
  const akiValue = aki === undefined ? undefined : decodeAuthorityKeyId(aki.value);
  return {
    der,
    tbs: tbsEl.raw,
    version,
    serial: integerMagnitude(serialEl),
    tbsSignatureAlgorithm: tbsSigAlg.raw,
    signatureAlgorithm: sigAlgEl.raw,
    signatureAlgorithmOid: decodeOid(sigOidEl.content, sigOidEl.start),
    issuer: issuer.raw,
    subject: subject.raw,
    subjectIsEmpty: subject.content.length === 0,
    notBefore: decodeTime(nbEl),
    notAfter: decodeTime(naEl),
    spki: spki.raw,
    subjectPublicKeyBits: spkBits.content.subarray(1),
    extensions,
    ...(bc === undefined ? {} : { basicConstraints: decodeBasicConstraints(bc.value) }),
    ...(ku === undefined ? {} : { keyUsage: decodeKeyUsage(ku.value) }),
    ...(eku === undefined ? {} : { extKeyUsage: decodeExtKeyUsage(eku.value) }),
    ...(san === undefined ? {} : { subjectAltNames: decodeSubjectAltNames(san.value, san.critical) }),
    ...(nc === undefined ? {} : { nameConstraints: decodeNameConstraints(nc.value, nc.critical) }),
    ...(ski === undefined ? {} : { subjectKeyId: expectTlv(ski.value, 0, TAG.OCTET_STRING, "SubjectKeyIdentifier").content }),
    ...(akiValue === undefined ? {} : { authorityKeyId: akiValue }),
  };
}
