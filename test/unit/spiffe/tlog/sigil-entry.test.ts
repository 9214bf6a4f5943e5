import { describe, expect, it } from "vitest";
import { isSigilError } from "../../../../spiffe/errors.js";
import { canonicalJson, credentialLookupKey, decodeLogEntry, deliveredLookupKey, encodeLogEntry, logLookupKey, MAX_LOG_AUDIENCE_BYTES, MAX_LOG_AUDIENCES, type SigilLogEntry } from "../../../../spiffe/tlog/sigil-entry.js";

const jwt: SigilLogEntry = {
  v: 1, kind: "jwt-svid", jwtSha256: "a".repeat(64), spiffeId: "spiffe://example.org/web", entryId: "e1", entryRevision: 3,
  selectors: ["unix:uid:1000"], agentId: "spiffe://example.org/spire/agent/x", authorityKeyId: "jwt-A", notBefore: 1893456000,
  notAfter: 1893456300, issuedAt: 1893456000, requestedBy: "agent:spiffe://example.org/spire/agent/x", audience: ["db", "é"],
};

function refused(bytes: string | Uint8Array, message: RegExp): void {
  try {
    decodeLogEntry(typeof bytes === "string" ? Buffer.from(bytes, "utf8") : bytes);
  } catch (e) {
    expect(isSigilError(e, "ERR_TLOG_MALFORMED")).toBe(true);
    expect((e as Error).message).toMatch(message);
    return;
  }
  throw new Error("accepted");
}

