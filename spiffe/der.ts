/**
 * A small DER toolkit (X.690): a bounds-checked TLV reader, the writers X.509
 * needs, RFC 5280 time encoding, and the splitter for the Workload API's
 * "concatenated DER" form (spec pitfall A18).
 *
 * Scope: single-byte tags only (every tag X.509 uses), definite lengths of at
 * most 4 length octets, minimal length encoding as DER requires. Every error is
 * a `SigilError` with code `ERR_DER_INVALID` whose message names the offset.
 */
import { SigilError } from "./errors.js";

/** Universal and context tags used by X.509, as full identifier octets. */
export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

/** One decoded TLV. Offsets are absolute within the buffer it was read from. */
export interface DerElement {
  /** The identifier octet (e.g. 0x30 for SEQUENCE, 0xa3 for `[3]` constructed). */
  readonly tag: number;
  /** Offset of the identifier octet. */
  readonly start: number;
  /** Offset of the first content octet. */
  readonly contentStart: number;
  /** Offset just past the last content octet. */
  readonly end: number;
  /** The content octets (a view, not a copy). */
  readonly content: Uint8Array;
  /** The whole TLV, header included (a view, not a copy). */
  readonly raw: Uint8Array;
}

function derError(message: string): SigilError {
  return new SigilError("ERR_DER_INVALID", `der: ${message}`);
}

function hexTag(tag: number): string {
  return `0x${tag.toString(16).padStart(2, "0")}`;
}

/**
 * Reads the TLV starting at `offset`, which must end at or before `limit`
 * (default: end of `bytes`).
 *
 * @throws SigilError `ERR_DER_INVALID` naming the offset of the problem.
 */
export function readTlv(bytes: Uint8Array, offset = 0, limit = bytes?.length): DerElement {
  if (!(bytes instanceof Uint8Array)) throw derError("input is not a byte array (Uint8Array)");
  limit = Math.min(limit, bytes.length);
  if (offset >= limit) throw derError(`expected a tag at offset ${offset} but the input ends`);
  const tag = bytes[offset] as number;
  if ((tag & 0x1f) === 0x1f) throw derError(`multi-byte tag at offset ${offset} is not supported`);
  let pos = offset + 1;
  if (pos >= limit) throw derError(`length at offset ${pos} runs past end`);
  const first = bytes[pos++] as number;
  let length: number;
  if (first < 0x80) {
    length = first;
  } else {
    const n = first & 0x7f;
    if (n === 0) throw derError(`indefinite length at offset ${pos - 1} is not allowed in DER`);
    if (n > 4) throw derError(`length at offset ${pos - 1} uses ${n} octets (at most 4 supported)`);
    if (pos + n > limit) throw derError(`length at offset ${pos - 1} runs past end`);
    if (bytes[pos] === 0) throw derError(`length at offset ${pos - 1} has a leading zero octet (not minimal DER)`);
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + (bytes[pos++] as number);
    if (length < 0x80) throw derError(`length at offset ${offset + 1} uses the long form for ${length} (not minimal DER)`);
  }
  const end = pos + length;
  if (end > limit) {
    throw derError(`element ${hexTag(tag)} at offset ${offset} has length ${length} that runs past end (${limit - pos} octets left)`);
  }
  return {
    tag,
    start: offset,
    contentStart: pos,
    end,
    content: bytes.subarray(pos, end),
    raw: bytes.subarray(offset, end),
  };
}

/**
 * Reads a TLV and checks its tag.
 *
 * @param what - what the element is, for the error message (`"tbsCertificate"`).
 */
export function expectTlv(bytes: Uint8Array, offset: number, tag: number, what: string, limit = bytes?.length): DerElement {
  const el = readTlv(bytes, offset, limit);
  if (el.tag !== tag) throw derError(`${what} at offset ${offset} has tag ${hexTag(el.tag)}, expected ${hexTag(tag)}`);
  return el;
}

