/**
 * Encoders for the certificate extensions of Sigil's X.509 profile (RFC 5280
 * §4.2, SPIFFE X509-SVID §4). Each returns one complete `Extension` element.
 */
import { createHash } from "node:crypto";
import {
  encodeAscii,
  encodeBoolean,
  encodeImplicitPrimitive,
  encodeNamedBits,
  encodeOctetString,
  encodeOid,
  encodeBigInt,
  encodeSequence,
} from "../der.js";
import { EXT } from "./oids.js";

/** KeyUsage bits by name (RFC 5280 §4.2.1.3). */
export type KeyUsage =
  | "digitalSignature"
  | "nonRepudiation"
  | "keyEncipherment"
  | "dataEncipherment"
  | "keyAgreement"
  | "keyCertSign"
  | "cRLSign"
  | "encipherOnly"
  | "decipherOnly";

/** Bit number of each KeyUsage (bit 0 is the first, most significant bit). */
export const KEY_USAGE_BITS: Readonly<Record<KeyUsage, number>> = {
  digitalSignature: 0,
  nonRepudiation: 1,
  keyEncipherment: 2,
  dataEncipherment: 3,
  keyAgreement: 4,
  keyCertSign: 5,
  cRLSign: 6,
  encipherOnly: 7,
  decipherOnly: 8,
};

/** A generic `Extension ::= SEQUENCE { extnID, critical DEFAULT FALSE, extnValue }`. */
export function encodeExtension(oid: string, critical: boolean, valueDer: Uint8Array): Uint8Array {
  // DER omits a BOOLEAN equal to its DEFAULT, so non-critical has no flag at all.
  return critical
    ? encodeSequence(encodeOid(oid), encodeBoolean(true), encodeOctetString(valueDer))
    : encodeSequence(encodeOid(oid), encodeOctetString(valueDer));
}

/** BasicConstraints, always critical (SPIFFE X509-12 wants it on leaves too). */
export function basicConstraintsExtension(ca: boolean, pathLen?: number): Uint8Array {
  const parts: Uint8Array[] = [];
  if (ca) parts.push(encodeBoolean(true));
  if (ca && pathLen !== undefined) parts.push(encodeBigInt(BigInt(pathLen)));
  return encodeExtension(EXT.basicConstraints, true, encodeSequence(...parts));
}

/** KeyUsage, always critical (SPIFFE X509-14). */
export function keyUsageExtension(usages: readonly KeyUsage[]): Uint8Array {
  return encodeExtension(EXT.keyUsage, true, encodeNamedBits(usages.map((u) => KEY_USAGE_BITS[u])));
}

/** ExtendedKeyUsage (non-critical) with the given purpose OIDs. */
export function extKeyUsageExtension(oids: readonly string[]): Uint8Array {
  return encodeExtension(EXT.extKeyUsage, false, encodeSequence(...oids.map(encodeOid)));
}

/** The names of a SubjectAltName extension. */
export interface AltNames {
  /** `uniformResourceIdentifier [6]` values, in order. */
  readonly uris?: readonly string[];
  /** `dNSName [2]` values, in order. */
  readonly dnsNames?: readonly string[];
}

/** SubjectAltName; critical when the subject is empty (RFC 5280 §4.2.1.6, SPIFFE X509-5). */
export function subjectAltNameExtension(names: AltNames, critical: boolean): Uint8Array {
  const generalNames: Uint8Array[] = [];
  for (const uri of names.uris ?? []) generalNames.push(encodeAscii(0x86, uri));
  for (const dns of names.dnsNames ?? []) generalNames.push(encodeAscii(0x82, dns));
  return encodeExtension(EXT.subjectAltName, critical, encodeSequence(...generalNames));
}

/** SubjectKeyIdentifier (non-critical). */
export function subjectKeyIdExtension(keyId: Uint8Array): Uint8Array {
  return encodeExtension(EXT.subjectKeyIdentifier, false, encodeOctetString(keyId));
}

/** AuthorityKeyIdentifier with only `keyIdentifier [0]` (non-critical). */
export function authorityKeyIdExtension(keyId: Uint8Array): Uint8Array {
  return encodeExtension(EXT.authorityKeyIdentifier, false, encodeSequence(encodeImplicitPrimitive(0, keyId)));
}

/**
 * Key identifier per RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey
 * BIT STRING's bits (without tag, length and unused-bits octet).
 */
export function keyIdentifier(subjectPublicKeyBits: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha1").update(subjectPublicKeyBits).digest());
}
