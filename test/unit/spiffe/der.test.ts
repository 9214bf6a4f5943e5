import { X509Certificate } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  concatDer,
  decodeNamedBits,
  decodeOid,
  decodeTime,
  encodeBigInt,
  encodeBitString,
  encodeLength,
  encodeNamedBits,
  encodeOid,
  encodeSequence,
  encodeTlv,
  MAX_DER_CHILDREN,
  encodeTime,
  encodeUnsignedInteger,
  encodeUtf8String,
  readChildren,
  readTlv,
  splitDerConcatenation,
  TAG,
} from "../../../spiffe/der.js";
import { isSigilError } from "../../../spiffe/errors.js";
import { makeLeaf, makeRoot } from "../../fixtures/x509/pki.js";

function derMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (isSigilError(e, "ERR_DER_INVALID")) return e.message;
    throw e;
  }
  throw new Error("expected ERR_DER_INVALID");
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");

describe("der: reader", () => {
  it("reads short and long-form lengths and nested children", () => {
    const inner = encodeUtf8String("x".repeat(200));
    const seq = encodeSequence(inner, encodeBigInt(5n));
    expect(hex(seq.subarray(0, 3))).toBe("3081ce") // 3 + 200 (UTF8String) + 3 (INTEGER) = 206;
    const el = readTlv(seq);
    expect(el.tag).toBe(TAG.SEQUENCE);
    expect(el.contentStart).toBe(3);
    expect(el.end).toBe(seq.length);
    const kids = readChildren(seq, el);
    expect(kids.map((k) => k.tag)).toEqual([TAG.UTF8_STRING, TAG.INTEGER]);
    expect(kids[0]?.content.length).toBe(200);
  });

  it("names the offset of a length that runs past the end", () => {
    expect(derMessage(() => readTlv(Uint8Array.of(0x30, 0x05, 0x02, 0x01)))).toBe(
      "der: element 0x30 at offset 0 has length 5 that runs past end (2 octets left)",
    );
    expect(derMessage(() => readTlv(Uint8Array.of(0x04, 0x00, 0x30, 0x82, 0x01), 2))).toBe("der: length at offset 3 runs past end");
  });

  it("rejects indefinite and non-minimal lengths", () => {
    expect(derMessage(() => readTlv(Uint8Array.of(0x30, 0x80, 0, 0)))).toMatch(/indefinite length at offset 1/);
    expect(derMessage(() => readTlv(Uint8Array.of(0x30, 0x81, 0x05, 1, 2, 3, 4, 5)))).toMatch(/not minimal DER/);
    expect(derMessage(() => readTlv(Uint8Array.of(0x30, 0x82, 0x00, 0x85, ...new Uint8Array(0x85))))).toMatch(/leading zero octet/);
  });
});

describe("der: splitDerConcatenation / concatDer", () => {
  const root = makeRoot("example.org");
  const leaf = makeLeaf(root, "spiffe://example.org/w");

  it("splits the Workload API concatenated-DER form back into certificates, and concatDer inverts it", () => {
    const joined = concatDer([leaf.der, root.der]);
    expect(joined.length).toBe(leaf.der.length + root.der.length);
    const parts = splitDerConcatenation(joined);
    expect(parts.map(hex)).toEqual([hex(leaf.der), hex(root.der)]);
    expect(new X509Certificate(parts[1] as Uint8Array).ca).toBe(true);
    expect(splitDerConcatenation(new Uint8Array(0))).toEqual([]);
  });

  it("reports trailing garbage with its offset", () => {
    const joined = concatDer([leaf.der, Uint8Array.of(0x00, 0x01)]);
    expect(derMessage(() => splitDerConcatenation(joined))).toBe(
      `der: trailing 2 octets at offset ${leaf.der.length} are not a DER SEQUENCE (tag 0x00)`,
    );
    const truncated = concatDer([leaf.der, root.der.subarray(0, 40)]);
    expect(derMessage(() => splitDerConcatenation(truncated))).toMatch(new RegExp(`at offset ${leaf.der.length} has length \\d+ that runs past end`));
  });

  it("recognises PEM text passed where DER is expected", () => {
    expect(derMessage(() => splitDerConcatenation(Buffer.from("-----BEGIN CERTIFICATE-----\n")))).toMatch(/looks like PEM/);
  });
});

