import { describe, expect, it } from "vitest";
import { isSigilError } from "../../../../spiffe/errors.js";
import { canonicalJson, credentialLookupKey, decodeLogEntry, deliveredLookupKey, encodeCredentialEntries, encodeCredentialEntry, encodeLogEntry, logLookupKey, LOG_CREDENTIAL_KINDS, MAX_LOG_AUDIENCE_BYTES, MAX_LOG_AUDIENCES, type LogCredentialFields, type SigilLogEntry } from "../../../../spiffe/tlog/sigil-entry.js";

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

// A small seeded generator (mulberry32), so a failure names a reproducible case.
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("encodeCredentialEntry (the fast encoder of credential entries)", () => {
  const rnd = prng(8785);
  const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
  // Characters JSON escapes or RFC 8785 sorts or encodes specially, and some ordinary ones.
  const alphabet = ["a", "Z", "0", "/", ":", " ", '"', "\\", "\n", "\u0000", "\u001f", "\u007f", "\u0085", "é", "€", "\u2028", "\ufb33", "😀", "\ud800", "\udfff"];
  const str = (rareOdd: boolean): string => {
    const n = Math.floor(rnd() * 12);
    let out = "";
    for (let i = 0; i < n; i++) out += rareOdd && rnd() < 0.3 ? pick(alphabet) : pick(["a", "b", "-", "/", ":", "9"]);
    return out;
  };
  const hex = (n: number): string => Array.from({ length: n }, () => pick([..."0123456789abcdef"])).join("");
  const int = (): number => pick([0, 1, 59, 1893456000, Number.MAX_SAFE_INTEGER, Math.floor(rnd() * 2 ** 40)]);

  /** A random entry: usually valid, sometimes with one thing wrong (a generic-path refusal). */
  function randomCase(odd: boolean): { fields: LogCredentialFields; der: Uint8Array | undefined } {
    const o: Record<string, unknown> = { v: 1, kind: pick(LOG_CREDENTIAL_KINDS.filter((k) => k !== "jwt-svid")), serial: (pick(["1", "a", "f"]) + hex(Math.floor(rnd() * 39))).replace(/^0+/, ""), spiffeId: `spiffe://example.org/${str(odd)}` };
    const optional: [string, () => unknown][] = [
      ["entryId", () => str(odd)],
      ["entryRevision", int],
      ["selectors", () => Array.from({ length: Math.floor(rnd() * 4) }, () => str(odd))],
      ["agentId", () => str(odd)],
      ["evidenceSha256", () => hex(64)],
      ["publicKeySha256", () => hex(64)],
      ["authorityKeyId", () => str(odd)],
      ["requestedBy", () => str(odd)],
    ];
    for (const [k, gen] of optional) if (rnd() < 0.7) o[k] = gen();
    for (const k of ["notBefore", "notAfter", "issuedAt"]) o[k] = int();
    if (odd && rnd() < 0.5) {
      // One thing the generic encoder refuses or handles otherwise.
      const breakers: (() => void)[] = [
        () => (o["serial"] = "0" + hex(4)),
        () => (o["evidenceSha256"] = hex(63)),
        () => (o["notAfter"] = -1),
        () => (o["entryRevision"] = 1.5),
        () => (o["extra"] = "x"),
        () => (o["jwtSha256"] = hex(64)),
        () => (o["audience"] = ["a"]),
        () => delete o["serial"],
        () => delete o["issuedAt"],
        () => (o["v"] = 2),
        () => (o["kind"] = "nope"),
        () => (o["selectors"] = ["a", 1]),
        () => (o["spiffeId"] = 7),
        () => (o["requestedBy"] = "x".repeat(70_000)),
        () => (o["agentId"] = undefined),
      ];
      pick(breakers)();
    }
    const der = rnd() < 0.8 ? Uint8Array.from({ length: Math.floor(rnd() * 1200) + 1 }, () => Math.floor(rnd() * 256)) : undefined;
    return { fields: o as unknown as LogCredentialFields, der };
  }

  const outcome = (f: () => Buffer): string => {
    try {
      return `ok ${f().toString("hex")}`;
    } catch (e) {
      return `throws ${isSigilError(e) ? e.code : "?"} ${(e as Error).message}`;
    }
  };

  it("writes the same bytes as the generic RFC 8785 encoder, and refuses what it refuses with the same error, over 20,000 random entries", () => {
    let accepted = 0;
    for (let i = 0; i < 20_000; i++) {
      const { fields, der } = randomCase(i % 2 === 1);
      // The certificate is written from the DER; the generic encoder is given its base64.
      const generic = outcome(() => encodeLogEntry((der === undefined ? fields : { ...fields, cert: Buffer.from(der).toString("base64") }) as SigilLogEntry));
      const fast = outcome(() => encodeCredentialEntry(fields, der));
      if (fast !== generic) throw new Error(`case ${i}: ${JSON.stringify(fields)}: fast ${fast.slice(0, 200)} generic ${generic.slice(0, 200)}`);
      if (generic.startsWith("ok")) accepted++;
    }
    // Both kinds of case were exercised.
    expect(accepted).toBeGreaterThan(10_000);
    expect(accepted).toBeLessThan(20_000);
  });

  it("encodes a batch as the entries one by one, in buffers that later batches leave alone", () => {
    const generic = ({ fields, der }: { fields: LogCredentialFields; der: Uint8Array | undefined }): Buffer =>
      encodeLogEntry((der === undefined ? fields : { ...fields, cert: Buffer.from(der).toString("base64") }) as SigilLogEntry);
    // Enough entries (about 1 KB each) to fill the scratch more than once, and a JWT entry (the generic path) among them.
    const cases = Array.from({ length: 120 }, () => randomCase(false));
    const batch = cases.map(({ fields, der }) => ({ fields, certDer: der }));
    batch.splice(50, 0, { fields: jwt as LogCredentialFields, certDer: undefined });
    const want = batch.map((b, i) => (i === 50 ? encodeLogEntry(jwt) : generic({ fields: b.fields, der: b.certDer })));
    const got = encodeCredentialEntries(batch);
    encodeCredentialEntries(batch.slice().reverse());
    expect(got.map((b) => b.toString("hex"))).toEqual(want.map((b) => b.toString("hex")));
    // An invalid entry in a batch is refused as it is alone.
    const bad = { fields: { ...(cases[0] as { fields: LogCredentialFields }).fields, notAfter: -1 }, certDer: undefined };
    expect(() => encodeCredentialEntries([batch[0] as (typeof batch)[number], bad])).toThrow(/notAfter must be a non-negative integer/);
  });

  it("hands a JWT entry to the generic encoder", () => {
    expect(encodeCredentialEntry(jwt as LogCredentialFields)).toEqual(encodeLogEntry(jwt));
  });

  it("refuses an empty certificate as the generic encoder does (it is not valid base64 there)", () => {
    const fields: LogCredentialFields = { v: 1, kind: "x509-svid", serial: "1", spiffeId: "spiffe://e/x", notBefore: 1, notAfter: 2, issuedAt: 3, authorityKeyId: "k", requestedBy: "admin:local" };
    expect(() => encodeCredentialEntry(fields, new Uint8Array(0))).toThrow(/cert must be padded standard base64/);
  });
});
