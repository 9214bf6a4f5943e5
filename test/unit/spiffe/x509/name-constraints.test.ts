/**
 * Name constraints in X509-SVID verification, mirroring the cases of Go's
 * crypto/x509 name_constraints_test.go that matter to SPIFFE: URI and DNS
 * subtrees (permitted, excluded, leading dot, case), email and IP subtrees,
 * constraints on intermediates and on the trust anchor, the names of
 * intermediates being checked too, critical and non-critical extensions
 * treated alike, unprocessable forms, and malformed extensions.
 */
import { describe, expect, it } from "vitest";
import { X509Bundle } from "../../../../spiffe/bundle/x509-bundle.js";
import { encodeSequence, encodeTlv } from "../../../../spiffe/der.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import { decodeCertificate } from "../../../../spiffe/x509/decode-certificate.js";
import { encodeExtension } from "../../../../spiffe/x509/extensions.js";
import { MAX_NAME_CONSTRAINT_COMPARISONS } from "../../../../spiffe/x509/name-constraints.js";
import { EXT } from "../../../../spiffe/x509/oids.js";
import { StaticX509BundleSource } from "../../../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../../../spiffe/x509/verify.js";
import { craftCertificate, craftIntermediate, makeLeaf, makeRoot, NOW, trusting, type TestCa } from "../../../fixtures/x509/pki.js";
import { altNamesExtension, ipOctets, nameConstraintsExtension, nameConstraintsValue, type ConstraintSpec } from "../../../fixtures/x509/name-constraints.js";

function errorOf(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (e) {
    if (isSigilError(e)) return { code: e.code, message: e.message };
    throw e;
  }
  throw new Error("expected a SigilError, but the call succeeded");
}

const ID = "spiffe://example.org/ns/prod/sa/api";

/** root -> intermediate carrying `spec` (under trust domain `td`). */
function constrained(spec: ConstraintSpec, td = "example.org"): { root: TestCa; ca: TestCa } {
  const root = makeRoot(td);
  return { root, ca: craftIntermediate(root, { extraExtensions: [nameConstraintsExtension(spec)] }) };
}

/** Verifies a leaf of `ca` holding `sans` besides its SPIFFE ID; returns the ID or the error message. */
function verdict(ca: TestCa, root: TestCa, sans: readonly string[], id = `spiffe://${ca.td.name}/w`): string {
  const leaf = craftCertificate(ca, { noSan: true, extraExtensions: [altNamesExtension([`uri:${id}`, ...sans])] });
  try {
    return verifyX509Svid([leaf.der, ...ca.intermediates], trusting(root), { now: NOW }).id.toString();
  } catch (e) {
    if (isSigilError(e, "ERR_X509_CHAIN_INVALID")) return e.message;
    throw e;
  }
}

/** A bundle that trusts `anchor` directly (a constrained trust anchor). */
function anchoredAt(anchor: TestCa): StaticX509BundleSource {
  return new StaticX509BundleSource([new X509Bundle(parseTrustDomain(anchor.td.name), [anchor.der])]);
}