describe("der: writers", () => {
  it("encodes lengths minimally", () => {
    expect(hex(encodeLength(0x7f))).toBe("7f");
    expect(hex(encodeLength(0x80))).toBe("8180");
    expect(hex(encodeLength(0x1234))).toBe("821234");
  });

  it("encodes INTEGERs from bytes and bigints as positive, minimal two's complement", () => {
    expect(hex(encodeUnsignedInteger(Uint8Array.of(0x00, 0x00, 0x80)))).toBe("02020080");
    expect(hex(encodeUnsignedInteger(Uint8Array.of(0x7f)))).toBe("02017f");
    expect(hex(encodeBigInt(0n))).toBe("020100");
    expect(hex(encodeBigInt(128n))).toBe("02020080");
    expect(hex(encodeBigInt(-129n))).toBe("0202ff7f");
    expect(hex(encodeBigInt(2n ** 64n))).toBe("0209010000000000000000");
  });

  it("encodes and decodes OIDs, including large arcs", () => {
    expect(hex(encodeOid("1.2.840.10045.4.3.2"))).toBe("06082a8648ce3d040302");
    expect(hex(encodeOid("2.5.29.17"))).toBe("0603551d11");
    for (const oid of ["1.3.6.1.5.5.7.3.1", "2.999.3", "1.2.840.113549.1.1.11"]) {
      const el = readTlv(encodeOid(oid));
      expect(decodeOid(el.content)).toBe(oid);
    }
    expect(derMessage(() => encodeOid("1.40.1"))).toMatch(/invalid object identifier/);
  });

  it("encodes named bit strings without trailing zero bits (KeyUsage)", () => {
    expect(hex(encodeNamedBits([0, 2, 4]))).toBe("030203a8"); // digitalSignature|keyEncipherment|keyAgreement
    expect(hex(encodeNamedBits([5, 6]))).toBe("03020106"); // keyCertSign|cRLSign
    expect(hex(encodeNamedBits([8]))).toBe("0303070080"); // decipherOnly
    expect([...decodeNamedBits(readTlv(encodeNamedBits([0, 5, 8])).content)]).toEqual([0, 5, 8]);
    expect(hex(encodeBitString(Uint8Array.of(0xff)))).toBe("030200ff");
  });

  it("encodes RFC 5280 times: UTCTime through 2049, GeneralizedTime from 2050, seconds only", () => {
    const utc = encodeTime(new Date("2049-12-31T23:59:59.999Z"));
    expect(utc[0]).toBe(TAG.UTC_TIME);
    expect(Buffer.from(utc.subarray(2)).toString()).toBe("491231235959Z");
    const gen = encodeTime(new Date("2050-01-01T00:00:00Z"));
    expect(gen[0]).toBe(TAG.GENERALIZED_TIME);
    expect(Buffer.from(gen.subarray(2)).toString()).toBe("20500101000000Z");
    expect(encodeTime(new Date("1999-05-06T07:08:09Z"))[0]).toBe(TAG.UTC_TIME);
    for (const iso of ["1950-01-01T00:00:00.000Z", "2049-12-31T23:59:59.000Z", "2050-01-01T00:00:00.000Z", "9999-12-31T23:59:59.000Z"]) {
      expect(decodeTime(readTlv(encodeTime(new Date(iso)))).toISOString()).toBe(iso);
    }
  });

  it("rejects times outside the RFC 5280 profile", () => {
    const bad = (tag: number, s: string): Uint8Array => Uint8Array.of(tag, s.length, ...Buffer.from(s));
    expect(derMessage(() => decodeTime(readTlv(bad(TAG.UTC_TIME, "300101000000+0100"))))).toMatch(/not an RFC 5280/);
    expect(derMessage(() => decodeTime(readTlv(bad(TAG.GENERALIZED_TIME, "20300101000000.5Z"))))).toMatch(/not an RFC 5280/);
    expect(derMessage(() => decodeTime(readTlv(bad(TAG.UTC_TIME, "300231000000Z"))))).toMatch(/not a valid date/);
  });
});

describe("readChildren bounds", () => {
  const seqOfEmpty = (n: number): Uint8Array => {
    const body = new Uint8Array(n * 2);
    for (let i = 0; i < n; i++) body[i * 2] = 0x30;
    return encodeTlv(0x30, body);
  };

  it(`reads up to ${MAX_DER_CHILDREN} children and refuses more, naming the cap`, () => {
    const ok = seqOfEmpty(MAX_DER_CHILDREN);
    expect(readChildren(ok, readTlv(ok, 0))).toHaveLength(MAX_DER_CHILDREN);
    // A 10 MB SEQUENCE of empty SEQUENCEs is refused after the cap, not walked to the end.
    const hostile = seqOfEmpty(5_000_000);
    let caught: unknown;
    try {
      readChildren(hostile, readTlv(hostile, 0));
    } catch (e) {
      caught = e;
    }
    expect(isSigilError(caught, "ERR_DER_INVALID")).toBe(true);
    expect((caught as Error).message).toBe(`der: element at offset 0 has more than ${MAX_DER_CHILDREN} children`);
  });
});