describe("Sigil log entries (RFC 8785 canonical JSON)", () => {
  it("encodes with sorted keys, no whitespace, UTF-8, and decodes back", () => {
    const bytes = encodeLogEntry(jwt);
    expect(bytes.toString("utf8")).toBe(
      `{"agentId":"spiffe://example.org/spire/agent/x","audience":["db","é"],"authorityKeyId":"jwt-A","entryId":"e1","entryRevision":3,"issuedAt":1893456000,"jwtSha256":"${"a".repeat(64)}","kind":"jwt-svid","notAfter":1893456300,"notBefore":1893456000,"requestedBy":"agent:spiffe://example.org/spire/agent/x","selectors":["unix:uid:1000"],"spiffeId":"spiffe://example.org/web","v":1}`,
    );
    expect(bytes.includes(Buffer.from([0xc3, 0xa9]))).toBe(true); // é as UTF-8, not \u00e9
    expect(decodeLogEntry(bytes)).toEqual(jwt);
    expect(logLookupKey(jwt)).toBe(`jwt:${"a".repeat(64)}`);
  });

  it("follows RFC 8785 for key order by UTF-16 code units and string escapes", () => {
    // RFC 8785 §3.2.3: "\u20ac" (€) sorts before "\ud83d\ude00" (😀), which sorts before "\ufb33".
    expect(canonicalJson({ "\ufb33": 1, "😀": 2, "€": 3, "1": 4, a: [true, null, "\u0007\n\"\\/"] })).toBe('{"1":4,"a":[true,null,"\\u0007\\n\\"\\\\/"],"\u20ac":3,"\ud83d\ude00":2,"\ufb33":1}');
  });

  it("refuses non-canonical spellings and invalid fields, naming them", () => {
    const canonical = encodeLogEntry(jwt).toString("utf8");
    refused(canonical.replace('{"agentId"', '{ "agentId"'), /canonical form/);
    refused(canonical.replace('"entryRevision":3', '"entryRevision":3.0'), /canonical form/);
    refused('{"v":1,"kind":"x509-svid","spiffeId":"s","notBefore":1,"notAfter":2,"issuedAt":1}', /serial is required/);
    refused('{"issuedAt":1,"kind":"x509-svid","notAfter":2,"notBefore":1,"serial":"0a","spiffeId":"s","v":1}', /serial must be lower-case hex without leading zeros/);
    refused('{"issuedAt":1,"kind":"x509-svid","notAfter":2,"notBefore":-1,"serial":"a","spiffeId":"s","v":1}', /notBefore must be a non-negative integer/);
    refused('{"extra":1,"issuedAt":1,"kind":"x509-svid","notAfter":2,"notBefore":1,"serial":"a","spiffeId":"s","v":1}', /unknown field "extra"/);
    refused('{"kind":"x509-svid","v":2}', /v must be 1/);
    refused('{"kind":"nope","v":1}', /kind must be one of/);
    refused(Buffer.from([0x7b, 0xff, 0x7d]), /not valid UTF-8/);
    refused(Buffer.alloc(65_536, 0x20), /at most 65535 bytes/);
    expect(() => encodeLogEntry({ ...jwt, spiffeId: "\ud800" } as SigilLogEntry)).toThrow(/lone UTF-16 surrogate/);
  });

  it("bounds a new JWT entry's audiences at what minting accepts (32 of 256 UTF-8 bytes, no control characters)", () => {
    // The worst case now: every byte escaped, as a backslash (2 bytes each).
    const widest = { ...jwt, audience: Array.from({ length: MAX_LOG_AUDIENCES }, () => "\\".repeat(MAX_LOG_AUDIENCE_BYTES)) } as SigilLogEntry;
    expect(encodeLogEntry(widest).length).toBeLessThan(17_000 + encodeLogEntry(jwt).length);
    expect(() => encodeLogEntry({ ...jwt, audience: Array.from({ length: 33 }, (_, i) => `a${i}`) } as SigilLogEntry)).toThrow("tlog entry: jwt-svid entry: audience has 33 audiences, more than the maximum 32");
    expect(() => encodeLogEntry({ ...jwt, audience: ["db", "x".repeat(257)] } as SigilLogEntry)).toThrow("tlog entry: jwt-svid entry: audience[1] is longer than the maximum 256 bytes (257)");
    // Bytes, not UTF-16 units: 129 × é is 258 bytes.
    expect(() => encodeLogEntry({ ...jwt, audience: ["é".repeat(129)] } as SigilLogEntry)).toThrow("audience[0] is longer than the maximum 256 bytes (258)");
    expect(encodeLogEntry({ ...jwt, audience: ["é".repeat(128)] } as SigilLogEntry).length).toBeGreaterThan(256);
    for (const [c, code] of [["\u0001", "0001"], ["\u007f", "007f"], ["\u0085", "0085"], ["\n", "000a"]] as const) {
      expect(() => encodeLogEntry({ ...jwt, audience: ["db", `a${c}`] } as SigilLogEntry)).toThrow(`tlog entry: jwt-svid entry: audience[1] contains control character U+${code} at offset 1`);
    }
  });

  it("decodes a JWT entry written before the audience caps (33 audiences, a long one, a control character)", () => {
    // What a server before the caps wrote: canonical, under 64 KiB, over today's caps.
    const old = { ...jwt, audience: ["https://api.example.com/" + "a".repeat(280), ...Array.from({ length: 32 }, (_, i) => `a${i}\u0001`)] };
    const bytes = Buffer.from(canonicalJson(old), "utf8");
    expect(decodeLogEntry(bytes)).toEqual(old);
    expect(() => encodeLogEntry(old as SigilLogEntry)).toThrow(/audience has 33 audiences/);
    // Canonical form and size are still checked.
    refused(Buffer.from(JSON.stringify(old, null, 1)), /canonical form/);
  });

  it("authority entries and lookup keys", () => {
    const a: SigilLogEntry = { v: 1, kind: "authority", event: "revoked", authorityKind: "x509", authorityKeyId: "x509-CA-B", serverId: "s1", at: 5, cert: "MAA=" };
    expect(encodeLogEntry(a).toString()).toBe('{"at":5,"authorityKeyId":"x509-CA-B","authorityKind":"x509","cert":"MAA=","event":"revoked","kind":"authority","serverId":"s1","v":1}');
    expect(logLookupKey(a)).toBe("authority:x509:x509-CA-B:revoked");
    expect(credentialLookupKey({ serial: "00AB" })).toBe("serial:ab");
    expect(() => credentialLookupKey({ jwtSha256: "xyz" })).toThrow(/64 hex digits/);
  });

  it("delivered entries: byte for byte, lookup keys, and exactly one of serial and jwtSha256", () => {
    const d: SigilLogEntry = { v: 1, kind: "delivered", serial: "3c1f", spiffeId: "spiffe://example.org/web", agentId: "spiffe://example.org/spire/agent/x", deliveredAt: 1893456002, issuanceIndex: 1234 };
    const bytes = encodeLogEntry(d);
    expect(bytes.toString()).toBe('{"agentId":"spiffe://example.org/spire/agent/x","deliveredAt":1893456002,"issuanceIndex":1234,"kind":"delivered","serial":"3c1f","spiffeId":"spiffe://example.org/web","v":1}');
    expect(decodeLogEntry(bytes)).toEqual(d);
    expect(logLookupKey(d)).toBe("delivered:3c1f");
    expect(deliveredLookupKey({ serial: "003C1F" })).toBe("delivered:3c1f");
    const j: SigilLogEntry = { v: 1, kind: "delivered", jwtSha256: "b".repeat(64), spiffeId: "spiffe://example.org/web", agentId: "spiffe://example.org/spire/agent/x", deliveredAt: 1, issuanceIndex: 0 };
    expect(logLookupKey(j)).toBe(`delivered:jwt:${"b".repeat(64)}`);
    expect(deliveredLookupKey({ jwtSha256: "B".repeat(64) })).toBe(logLookupKey(j));
    refused('{"agentId":"a","deliveredAt":1,"issuanceIndex":0,"kind":"delivered","spiffeId":"spiffe://example.org/web","v":1}', /exactly one of serial and jwtSha256/);
    refused(`{"agentId":"a","deliveredAt":1,"issuanceIndex":0,"jwtSha256":"${"b".repeat(64)}","kind":"delivered","serial":"1","spiffeId":"spiffe://example.org/web","v":1}`, /exactly one of serial and jwtSha256/);
    refused('{"agentId":"a","deliveredAt":1,"issuanceIndex":0,"kind":"delivered","serial":"1","v":1}', /spiffeId is required/);
  });
});