/**
 * Most children one constructed element may have. Nothing Sigil parses comes
 * close (a certificate's widest SEQUENCE is its SAN list); the cap keeps a
 * hostile input of millions of empty elements from costing seconds and
 * gigabytes before it is refused.
 */
export const MAX_DER_CHILDREN = 65_536;

/** The child TLVs of a constructed element, in order; they must exactly fill it. */
export function readChildren(bytes: Uint8Array, parent: DerElement): DerElement[] {
  const out: DerElement[] = [];
  let pos = parent.contentStart;
  while (pos < parent.end) {
    if (out.length === MAX_DER_CHILDREN) throw derError(`element at offset ${parent.start} has more than ${MAX_DER_CHILDREN} children`);
    const child = readTlv(bytes, pos, parent.end);
    out.push(child);
    pos = child.end;
  }
  return out;
}

/**
 * Splits a concatenation of top-level DER SEQUENCEs (the Workload API's
 * `x509_svid` and `bundle` form, pitfall A18) into separate copies. Empty input
 * gives an empty list.
 *
 * @throws SigilError `ERR_DER_INVALID` when something other than a complete
 * SEQUENCE is found, naming its offset (e.g. PEM text or trailing garbage).
 */
export function splitDerConcatenation(bytes: Uint8Array): Uint8Array[] {
  if (!(bytes instanceof Uint8Array)) throw derError("input is not a byte array (Uint8Array)");
  const out: Uint8Array[] = [];
  let pos = 0;
  while (pos < bytes.length) {
    if (bytes[pos] !== TAG.SEQUENCE) {
      const hint = bytes[pos] === 0x2d ? " (looks like PEM text; DER is expected)" : "";
      throw derError(
        `trailing ${bytes.length - pos} octets at offset ${pos} are not a DER SEQUENCE (tag ${hexTag(bytes[pos] as number)})${hint}`,
      );
    }
    const el = readTlv(bytes, pos);
    out.push(bytes.slice(el.start, el.end));
    pos = el.end;
  }
  return out;
}

