/**
 * X.509 name constraints (RFC 5280 §4.2.1.10), decoded strictly and applied
 * the way Go's crypto/x509 `Verify` applies them, so that a chain go-spiffe
 * refuses is refused here too:
 *
 * - the extension is enforced whether or not it is marked critical;
 * - every CA of the path, trust anchor included, constrains the SAN names of
 *   every certificate below it (the leaf and lower intermediates alike);
 * - per name form, a name must match one permitted subtree of that form when
 *   the CA lists any, and no excluded subtree; forms without subtrees are free;
 * - dNSName: `example.com` matches itself and its subdomains, `.example.com`
 *   only subdomains; a wildcard name is excluded when it could stand for an
 *   excluded host;
 * - URI: the constraint applies to the URI's host, case-insensitively; a
 *   constraint without a leading dot is that host exactly, `.example.com` any
 *   subdomain but not the host itself; a URI with no host or an IP-address
 *   host cannot be matched and is refused;
 * - rfc822Name: `user@host` is that mailbox (local part case-sensitive), a
 *   domain constraint applies to the mailbox's host as URI constraints do;
 * - iPAddress: address and mask; IPv4 and IPv6 never match each other;
 * - an empty constraint matches every name of its form;
 * - subtrees of other forms (directoryName, otherName, …) are not processed:
 *   a critical extension holding them is refused, a non-critical one has them
 *   ignored, as Go does. Sigil authenticates by URI SAN only, which they never
 *   constrain.
 */
import { isIP } from "node:net";
import { expectTlv, readChildren, TAG, type DerElement } from "../der.js";
import { SigilError, type ErrorCode } from "../errors.js";
import type { DecodedCertificate } from "./decode-certificate.js";

/** An iPAddress subtree: a network address and its mask, both 4 or both 16 octets. */
export interface IpSubtree {
  readonly address: Uint8Array;
  readonly mask: Uint8Array;
}

/** The subtrees of one list (permitted or excluded), by name form. */
export interface NameSubtrees {
  readonly dns: readonly string[];
  readonly uri: readonly string[];
  readonly email: readonly string[];
  readonly ip: readonly IpSubtree[];
}

/** A decoded nameConstraints extension. */
export interface NameConstraints {
  readonly critical: boolean;
  readonly permitted: NameSubtrees;
  readonly excluded: NameSubtrees;
  /** GeneralName forms present in either list that are not processed (`"directoryName"`, …). */
  readonly unhandledForms: readonly string[];
}

/** One certificate of a path, and how messages name it (`"the leaf"`, `"intermediate 1"`). */
export interface PathCertificate {
  readonly cert: DecodedCertificate;
  readonly what: string;
}

/** Go's cap on the comparisons one verification may make; a larger product of names and subtrees is refused. */
export const MAX_NAME_CONSTRAINT_COMPARISONS = 250_000;

const UNHANDLED_FORMS: ReadonlyMap<number, string> = new Map([
  [0xa0, "otherName"],
  [0xa3, "x400Address"],
  [0xa4, "directoryName"],
  [0xa5, "ediPartyName"],
  [0x88, "registeredID"],
]);

function malformed(message: string): never {
  throw new SigilError("ERR_DER_INVALID", `x509: nameConstraints ${message}`);
}

function ia5(el: DerElement, what: string): string {
  for (const b of el.content) if (b > 0x7f) malformed(`${what} at offset ${el.start} is not an IA5String`);
  return Buffer.from(el.content.buffer, el.content.byteOffset, el.content.byteLength).toString("latin1");
}

/**
 * Go's syntax check of a domain name: labels of printable ASCII (33–126),
 * none empty, no trailing dot. A constraint may also be empty (matches all)
 * or start with one dot (subdomains only).
 */
function validDomain(s: string, constraint: boolean): boolean {
  if (s.length === 0) return constraint;
  const body = constraint && s.startsWith(".") ? s.slice(1) : s;
  if (body.length === 0) return false;
  for (const label of body.split(".")) {
    if (label.length === 0) return false;
    for (let i = 0; i < label.length; i++) {
      const c = label.charCodeAt(i);
      if (c < 33 || c > 126) return false;
    }
  }
  return true;
}

