/**
 * Certificate serial numbers (RFC 5280 §4.1.2.2): positive, at most 20 octets.
 */
import { randomBytes } from "node:crypto";
import { encodeUnsignedInteger } from "../der.js";
import { SigilError } from "../errors.js";

/** A serial as a positive bigint or as unsigned big-endian octets. */
export type SerialNumber = bigint | Uint8Array;

const SERIAL_OCTETS = 16;
const TIME_OCTETS = 6;
const RANDOM_OCTETS = SERIAL_OCTETS - TIME_OCTETS;
// The random part is cut from a pool of CSPRNG output: one randomBytes call
// per 256 serials instead of one per certificate on the issuance hot path.
const POOL_OCTETS = RANDOM_OCTETS * 256;
let pool = Buffer.alloc(0);
let poolOffset = 0;

/**
 * A fresh 16-octet serial: the issue time in milliseconds since the Unix epoch
 * (6 octets, big-endian), then 80 bits from the CSPRNG (above the 64 the CA/B
 * Forum asks for). Serials issued close together sort together, so the
 * issuance log's serial index grows at its end instead of touching a random
 * page per certificate. Always positive and non-zero; 16 octets for any clock
 * after 2004 (the time is only for ordering, so the wall clock is read).
 */
export function randomSerial(): Uint8Array {
  if (poolOffset + RANDOM_OCTETS > pool.length) {
    pool = randomBytes(POOL_OCTETS);
    poolOffset = 0;
  }
  const bytes = new Uint8Array(SERIAL_OCTETS);
  let ms = Date.now();
  for (let i = TIME_OCTETS - 1; i >= 0; i--) {
    bytes[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  bytes[0] = (bytes[0] as number) & 0x7f || 0x01;
  bytes.set(pool.subarray(poolOffset, (poolOffset += RANDOM_OCTETS)), TIME_OCTETS);
  return bytes;
}

/**
 * Encodes a serial as an INTEGER element.
 *
 * @throws SigilError `ERR_X509_BUILD` for zero, negative or over-long serials.
 */
export function encodeSerial(serial: SerialNumber): Uint8Array {
  let magnitude: Uint8Array;
  if (typeof serial === "bigint") {
    if (serial <= 0n) throw new SigilError("ERR_X509_BUILD", "x509: serial number must be positive");
    const hex = serial.toString(16);
    magnitude = Uint8Array.from(Buffer.from(hex.length % 2 === 0 ? hex : `0${hex}`, "hex"));
  } else {
    magnitude = serial;
  }
  const el = encodeUnsignedInteger(magnitude);
  const contentLength = el.length - 2;
  if (el.length < 3 || (contentLength === 1 && el[2] === 0)) throw new SigilError("ERR_X509_BUILD", "x509: serial number must be positive");
  if (contentLength > 20) throw new SigilError("ERR_X509_BUILD", `x509: serial number is ${contentLength} octets (RFC 5280 allows 20)`);
  return el;
}

/** Lower-case hex of an encoded serial's magnitude (the sign octet, if any, removed). */
export function serialHexOf(serialElement: Uint8Array): string {
  const content = serialElement.subarray(2); // serials are at most 21 octets: short-form length
  return Buffer.from(content[0] === 0 && content.length > 1 ? content.subarray(1) : content).toString("hex");
}

/**
 * A serial's hex as Sigil stores and compares it: lowercase, no leading zeros
 * (`"0"` for zero), so serials from different sources (Node's uppercase
 * `serialNumber`, DER with a sign octet, an operator's input) compare equal.
 */
export function canonicalSerialHex(hex: string): string {
  return hex.toLowerCase().replace(/^0+(?=.)/, "");
}
