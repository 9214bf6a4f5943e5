/**
 * SPIFFE-ID standard conformance (spec/spiffe-requirements.md §1.1): one test per
 * requirement that applies to parsing and comparing IDs. ID-14's issuance half and
 * ID-18 … ID-23 (authorities, signed content, document types) are covered in
 * id-svid-authority.test.ts next to the X.509 and JWT builders.
 */
import { describe, expect, it } from "vitest";
import { isSigilError } from "../../spiffe/errors.js";
import {
  MAX_SPIFFE_ID_BYTES,
  MAX_TRUST_DOMAIN_BYTES,
  parseSpiffeId,
  parseTrustDomain,
  parseTrustDomainIdString,
  spiffeIdFromPath,
} from "../../spiffe/id.js";

function rejects(input: string, message?: RegExp): void {
  let caught: unknown;
  try {
    parseSpiffeId(input);
  } catch (e) {
    caught = e;
  }
  expect(isSigilError(caught, "ERR_SPIFFE_ID_INVALID"), `${input} should be rejected`).toBe(true);
  if (message) expect((caught as Error).message).toMatch(message);
}

function accepts(input: string): void {
  expect(parseSpiffeId(input).toString()).toBe(input);
}

describe("SPIFFE-ID conformance", () => {
  it("ID-1: the scheme must be spiffe", () => {
    rejects("https://td/a", /scheme must be 'spiffe'/);
    rejects("spiff://td/a");
    rejects("td/a");
    rejects("SPIFFE://td/a", /lowercase/);
    accepts("spiffe://td/a");
  });

  it("ID-2: the trust domain must be present and non-empty", () => {
    rejects("spiffe:///a", /trust domain is missing/);
    rejects("spiffe://", /trust domain is missing/);
    rejects("spiffe:/a");
    rejects("spiffe:a");
  });

  it("ID-3: no query and no fragment", () => {
    rejects("spiffe://td/a?x=1", /query/);
    rejects("spiffe://td/a#f", /fragment/);
    rejects("spiffe://td?x", /query/);
  });

  it("ID-4: no userinfo and no port in the authority", () => {
    rejects("spiffe://u@td/a", /userinfo/);
    rejects("spiffe://u:p@td/a", /userinfo/);
    rejects("spiffe://td:443/a", /port/);
  });

  it("ID-5: the trust domain is lowercase (upper case rejected, never normalised)", () => {
    rejects("spiffe://TD/a", /upper-case 'T' at offset 0/);
    rejects("spiffe://Example.org/a", /lowercase/);
    expect(() => parseTrustDomain("Example.org")).toThrow(/lowercase/);
  });

  it("ID-6: trust-domain characters are limited to [a-z0-9._-]", () => {
    rejects("spiffe://[::1]/a", /IPv6/);
    rejects("spiffe://td~x/a", /'~'/);
    rejects("spiffe://a b/a", /' '/);
    rejects("spiffe://tdé/a", /'é'/);
    accepts("spiffe://my_td.ex-1.org/a");
    accepts("spiffe://10.0.0.1/a");
  });

  it("ID-7: no percent-encoding in the host", () => {
    rejects("spiffe://ex%61mple/a", /percent-encoding/);
    expect(() => parseTrustDomain("ex%61mple")).toThrow(/percent-encoding at offset 2/);
  });

  it("ID-8: trust domains that look like IPs are not canonicalised or resolved", () => {
    const a = parseSpiffeId("spiffe://010.0.0.1/x");
    const b = parseSpiffeId("spiffe://10.0.0.1/x");
    expect(a.trustDomain.name).toBe("010.0.0.1");
    expect(a.equals(b)).toBe(false);
    expect(a.trustDomain.equals(b.trustDomain)).toBe(false);
  });

  it("ID-9: no percent-encoding in the path", () => {
    rejects("spiffe://td/a%2Fb", /path segment 1 contains '%'/);
    rejects("spiffe://td/a/%41", /path segment 2 contains '%'/);
  });

  it("ID-10: no empty, '.' or '..' segments; '...' and '.a' are legal", () => {
    rejects("spiffe://td//a", /path segment 1 is empty/);
    rejects("spiffe://td/./a", /path segment 1 is '\.'/);
    rejects("spiffe://td/a/..", /path segment 2 is '\.\.'/);
    rejects("spiffe://td/a/../c", /path segment 2 is '\.\.'/);
    accepts("spiffe://td/.../a.b");
    accepts("spiffe://td/.a");
  });

  it("ID-11: no trailing slash; the trust-domain ID has no path", () => {
    rejects("spiffe://td/a/", /trailing slash/);
    rejects("spiffe://td/", /trailing slash/);
    const tdId = parseSpiffeId("spiffe://td");
    expect(tdId.isTrustDomainId()).toBe(true);
    expect(tdId.path).toBe("");
  });

  it("ID-12: path characters are limited to [a-zA-Z0-9._-]", () => {
    for (const bad of ["a:b", "a@b", "a+b", "ä", "a~b", "a b", "a\u0000b"]) {
      rejects(`spiffe://td/${bad}`, /path segment 1 contains/);
    }
    accepts("spiffe://td/Ns/A_b-1.2");
  });

  it("ID-13: hierarchical paths round-trip unchanged", () => {
    const id = parseSpiffeId("spiffe://td/ns/x/sa/y");
    expect(id.segments()).toEqual(["ns", "x", "sa", "y"]);
    expect(id.toString()).toBe("spiffe://td/ns/x/sa/y");
    expect(JSON.stringify({ id })).toBe('{"id":"spiffe://td/ns/x/sa/y"}');
  });

  it("ID-14: IDs up to 2048 bytes parse", () => {
    const prefix = "spiffe://td/";
    const id = prefix + "a".repeat(MAX_SPIFFE_ID_BYTES - prefix.length);
    expect(Buffer.byteLength(id)).toBe(2048);
    accepts(id);
  });

  it("ID-15: IDs longer than 2048 bytes are refused, never generated", () => {
    const prefix = "spiffe://td/";
    rejects(prefix + "a".repeat(MAX_SPIFFE_ID_BYTES - prefix.length + 1), /longer than 2048 bytes/);
    const td = parseTrustDomain("td");
    expect(() => spiffeIdFromPath(td, "/" + "a".repeat(2048))).toThrow(/longer than 2048 bytes/);
  });

  it("ID-16: trust-domain names are at most 255 bytes", () => {
    const ok = "a".repeat(MAX_TRUST_DOMAIN_BYTES);
    expect(parseTrustDomain(ok).name).toBe(ok);
    expect(() => parseTrustDomain(ok + "a")).toThrow(/longer than 255 bytes/);
    rejects(`spiffe://${ok}a/x`, /longer than 255 bytes/);
  });

  it("ID-17: paths compare case-sensitively; trust domains are only ever lowercase", () => {
    expect(parseSpiffeId("spiffe://td/A").equals(parseSpiffeId("spiffe://td/a"))).toBe(false);
    expect(parseSpiffeId("spiffe://td/a").equals(parseSpiffeId("spiffe://td/a"))).toBe(true);
    // Mixed-case trust domains never get in, so a raw string compare of names is sound.
    rejects("spiffe://Td/a");
  });
});

describe("trust domain forms (pitfall A11)", () => {
  it("parseTrustDomain takes the bare name and refuses the spiffe:// form", () => {
    expect(parseTrustDomain("example.org").idString()).toBe("spiffe://example.org");
    expect(() => parseTrustDomain("spiffe://example.org")).toThrow(/expected a bare trust-domain name/);
  });

  it("parseTrustDomainIdString takes spiffe://name and refuses a path", () => {
    expect(parseTrustDomainIdString("spiffe://example.org").name).toBe("example.org");
    expect(() => parseTrustDomainIdString("spiffe://example.org/x")).toThrow(/has a path/);
  });

  it("errors carry a stable code and never escape as TypeError for non-string input", () => {
    for (const bad of [undefined, null, 42, {}, []] as unknown[]) {
      let caught: unknown;
      try {
        parseSpiffeId(bad as string);
      } catch (e) {
        caught = e;
      }
      expect(isSigilError(caught, "ERR_SPIFFE_ID_INVALID")).toBe(true);
    }
  });
});