interface Mailbox {
  /** The local part, quoting and escapes removed (compared case-sensitively). */
  readonly local: string;
  /** The host, lower-cased. */
  readonly domain: string;
}

const ATEXT = /^[0-9A-Za-z!#$%&'*+\-/=?^_`{|}~.]$/;

function qtext(c: number): boolean {
  // RFC 2821 qtext, plus space (RFC 3696 assumes it; Go accepts it).
  return c === 11 || c === 12 || c === 32 || c === 33 || c === 127 || (c >= 1 && c <= 8) || (c >= 14 && c <= 31) || (c >= 35 && c <= 91) || (c >= 93 && c <= 126);
}

/** An RFC 2821 Mailbox (`local@domain`, local part a dot-atom or a quoted string), as RFC 5280 §4.2.1.6 defines rfc822Name. */
function parseMailbox(s: string): Mailbox | undefined {
  let i = 0;
  let local = "";
  if (s.startsWith('"')) {
    i = 1;
    for (;;) {
      if (i >= s.length) return undefined;
      const c = s.charCodeAt(i++);
      if (c === 0x22) break;
      if (c === 0x5c) {
        const e = s.charCodeAt(i);
        if (!(e === 11 || e === 12 || (e >= 1 && e <= 9) || (e >= 14 && e <= 127))) return undefined;
        local += s[i++];
      } else if (qtext(c)) {
        local += String.fromCharCode(c);
      } else {
        return undefined;
      }
    }
  } else {
    while (i < s.length) {
      const c = s[i] as string;
      if (c === "\\") {
        // Escapes outside quotes appear in RFC 3696's examples; Go accepts them.
        if (i + 1 >= s.length) return undefined;
        local += s[i + 1];
        i += 2;
      } else if (ATEXT.test(c)) {
        local += c;
        i++;
      } else {
        break;
      }
    }
    if (local === "" || local.startsWith(".") || local.endsWith(".") || local.includes("..")) return undefined;
  }
  if (s[i] !== "@") return undefined;
  const domain = s.slice(i + 1);
  return validDomain(domain, false) ? { local, domain: domain.toLowerCase() } : undefined;
}

function decodeIpSubtree(el: DerElement, what: string): IpSubtree {
  const v = el.content;
  if (v.length !== 8 && v.length !== 32) malformed(`${what} iPAddress at offset ${el.start} has ${v.length} octets (8 or 32: address and mask)`);
  const half = v.length / 2;
  const address = v.subarray(0, half);
  const mask = v.subarray(half);
  let seenZero = false;
  for (const b of mask) {
    const contiguous = seenZero ? b === 0 : [0x00, 0x80, 0xc0, 0xe0, 0xf0, 0xf8, 0xfc, 0xfe, 0xff].includes(b);
    if (!contiguous) malformed(`${what} iPAddress at offset ${el.start} has a non-contiguous mask`);
    if (b !== 0xff) seenZero = true;
  }
  // An IPv4-mapped IPv6 range would otherwise match IPv4 names in some libraries and not in others.
  if (half === 16 && isV4Mapped(address)) malformed(`${what} iPAddress at offset ${el.start} is an IPv4-mapped IPv6 range`);
  return { address, mask };
}

function isV4Mapped(ip: Uint8Array): boolean {
  return ip.length === 16 && ip.subarray(0, 10).every((b) => b === 0) && ip[10] === 0xff && ip[11] === 0xff;
}

function decodeSubtrees(der: Uint8Array, list: DerElement, what: string, unhandled: Set<string>): NameSubtrees {
  const items = readChildren(der, list);
  // GeneralSubtrees ::= SEQUENCE SIZE (1..MAX) OF GeneralSubtree
  if (items.length === 0) malformed(`${what} is empty`);
  const out = { dns: [] as string[], uri: [] as string[], email: [] as string[], ip: [] as IpSubtree[] };
  for (const item of items) {
    if (item.tag !== TAG.SEQUENCE) malformed(`${what} holds a non-SEQUENCE element at offset ${item.start}`);
    const [base, ...bounds] = readChildren(der, item);
    if (base === undefined) malformed(`${what} holds an empty GeneralSubtree at offset ${item.start}`);
    // RFC 5280: minimum MUST be zero (so absent in DER) and maximum MUST be absent.
    if (bounds.length > 0) malformed(`${what} GeneralSubtree at offset ${item.start} has minimum/maximum fields, which RFC 5280 forbids`);
    switch (base.tag) {
      case 0x81: {
        const c = ia5(base, `${what} rfc822Name`);
        const ok = c.includes("@") ? parseMailbox(c) !== undefined : validDomain(c, true);
        if (!ok) malformed(`${what} rfc822Name ${JSON.stringify(c)} is neither a mailbox nor a domain`);
        out.email.push(c);
        break;
      }
      case 0x82: {
        const c = ia5(base, `${what} dNSName`);
        if (!validDomain(c, true)) malformed(`${what} dNSName ${JSON.stringify(c)} is not a domain name`);
        out.dns.push(c);
        break;
      }
      case 0x86: {
        const c = ia5(base, `${what} uniformResourceIdentifier`);
        if (isIP(c) !== 0) malformed(`${what} uniformResourceIdentifier ${JSON.stringify(c)} is an IP address, not a host name`);
        if (!validDomain(c, true)) malformed(`${what} uniformResourceIdentifier ${JSON.stringify(c)} is not a host or domain name`);
        out.uri.push(c);
        break;
      }
      case 0x87:
        out.ip.push(decodeIpSubtree(base, what));
        break;
      default: {
        const form = UNHANDLED_FORMS.get(base.tag);
        if (form === undefined) malformed(`${what} element at offset ${base.start} (tag 0x${base.tag.toString(16)}) is not a GeneralName`);
        unhandled.add(form);
      }
    }
  }
  return out;
}

const NO_SUBTREES: NameSubtrees = { dns: [], uri: [], email: [], ip: [] };

/**
 * Decodes the content of a nameConstraints extension strictly: permitted and
 * excluded lists in that order, at least one present, neither empty, no
 * minimum/maximum, every constraint of a processed form well formed.
 *
 * @throws SigilError `ERR_DER_INVALID` naming what is malformed.
 */
export function decodeNameConstraints(der: Uint8Array, critical: boolean): NameConstraints {
  const seq = expectTlv(der, 0, TAG.SEQUENCE, "NameConstraints");
  if (seq.end !== der.length) malformed("has trailing bytes");
  let permittedEl: DerElement | undefined;
  let excludedEl: DerElement | undefined;
  for (const child of readChildren(der, seq)) {
    if (child.tag === 0xa0 && permittedEl === undefined && excludedEl === undefined) permittedEl = child;
    else if (child.tag === 0xa1 && excludedEl === undefined) excludedEl = child;
    else malformed(`has an unexpected element at offset ${child.start} (tag 0x${child.tag.toString(16)})`);
  }
  if (permittedEl === undefined && excludedEl === undefined) malformed("has neither permittedSubtrees nor excludedSubtrees");
  const unhandled = new Set<string>();
  const permitted = permittedEl === undefined ? NO_SUBTREES : decodeSubtrees(der, permittedEl, "permittedSubtrees", unhandled);
  const excluded = excludedEl === undefined ? NO_SUBTREES : decodeSubtrees(der, excludedEl, "excludedSubtrees", unhandled);
  return { critical, permitted, excluded, unhandledForms: [...unhandled].sort() };
}

// ---------------------------------------------------------------------------
// Matching

function dnsMatches(constraint: string, name: string): boolean {
  if (constraint === "") return true;
  const c = constraint.toLowerCase();
  if (c.startsWith(".")) return name.length > c.length && name.endsWith(c);
  return name === c || name.endsWith(`.${c}`);
}

function parentDomain(s: string): string {
  const dot = s.indexOf(".");
  return dot < 0 ? "" : s.slice(dot);
}

/** `*.example.com` may stand for an excluded `host.example.com`. */
function wildcardCouldBe(constraint: string, name: string): boolean {
  if (!name.startsWith("*")) return false;
  const parent = parentDomain(constraint.toLowerCase());
  return parent !== "" && parent === parentDomain(name);
}

function hostMatches(constraint: string, host: string): boolean {
  if (constraint === "") return true;
  const c = constraint.toLowerCase();
  if (c.startsWith(".")) return host.length > c.length && host.endsWith(c);
  return host === c;
}

function emailMatches(constraint: string, mailbox: Mailbox): boolean {
  if (!constraint.includes("@")) return hostMatches(constraint, mailbox.domain);
  const exact = parseMailbox(constraint);
  return exact !== undefined && exact.local === mailbox.local && exact.domain === mailbox.domain;
}

function ipMatches(subtree: IpSubtree, ip: Uint8Array): boolean {
  if (subtree.address.length !== ip.length) return false;
  for (let i = 0; i < ip.length; i++) {
    if ((((ip[i] as number) ^ (subtree.address[i] as number)) & (subtree.mask[i] as number)) !== 0) return false;
  }
  return true;
}

function ipText(ip: Uint8Array): string {
  if (ip.length === 4) return [...ip].join(".");
  const groups: string[] = [];
  for (let i = 0; i + 1 < ip.length; i += 2) groups.push((((ip[i] as number) << 8) | (ip[i + 1] as number)).toString(16));
  return groups.join(":");
}

/**
 * The host of a URI SAN as Go's `url.Parse` finds it (the authority after
 * `scheme://`, without user info and port), lower-cased; or why it has none
 * that a name constraint could match.
 */
function uriHost(uri: string): { host: string } | { problem: string } {
  const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:/.exec(uri);
  const rest = scheme === null ? uri : uri.slice(scheme[0].length);
  if (!rest.startsWith("//")) return { problem: "has no host" };
  let authority = rest.slice(2);
  const end = authority.search(/[/?#]/);
  if (end >= 0) authority = authority.slice(0, end);
  let host = authority.slice(authority.lastIndexOf("@") + 1).toLowerCase();
  if (host.startsWith("[")) return { problem: "has an IP address as host" };
  const colon = host.indexOf(":");
  if (colon >= 0) {
    if (host.indexOf(":", colon + 1) >= 0) return { problem: "has a host that cannot be parsed" };
    host = host.slice(0, colon);
  }
  if (host === "") return { problem: "has no host" };
  if (isIP(host) !== 0) return { problem: "has an IP address as host" };
  // Go unescapes %XX in hosts; refusing them keeps an escaped host from slipping past an exclusion.
  if (host.includes("%") || !validDomain(host, false)) return { problem: "has a host that is not a domain name" };
  return { host };
}

/** The SAN names of one certificate, parsed for matching; built once, on first need. */
interface CheckedNames {
  readonly dns: readonly string[];
  readonly uris: readonly { readonly text: string; readonly host: string }[];
  readonly emails: readonly { readonly text: string; readonly mailbox: Mailbox }[];
  readonly ips: readonly Uint8Array[];
}

/**
 * Applies the name constraints of every CA in `path` to the SAN names of the
 * certificates below it, and refuses a critical nameConstraints extension
 * (on any certificate of the path) that holds forms it does not process.
 *
 * @param path - the verified path: leaf first, trust anchor last.
 * @throws SigilError with `code`, naming the certificate, the name and the constraint.
 */
export function checkPathNameConstraints(path: readonly PathCertificate[], code: ErrorCode): void {
  const fail = (message: string): never => {
    throw new SigilError(code, `x509svid: ${message}`);
  };
  for (const { cert, what } of path) {
    const nc = cert.nameConstraints;
    if (nc?.critical === true && nc.unhandledForms.length > 0) {
      fail(`${what} has a critical nameConstraints extension with ${nc.unhandledForms.join(", ")} subtrees, which cannot be processed`);
    }
  }
  if (!path.some((p, i) => i > 0 && p.cert.nameConstraints !== undefined)) return;

  let comparisons = 0;
  const spend = (n: number): void => {
    comparisons += n;
    if (comparisons > MAX_NAME_CONSTRAINT_COMPARISONS) fail(`checking name constraints takes more than ${MAX_NAME_CONSTRAINT_COMPARISONS} comparisons`);
  };
  const parsed = new Map<number, CheckedNames>();
  const namesOf = (index: number, caWhat: string): CheckedNames => {
    let names = parsed.get(index);
    if (names !== undefined) return names;
    const { cert, what } = path[index] as PathCertificate;
    const san = cert.subjectAltNames;
    const cannot = (kind: string, name: string, problem: string): never =>
      fail(`${what}'s ${kind} SAN ${JSON.stringify(name)} ${problem}, so it cannot be checked against the name constraints of ${caWhat}`);
    names = {
      dns: (san?.dnsNames ?? []).map((d) => (validDomain(d, false) ? d.toLowerCase() : cannot("DNS", d, "is not a domain name"))),
      uris: (san?.uris ?? []).map((text) => {
        const h = uriHost(text);
        return "host" in h ? { text, host: h.host } : cannot("URI", text, h.problem);
      }),
      emails: (san?.emails ?? []).map((text) => {
        const mailbox = parseMailbox(text);
        return mailbox === undefined ? cannot("email", text, "is not a mailbox") : { text, mailbox };
      }),
      ips: san?.ips ?? [],
    };
    parsed.set(index, names);
    return names;
  };

  /** One name against one CA's subtrees of its form: permitted (when any) must match, excluded must not. */
  const check = <T, C>(
    name: { readonly kind: string; readonly value: T; readonly text: string },
    subtrees: { readonly permitted: readonly C[]; readonly excluded: readonly C[] },
    matches: (constraint: C, value: T) => boolean,
    at: { readonly below: string; readonly ca: string },
    excludes: (constraint: C, value: T) => boolean = matches,
    show: (constraint: C) => string = String,
  ): void => {
    spend(subtrees.permitted.length + subtrees.excluded.length);
    const san = `${at.below}'s ${name.kind} SAN ${JSON.stringify(name.text)}`;
    if (subtrees.permitted.length > 0 && !subtrees.permitted.some((c) => matches(c, name.value))) {
      fail(`${san} is not permitted by the name constraints of ${at.ca}`);
    }
    const hit = subtrees.excluded.find((c) => excludes(c, name.value));
    if (hit !== undefined) fail(`${san} is excluded by the name constraint ${JSON.stringify(show(hit))} of ${at.ca}`);
  };

  for (let caIndex = 1; caIndex < path.length; caIndex++) {
    const { cert: ca, what: caWhat } = path[caIndex] as PathCertificate;
    const nc = ca.nameConstraints;
    if (nc === undefined) continue;
    const { permitted: p, excluded: x } = nc;
    for (let i = 0; i < caIndex; i++) {
      if (path[i]?.cert.subjectAltNames === undefined) continue;
      const at = { below: (path[i] as PathCertificate).what, ca: caWhat };
      const names = namesOf(i, caWhat);
      for (const d of names.dns) {
        check({ kind: "DNS", value: d, text: d }, { permitted: p.dns, excluded: x.dns }, dnsMatches, at, (c, n) => dnsMatches(c, n) || wildcardCouldBe(c, n));
      }
      for (const u of names.uris) check({ kind: "URI", value: u.host, text: u.text }, { permitted: p.uri, excluded: x.uri }, hostMatches, at);
      for (const e of names.emails) check({ kind: "email", value: e.mailbox, text: e.text }, { permitted: p.email, excluded: x.email }, emailMatches, at);
      for (const ip of names.ips) {
        // Go never matches an IPv4-mapped IPv6 name against a range; refusing it is the safe reading of that.
        if (isV4Mapped(ip) && p.ip.length + x.ip.length > 0) {
          fail(`${at.below}'s IP SAN ${ipText(ip)} is an IPv4-mapped IPv6 address, which the IP name constraints of ${caWhat} cannot match`);
        }
        const show = (s: IpSubtree): string => `${ipText(s.address)}/${ipText(s.mask)}`;
        check({ kind: "IP", value: ip, text: ipText(ip) }, { permitted: p.ip, excluded: x.ip }, ipMatches, at, ipMatches, show);
      }
    }
  }
}
