/**
 * Distinguished names for the certificates Sigil builds. SPIFFE puts identity
 * in the URI SAN, so names are informational; only a few attributes are offered.
 */
import { encodeOid, encodePrintableString, encodeSequence, encodeSet, encodeUtf8String } from "../der.js";
import { SigilError } from "../errors.js";
import { ATTR } from "./oids.js";

/** A subject or issuer name. Attributes are emitted in the order C, O, OU, CN, serialNumber. */
export interface DistinguishedName {
  /** Two-letter country code (PrintableString). */
  readonly country?: string;
  readonly organization?: string;
  readonly organizationalUnit?: string;
  readonly commonName?: string;
  /** Distinguishes otherwise equal CA names across rotations (PrintableString). */
  readonly serialNumber?: string;
}

/** The DER of an empty Name (`SEQUENCE {}`). */
export const EMPTY_NAME_DER: Uint8Array = Uint8Array.of(0x30, 0x00);

function rdn(oid: string, value: Uint8Array): Uint8Array {
  return encodeSet(encodeSequence(encodeOid(oid), value));
}

/**
 * Encodes a Name; `undefined` or an object with no attributes gives the empty Name.
 *
 * @throws SigilError `ERR_X509_BUILD` when an attribute is empty or not encodable.
 */
export function encodeName(dn: DistinguishedName | undefined): Uint8Array {
  if (dn === undefined) return EMPTY_NAME_DER;
  const rdns: Uint8Array[] = [];
  const add = (key: keyof DistinguishedName, oid: string, encode: (v: string) => Uint8Array): void => {
    const value = dn[key];
    if (value === undefined) return;
    if (value.length === 0 || value.length > 64) {
      throw new SigilError("ERR_X509_BUILD", `x509: name attribute ${key} must be 1..64 characters`);
    }
    try {
      rdns.push(rdn(oid, encode(value)));
    } catch (e) {
      throw new SigilError("ERR_X509_BUILD", `x509: name attribute ${key} ${JSON.stringify(value)} cannot be encoded`, { cause: e });
    }
  };
  add("country", ATTR.country, encodePrintableString);
  add("organization", ATTR.organization, encodeUtf8String);
  add("organizationalUnit", ATTR.organizationalUnit, encodeUtf8String);
  add("commonName", ATTR.commonName, encodeUtf8String);
  add("serialNumber", ATTR.serialNumber, encodePrintableString);
  return rdns.length === 0 ? EMPTY_NAME_DER : encodeSequence(...rdns);
}