/** Concatenates DER elements (e.g. a chain, leaf first) into the Workload API wire form. */
export function concatDer(parts: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Writers

/** Encodes a definite length in minimal DER form. */
export function encodeLength(length: number): Uint8Array {
  if (!Number.isInteger(length) || length < 0 || length > 0xffffffff) {
    throw derError(`cannot encode length ${length}`);
  }
  if (length < 0x80) return Uint8Array.of(length);
  const octets: number[] = [];
  for (let n = length; n > 0; n = Math.floor(n / 256)) octets.unshift(n & 0xff);
  return Uint8Array.of(0x80 | octets.length, ...octets);
}

/** Encodes one TLV from a tag and content parts (concatenated). */
export function encodeTlv(tag: number, ...content: readonly Uint8Array[]): Uint8Array {
  let length = 0;
  for (const c of content) length += c.length;
  const header = encodeLength(length);
  const out = new Uint8Array(1 + header.length + length);
  out[0] = tag;
  out.set(header, 1);
  let pos = 1 + header.length;
  for (const c of content) {
    out.set(c, pos);
    pos += c.length;
  }
  return out;
}

/** SEQUENCE of already-encoded elements. */
export function encodeSequence(...items: readonly Uint8Array[]): Uint8Array {
  return encodeTlv(TAG.SEQUENCE, ...items);
}

/** SET of already-encoded elements (callers order them; DER sorts SET OF). */
export function encodeSet(...items: readonly Uint8Array[]): Uint8Array {
  return encodeTlv(TAG.SET, ...items);
}

/**
 * INTEGER from unsigned big-endian magnitude octets: leading zeros are dropped
 * and a 0x00 is prepended when the top bit is set, so the value stays positive.
 */
export function encodeUnsignedInteger(magnitude: Uint8Array): Uint8Array {
  let i = 0;
  while (i < magnitude.length - 1 && magnitude[i] === 0) i++;
  const trimmed = magnitude.length === 0 ? Uint8Array.of(0) : magnitude.subarray(i);
  if (((trimmed[0] as number) & 0x80) !== 0) return encodeTlv(TAG.INTEGER, Uint8Array.of(0), trimmed);
  return encodeTlv(TAG.INTEGER, trimmed);
}

/** INTEGER from a bigint (two's complement, minimal). */
export function encodeBigInt(value: bigint): Uint8Array {
  const octets: number[] = [];
  let v = value;
  for (;;) {
    const byte = Number(v & 0xffn);
    octets.unshift(byte);
    v >>= 8n;
    // Stop once the remaining value is pure sign extension of the top octet.
    if ((v === 0n && (byte & 0x80) === 0) || (v === -1n && (byte & 0x80) !== 0)) break;
  }
  return encodeTlv(TAG.INTEGER, Uint8Array.from(octets));
}

/** BOOLEAN (DER: TRUE is 0xff). */
export function encodeBoolean(value: boolean): Uint8Array {
  return Uint8Array.of(TAG.BOOLEAN, 1, value ? 0xff : 0);
}

/** NULL. */
export function encodeNull(): Uint8Array {
  return Uint8Array.of(TAG.NULL, 0);
}

// Certificates reuse a handful of OIDs; encoding them is on the issuance hot path.
const oidCache = new Map<string, Uint8Array>();

/** OBJECT IDENTIFIER from dotted form (`"1.2.840.10045.4.3.2"`). */
export function encodeOid(dotted: string): Uint8Array {
  let cached = oidCache.get(dotted);
  if (cached === undefined) {
    cached = encodeOidUncached(dotted);
    if (oidCache.size < 256) oidCache.set(dotted, cached);
  }
  return cached.slice();
}

function encodeOidUncached(dotted: string): Uint8Array {
  const arcs = dotted.split(".").map((s) => (/^\d+$/.test(s) ? BigInt(s) : -1n));
  const [a0, a1] = arcs;
  if (arcs.length < 2 || a0 === undefined || a1 === undefined || arcs.some((a) => a < 0n) || a0 > 2n || (a0 < 2n && a1 > 39n)) {
    throw derError(`invalid object identifier ${JSON.stringify(dotted)}`);
  }
  const out: number[] = [];
  const values = [a0 * 40n + a1, ...arcs.slice(2)];
  for (const value of values) {
    const group: number[] = [Number(value & 0x7fn)];
    for (let v = value >> 7n; v > 0n; v >>= 7n) group.unshift(Number(v & 0x7fn) | 0x80);
    out.push(...group);
  }
  return encodeTlv(TAG.OID, Uint8Array.from(out));
}

/** Dotted form of an OBJECT IDENTIFIER's content octets. */
export function decodeOid(content: Uint8Array, offset = 0): string {
  if (content.length === 0) throw derError(`empty object identifier at offset ${offset}`);
  const arcs: bigint[] = [];
  let value = 0n;
  let started = false;
  for (let i = 0; i < content.length; i++) {
    const b = content[i] as number;
    if (!started && b === 0x80) throw derError(`object identifier at offset ${offset} has a non-minimal arc`);
    started = true;
    value = (value << 7n) | BigInt(b & 0x7f);
    if ((b & 0x80) === 0) {
      arcs.push(value);
      value = 0n;
      started = false;
    }
  }
  if (started) throw derError(`object identifier at offset ${offset} ends inside an arc`);
  const first = arcs[0] as bigint;
  const head = first < 80n ? [first / 40n, first % 40n] : [2n, first - 80n];
  return [...head, ...arcs.slice(1)].join(".");
}

const utf8 = new TextEncoder();

/** UTF8String. */
export function encodeUtf8String(value: string): Uint8Array {
  return encodeTlv(TAG.UTF8_STRING, utf8.encode(value));
}

/** PrintableString; refuses characters outside its repertoire. */
export function encodePrintableString(value: string): Uint8Array {
  if (!/^[A-Za-z0-9 '()+,\-./:=?]*$/.test(value)) throw derError(`${JSON.stringify(value)} is not a PrintableString`);
  return encodeTlv(TAG.PRINTABLE_STRING, utf8.encode(value));
}

/** IA5String-content bytes with the given tag (IA5String, or an implicit `[n]` such as a URI GeneralName). */
export function encodeAscii(tag: number, value: string): Uint8Array {
  const bytes = new Uint8Array(value.length);
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c > 0x7f) throw derError(`${JSON.stringify(value)} has a non-ASCII character at offset ${i}`);
    bytes[i] = c;
  }
  return encodeTlv(tag, bytes);
}

/** OCTET STRING. */
export function encodeOctetString(value: Uint8Array): Uint8Array {
  return encodeTlv(TAG.OCTET_STRING, value);
}

/** BIT STRING from whole octets with `unusedBits` (0..7) padding bits in the last one. */
export function encodeBitString(value: Uint8Array, unusedBits = 0): Uint8Array {
  if (unusedBits < 0 || unusedBits > 7 || (value.length === 0 && unusedBits !== 0)) {
    throw derError(`invalid BIT STRING unused-bit count ${unusedBits}`);
  }
  return encodeTlv(TAG.BIT_STRING, Uint8Array.of(unusedBits), value);
}

/**
 * BIT STRING of named bits (bit 0 is the most significant bit of the first
 * octet), with trailing zero bits removed as DER requires for named-bit lists
 * such as KeyUsage.
 */
export function encodeNamedBits(bits: readonly number[]): Uint8Array {
  if (bits.length === 0) return encodeBitString(new Uint8Array(0));
  const highest = Math.max(...bits);
  const octets = new Uint8Array((highest >> 3) + 1);
  for (const b of bits) octets[b >> 3] = (octets[b >> 3] as number) | (0x80 >> (b & 7));
  return encodeBitString(octets, 7 - (highest & 7));
}

/** Set bit numbers of a BIT STRING's content (first octet is the unused-bit count). */
export function decodeNamedBits(content: Uint8Array, offset = 0): Set<number> {
  const unused = content[0];
  if (unused === undefined || unused > 7 || (content.length === 1 && unused !== 0)) {
    throw derError(`invalid BIT STRING at offset ${offset}`);
  }
  const bits = new Set<number>();
  for (let i = 1; i < content.length; i++) {
    const octet = content[i] as number;
    for (let b = 0; b < 8; b++) if ((octet & (0x80 >> b)) !== 0) bits.add((i - 1) * 8 + b);
  }
  return bits;
}

/**
 * Explicit context tag `[n]` (constructed, wrapping complete elements), e.g.
 * the TBSCertificate `version [0]` and `extensions [3]`.
 */
export function encodeExplicit(n: number, ...inner: readonly Uint8Array[]): Uint8Array {
  if (n < 0 || n > 30) throw derError(`context tag [${n}] is not supported`);
  return encodeTlv(0xa0 | n, ...inner);
}

/** Implicit primitive context tag `[n]` around raw content octets (e.g. `dNSName [2]`, `keyIdentifier [0]`). */
export function encodeImplicitPrimitive(n: number, content: Uint8Array): Uint8Array {
  if (n < 0 || n > 30) throw derError(`context tag [${n}] is not supported`);
  return encodeTlv(0x80 | n, content);
}

// ---------------------------------------------------------------------------
// Time (RFC 5280 §4.1.2.5)

function two(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

function timeDigits(date: Date, fourDigitYear: boolean): Uint8Array {
  const t = date.getTime();
  if (!Number.isFinite(t)) throw derError("cannot encode an invalid Date");
  const y = date.getUTCFullYear();
  const year = fourDigitYear ? String(y).padStart(4, "0") : two(y % 100);
  const s = `${year}${two(date.getUTCMonth() + 1)}${two(date.getUTCDate())}${two(date.getUTCHours())}${two(date.getUTCMinutes())}${two(date.getUTCSeconds())}Z`;
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** UTCTime `YYMMDDHHMMSSZ` (years 1950–2049; sub-second precision is dropped). */
export function encodeUtcTime(date: Date): Uint8Array {
  const y = date.getUTCFullYear();
  if (!(y >= 1950 && y <= 2049)) throw derError(`UTCTime cannot hold year ${y}`);
  return encodeTlv(TAG.UTC_TIME, timeDigits(date, false));
}

/** GeneralizedTime `YYYYMMDDHHMMSSZ` (sub-second precision is dropped, as RFC 5280 requires). */
export function encodeGeneralizedTime(date: Date): Uint8Array {
  const y = date.getUTCFullYear();
  if (!(y >= 0 && y <= 9999)) throw derError(`GeneralizedTime cannot hold year ${y}`);
  return encodeTlv(TAG.GENERALIZED_TIME, timeDigits(date, true));
}

/** An RFC 5280 `Time`: UTCTime through 2049, GeneralizedTime from 2050. */
export function encodeTime(date: Date): Uint8Array {
  const y = date.getUTCFullYear();
  return y >= 1950 && y <= 2049 ? encodeUtcTime(date) : encodeGeneralizedTime(date);
}

/** Decodes a UTCTime or GeneralizedTime element in the RFC 5280 profile (seconds, `Z`). */
export function decodeTime(el: DerElement): Date {
  if (el.content.length > 32) throw derError(`time at offset ${el.start} is ${el.content.length} octets long`);
  const text = Buffer.from(el.content).toString("latin1");
  let m: RegExpExecArray | null;
  let year: number;
  if (el.tag === TAG.UTC_TIME && (m = /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text)) !== null) {
    const yy = Number(m[1]);
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
  } else if (el.tag === TAG.GENERALIZED_TIME && (m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text)) !== null) {
    year = Number(m[1]);
  } else {
    throw derError(`time at offset ${el.start} is not an RFC 5280 UTCTime/GeneralizedTime: ${JSON.stringify(text)}`);
  }
  const [month, day, hour, minute, second] = [m[2], m[3], m[4], m[5], m[6]].map(Number) as [number, number, number, number, number];
  const date = new Date(Date.UTC(year, month - 1, day, hour, minute, second));
  // Date.UTC rolls 31 February over into March; reject instead.
  if (date.getUTCMonth() !== month - 1 || date.getUTCDate() !== day || hour > 23 || minute > 59 || second > 59) {
    throw derError(`time at offset ${el.start} is not a valid date: ${JSON.stringify(text)}`);
  }
  if (year < 100) date.setUTCFullYear(year);
  return date;
}

/** Unsigned magnitude of a non-negative INTEGER's content (leading 0x00 sign octet removed). */
export function integerMagnitude(el: DerElement): Uint8Array {
  const c = el.content;
  if (c.length === 0) throw derError(`empty INTEGER at offset ${el.start}`);
  if (c.length > 1 && ((c[0] === 0 && ((c[1] as number) & 0x80) === 0) || (c[0] === 0xff && ((c[1] as number) & 0x80) !== 0))) {
    throw derError(`INTEGER at offset ${el.start} is not minimally encoded`);
  }
  if (((c[0] as number) & 0x80) !== 0) throw derError(`INTEGER at offset ${el.start} is negative`);
  return c[0] === 0 && c.length > 1 ? c.subarray(1) : c;
}

/** A small non-negative INTEGER's value (e.g. version, pathLenConstraint). */
export function decodeSmallInteger(el: DerElement): number {
  const mag = integerMagnitude(el);
  if (mag.length > 6) throw derError(`INTEGER at offset ${el.start} is too large`);
  let n = 0;
  for (const b of mag) n = n * 256 + b;
  return n;
}