describe.each([false, true])("name constraints with critical=%s are enforced alike", (critical) => {
  const nc = (spec: ConstraintSpec): ConstraintSpec => ({ ...spec, critical });

  it("URI: the constraint is the URI's host, exactly and case-insensitively", () => {
    const ok = constrained(nc({ permitted: ["uri:example.org"] }));
    expect(verdict(ok.ca, ok.root, [])).toBe("spiffe://example.org/w");
    const upper = constrained(nc({ permitted: ["uri:EXAMPLE.org"] }));
    expect(verdict(upper.ca, upper.root, [])).toBe("spiffe://example.org/w");
    const other = constrained(nc({ permitted: ["uri:other.org"] }));
    expect(verdict(other.ca, other.root, [])).toBe(
      'x509svid: the leaf\'s URI SAN "spiffe://example.org/w" is not permitted by the name constraints of intermediate 1',
    );
    // Without a leading dot a URI constraint is one host, not its subdomains (RFC 5280; Go since golang/go#81285).
    const parent = constrained(nc({ permitted: ["uri:example.org"] }), "prod.example.org");
    expect(verdict(parent.ca, parent.root, [])).toMatch(/URI SAN "spiffe:\/\/prod\.example\.org\/w" is not permitted/);
  });

  it("URI: a leading dot permits subdomains but not the host itself", () => {
    const sub = constrained(nc({ permitted: ["uri:.example.org"] }), "prod.example.org");
    expect(verdict(sub.ca, sub.root, [])).toBe("spiffe://prod.example.org/w");
    const self = constrained(nc({ permitted: ["uri:.example.org"] }));
    expect(verdict(self.ca, self.root, [])).toMatch(/URI SAN "spiffe:\/\/example\.org\/w" is not permitted by the name constraints of intermediate 1/);
  });

  it("URI: excluded subtrees refuse, and win over permitted ones", () => {
    const excluded = constrained(nc({ excluded: ["uri:example.org"] }));
    expect(verdict(excluded.ca, excluded.root, [])).toBe(
      'x509svid: the leaf\'s URI SAN "spiffe://example.org/w" is excluded by the name constraint "example.org" of intermediate 1',
    );
    const both = constrained(nc({ permitted: ["uri:example.org"], excluded: ["uri:example.org"] }));
    expect(verdict(both.ca, both.root, [])).toMatch(/is excluded by the name constraint "example\.org"/);
    const unrelated = constrained(nc({ excluded: ["uri:.example.org", "uri:other.org"] }));
    expect(verdict(unrelated.ca, unrelated.root, [])).toBe("spiffe://example.org/w");
  });

  it("DNS: example.org covers itself and subdomains, .example.org only subdomains, at label boundaries", () => {
    const dns = constrained(nc({ permitted: ["dns:example.org"] }));
    expect(verdict(dns.ca, dns.root, ["dns:example.org", "dns:api.EXAMPLE.org", "dns:a.b.example.org"])).toBe("spiffe://example.org/w");
    expect(verdict(dns.ca, dns.root, ["dns:badexample.org"])).toMatch(/DNS SAN "badexample\.org" is not permitted/);
    const dotted = constrained(nc({ permitted: ["dns:.example.org"] }));
    expect(verdict(dotted.ca, dotted.root, ["dns:api.example.org"])).toBe("spiffe://example.org/w");
    expect(verdict(dotted.ca, dotted.root, ["dns:example.org"])).toMatch(/DNS SAN "example\.org" is not permitted/);
  });

  it("DNS: exclusions refuse subdomains, and a wildcard that could stand for an excluded host", () => {
    const ex = constrained(nc({ excluded: ["dns:internal.example.org", "dns:admin.example.org"] }));
    expect(verdict(ex.ca, ex.root, ["dns:api.example.org"])).toBe("spiffe://example.org/w");
    expect(verdict(ex.ca, ex.root, ["dns:db.internal.example.org"])).toMatch(/"db\.internal\.example\.org" is excluded by the name constraint "internal\.example\.org"/);
    expect(verdict(ex.ca, ex.root, ["dns:*.example.org"])).toMatch(/DNS SAN "\*\.example\.org" is excluded by the name constraint "(admin|internal)\.example\.org"/);
  });

  it("subtrees of one form do not restrict names of another", () => {
    const dnsOnly = constrained(nc({ permitted: ["dns:example.org"] }));
    expect(verdict(dnsOnly.ca, dnsOnly.root, [])).toBe("spiffe://example.org/w");
    const ipOnly = constrained(nc({ permitted: ["ip:10.0.0.0/8"] }));
    expect(verdict(ipOnly.ca, ipOnly.root, ["dns:anything.test"])).toBe("spiffe://example.org/w");
  });

  it("IP: address and mask; IPv4 and IPv6 never match each other", () => {
    const v4 = constrained(nc({ permitted: ["ip:10.0.0.0/8"], excluded: ["ip:10.9.0.0/16"] }));
    expect(verdict(v4.ca, v4.root, ["ip:10.1.2.3"])).toBe("spiffe://example.org/w");
    expect(verdict(v4.ca, v4.root, ["ip:192.168.1.1"])).toMatch(/IP SAN "192\.168\.1\.1" is not permitted/);
    expect(verdict(v4.ca, v4.root, ["ip:10.9.1.1"])).toMatch(/IP SAN "10\.9\.1\.1" is excluded by the name constraint "10\.9\.0\.0\/255\.255\.0\.0"/);
    expect(verdict(v4.ca, v4.root, ["ip:2001:db8::1"])).toMatch(/IP SAN "2001:db8:0:0:0:0:0:1" is not permitted/);
    const v6 = constrained(nc({ permitted: ["ip:2001:db8::/32"] }));
    expect(verdict(v6.ca, v6.root, ["ip:2001:db8:1::5"])).toBe("spiffe://example.org/w");
    expect(verdict(v6.ca, v6.root, ["ip:10.0.0.1"])).toMatch(/IP SAN "10\.0\.0\.1" is not permitted/);
    expect(verdict(v6.ca, v6.root, ["ip:::ffff:10.0.0.1"])).toMatch(/IPv4-mapped IPv6 address/);
  });

  it("email: a host matches exactly, a leading dot subdomains, a mailbox exactly (local part case-sensitive)", () => {
    const host = constrained(nc({ permitted: ["email:example.org"] }));
    expect(verdict(host.ca, host.root, ["email:alice@EXAMPLE.org"])).toBe("spiffe://example.org/w");
    expect(verdict(host.ca, host.root, ["email:alice@mail.example.org"])).toMatch(/email SAN "alice@mail\.example\.org" is not permitted/);
    const sub = constrained(nc({ permitted: ["email:.example.org"] }));
    expect(verdict(sub.ca, sub.root, ["email:alice@mail.example.org"])).toBe("spiffe://example.org/w");
    expect(verdict(sub.ca, sub.root, ["email:alice@example.org"])).toMatch(/is not permitted/);
    const mailbox = constrained(nc({ permitted: ["email:alice@example.org"] }));
    expect(verdict(mailbox.ca, mailbox.root, ['email:"alice"@Example.org'])).toBe("spiffe://example.org/w");
    expect(verdict(mailbox.ca, mailbox.root, ["email:Alice@example.org"])).toMatch(/email SAN "Alice@example\.org" is not permitted/);
    expect(verdict(mailbox.ca, mailbox.root, ["email:not a mailbox"])).toMatch(/email SAN "not a mailbox" is not a mailbox, so it cannot be checked/);
  });

  it("an empty constraint matches every name of its form", () => {
    const all = constrained(nc({ permitted: ["uri:"], excluded: ["dns:"] }));
    expect(verdict(all.ca, all.root, [])).toBe("spiffe://example.org/w");
    expect(verdict(all.ca, all.root, ["dns:api.example.org"])).toMatch(/"api\.example\.org" is excluded by the name constraint ""/);
  });

  it("a constrained trust anchor constrains the intermediates' own names as well as the leaf's", () => {
    const root = makeRoot("example.org");
    const anchor = craftIntermediate(root, { extraExtensions: [nameConstraintsExtension(nc({ permitted: ["uri:example.org"] }))] });
    const fine = craftIntermediate(anchor);
    expect(verifyX509Svid(makeLeaf(fine, ID).chain, anchoredAt(anchor), { now: NOW }).id.toString()).toBe(ID);
    // The leaf is inside the constraint; the intermediate between them claims another trust domain.
    const stray = craftIntermediate(anchor, { uris: ["spiffe://other.org"] });
    const leaf = craftCertificate(stray, { uris: [ID] });
    expect(errorOf(() => verifyX509Svid([leaf.der, stray.der], anchoredAt(anchor), { now: NOW })).message).toBe(
      'x509svid: intermediate 1\'s URI SAN "spiffe://other.org" is not permitted by the name constraints of the example.org authority',
    );
  });

  it("an intermediate may narrow but never widen what the CA above it permits", () => {
    const root = makeRoot("example.org");
    const top = craftIntermediate(root, { extraExtensions: [nameConstraintsExtension(nc({ permitted: ["dns:example.org"] }))] });
    const narrow = craftIntermediate(top, { extraExtensions: [nameConstraintsExtension(nc({ permitted: ["dns:api.example.org"] }))] });
    expect(verdict(narrow, root, ["dns:v1.api.example.org"])).toBe("spiffe://example.org/w");
    expect(verdict(narrow, root, ["dns:web.example.org"])).toMatch(/"web\.example\.org" is not permitted by the name constraints of intermediate 1$/);
    const wide = craftIntermediate(top, { extraExtensions: [nameConstraintsExtension(nc({ permitted: ["dns:example.org", "dns:other.org"] }))] });
    expect(verdict(wide, root, ["dns:other.org"])).toMatch(/"other\.org" is not permitted by the name constraints of intermediate 2$/);
  });

  it("a URI without a host, or with an IP address as host, cannot be matched and is refused", () => {
    const root = makeRoot("example.org");
    const anchor = craftIntermediate(root, { extraExtensions: [nameConstraintsExtension(nc({ permitted: ["dns:example.org"] }))] });
    for (const [uri, problem] of [
      ["urn:example:ca", "has no host"],
      ["https://10.1.2.3/ca", "has an IP address as host"],
      ["https://[2001:db8::1]:8443/ca", "has an IP address as host"],
    ] as const) {
      const inter = craftIntermediate(anchor, { uris: ["spiffe://example.org", uri] });
      const leaf = craftCertificate(inter, { uris: [ID] });
      expect(errorOf(() => verifyX509Svid([leaf.der, inter.der], anchoredAt(anchor), { now: NOW })).message).toBe(
        `x509svid: intermediate 1's URI SAN ${JSON.stringify(uri)} ${problem}, so it cannot be checked against the name constraints of the example.org authority`,
      );
    }
  });
});

describe("name constraints: forms Sigil does not process, and limits", () => {
  it("a non-critical extension's directoryName subtrees are ignored; a critical one is refused, anchor included", () => {
    const ignored = constrained({ permitted: ["dir:Sigil", "uri:example.org"] });
    expect(decodeCertificate(ignored.ca.der).nameConstraints?.unhandledForms).toEqual(["directoryName"]);
    expect(verdict(ignored.ca, ignored.root, [])).toBe("spiffe://example.org/w");
    const refused = constrained({ permitted: ["dir:Sigil", "uri:example.org"], critical: true });
    expect(verdict(refused.ca, refused.root, [])).toBe(
      "x509svid: intermediate 1 has a critical nameConstraints extension with directoryName subtrees, which cannot be processed",
    );
    const anchor = craftIntermediate(makeRoot("example.org"), { extraExtensions: [nameConstraintsExtension({ excluded: ["dir:Other"], critical: true })] });
    expect(errorOf(() => verifyX509Svid(makeLeaf(anchor, ID).chain.slice(0, 1), anchoredAt(anchor), { now: NOW })).message).toMatch(
      /the example\.org authority has a critical nameConstraints extension with directoryName subtrees/,
    );
  });

  it(`refuses a chain whose names times subtrees exceed ${MAX_NAME_CONSTRAINT_COMPARISONS} comparisons`, () => {
    const many = constrained({ permitted: Array.from({ length: 600 }, (_, i) => `dns:h${i}.example.org`) });
    const names = Array.from({ length: 450 }, (_, i) => `dns:h${i}.example.org`);
    expect(verdict(many.ca, many.root, names.slice(0, 10))).toBe("spiffe://example.org/w");
    expect(verdict(many.ca, many.root, names)).toMatch(/takes more than 250000 comparisons/);
  });

  it("decodes both lists by form, with the extension's criticality", () => {
    const { ca } = constrained({ permitted: ["uri:.example.org", "dns:example.org", "email:example.org"], excluded: ["ip:10.0.0.0/8"], critical: true });
    const nc = decodeCertificate(ca.der).nameConstraints;
    expect(nc).toEqual({
      critical: true,
      permitted: { dns: ["example.org"], uri: [".example.org"], email: ["example.org"], ip: [] },
      excluded: { dns: [], uri: [], email: [], ip: [{ address: ipOctets("10.0.0.0"), mask: ipOctets("255.0.0.0") }] },
      unhandledForms: [],
    });
  });
});

describe("malformed nameConstraints are refused with a clear error", () => {
  const subtree = (base: Uint8Array, ...rest: Uint8Array[]): Uint8Array => encodeSequence(base, ...rest);
  const uriName = (s: string): Uint8Array => encodeTlv(0x86, Buffer.from(s, "latin1"));
  it.each([
    { name: "an empty NameConstraints", value: encodeSequence(), message: /has neither permittedSubtrees nor excludedSubtrees/ },
    { name: "an empty permittedSubtrees", value: encodeSequence(encodeTlv(0xa0)), message: /permittedSubtrees is empty/ },
    { name: "excluded before permitted", value: encodeSequence(encodeTlv(0xa1, subtree(uriName("a.org"))), encodeTlv(0xa0, subtree(uriName("b.org")))), message: /unexpected element/ },
    { name: "trailing bytes", value: Uint8Array.from([...nameConstraintsValue({ permitted: ["uri:a.org"] }), 0]), message: /trailing bytes/ },
    { name: "a minimum field", value: encodeSequence(encodeTlv(0xa0, subtree(uriName("a.org"), Uint8Array.of(0x80, 1, 1)))), message: /minimum\/maximum fields/ },
    { name: "a URI constraint that is an IP address", value: nameConstraintsValue({ permitted: ["uri:10.0.0.1"] }), message: /"10\.0\.0\.1" is an IP address/ },
    { name: "a DNS constraint with a trailing dot", value: nameConstraintsValue({ excluded: ["dns:example.org."] }), message: /dNSName "example\.org\." is not a domain name/ },
    { name: "a DNS constraint with a space", value: nameConstraintsValue({ excluded: ["dns:bad name.org"] }), message: /is not a domain name/ },
    { name: "an email constraint that is no mailbox", value: nameConstraintsValue({ permitted: ["email:a..b@example.org"] }), message: /rfc822Name "a\.\.b@example\.org" is neither a mailbox nor a domain/ },
    { name: "an IP constraint of 5 octets", value: encodeSequence(encodeTlv(0xa0, subtree(encodeTlv(0x87, Uint8Array.of(10, 0, 0, 0, 255))))), message: /has 5 octets/ },
    { name: "a non-contiguous IP mask", value: encodeSequence(encodeTlv(0xa0, subtree(encodeTlv(0x87, Uint8Array.of(10, 0, 0, 0, 255, 0, 255, 0))))), message: /non-contiguous mask/ },
    { name: "an IPv4-mapped IPv6 range", value: nameConstraintsValue({ permitted: ["ip:::ffff:10.0.0.0/104"] }), message: /IPv4-mapped IPv6 range/ },
    { name: "a base that is no GeneralName", value: encodeSequence(encodeTlv(0xa0, subtree(Uint8Array.of(0x30, 0)))), message: /is not a GeneralName/ },
  ])("$name", ({ value, message }) => {
    const root = makeRoot("example.org");
    const ca = craftIntermediate(root, { extraExtensions: [encodeExtension(EXT.nameConstraints, false, value)] });
    const decoded = errorOf(() => decodeCertificate(ca.der));
    expect(decoded.code).toBe("ERR_DER_INVALID");
    expect(decoded.message).toMatch(/nameConstraints/);
    expect(decoded.message).toMatch(message);
    const leaf = craftCertificate(root, {}); // any leaf: the chain is refused before it matters
    const verified = errorOf(() => verifyX509Svid([leaf.der, ca.der], trusting(root), { now: NOW }));
    expect(verified.code).toBe("ERR_X509_CHAIN_INVALID");
    expect(verified.message).toMatch(/certificate 1 of the chain cannot be decoded: .*nameConstraints/);
  });
});
