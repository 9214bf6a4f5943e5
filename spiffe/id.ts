/**
 * SPIFFE IDs and trust domains (SPIFFE-ID standard §2). Both are validated value
 * types: the only way to get one is to parse it, so holding one proves it is
 * well formed.
 *
 * Parsing policy for upper case (spec pitfall A1): Sigil rejects an upper-case
 * scheme or trust domain, as go-spiffe and SPIRE do, rather than normalising it.
 * It never emits upper case, and compares trust domains as the lowercase strings
 * they are guaranteed to be.
 */
import { SigilError } from "./errors.js";

/** Longest SPIFFE ID, in bytes of the whole URI, that must be supported (ID-14). */
export const MAX_SPIFFE_ID_BYTES = 2048;
/** Longest trust-domain name in bytes (the RFC 3986 host limit, ID-16). */
export const MAX_TRUST_DOMAIN_BYTES = 255;

const SCHEME_PREFIX = "spiffe://";

function tdError(message: string): SigilError {
  return new SigilError("ERR_TRUST_DOMAIN_INVALID", `trust domain: ${message}`);
}

function idError(message: string): SigilError {
  return new SigilError("ERR_SPIFFE_ID_INVALID", `spiffe id: ${message}`);
}

// 0 = not allowed, 1 = allowed in path segments only, 2 = allowed in both.
const CHAR_CLASS = new Uint8Array(128);
for (let c = 0; c < 128; c++) {
  const ch = String.fromCharCode(c);
  if (/[a-z0-9._-]/.test(ch)) CHAR_CLASS[c] = 2;
  else if (/[A-Z]/.test(ch)) CHAR_CLASS[c] = 1;
}

function describeChar(ch: string): string {
  const code = ch.codePointAt(0) ?? 0;
  if (code < 0x20 || code === 0x7f) return `control character U+${code.toString(16).padStart(4, "0")}`;
  return `'${ch}'`;
}

function checkTrustDomainName(name: string, err: (m: string) => SigilError): void {
  if (name.length === 0) throw err("trust domain is missing");
  if (Buffer.byteLength(name, "utf8") > MAX_TRUST_DOMAIN_BYTES) {
    throw err(`trust domain is longer than ${MAX_TRUST_DOMAIN_BYTES} bytes`);
  }
  for (let i = 0; i < name.length; i++) {
    const ch = name[i] as string;
    const code = name.charCodeAt(i);
    if (code < 128 && CHAR_CLASS[code] === 2) continue;
    if (ch === "%") throw err(`trust domain contains percent-encoding at offset ${i}`);
    if (ch === ":") throw err(`trust domain contains ':' at offset ${i} (a port is not allowed)`);
    if (ch === "@") throw err(`trust domain contains '@' at offset ${i} (userinfo is not allowed)`);
    if (code < 128 && CHAR_CLASS[code] === 1) {
      throw err(`trust domain contains upper-case ${describeChar(ch)} at offset ${i}; trust domains are lowercase`);
    }
    throw err(`trust domain contains ${describeChar(ch)} at offset ${i}; allowed are a-z 0-9 . _ -`);
  }
}

/**
 * A trust domain name such as `example.org`. Made only by {@link parseTrustDomain}
 * or from a parsed {@link SpiffeId}.
 */
export class TrustDomain {
  /** The bare name, e.g. `example.org` (no `spiffe://`). */
  readonly name: string;

  private constructor(name: string) {
    this.name = name;
  }

  /** @internal constructor for already-validated names. */
  static fromValidated(name: string): TrustDomain {
    return new TrustDomain(name);
  }

  /** The trust domain's own SPIFFE ID string, `spiffe://<name>`: the Workload API map key form. */
  idString(): string {
    return SCHEME_PREFIX + this.name;
  }

  /** The trust domain's own SPIFFE ID (no path), used by signing authorities. */
  id(): SpiffeId {
    return SpiffeId.fromValidated(this, "");
  }

  /** The bare name. */
  toString(): string {
    return this.name;
  }

  /** Serialises as the bare name. */
  toJSON(): string {
    return this.name;
  }

  /** Trust domains are equal when their (always lowercase) names are. */
  equals(other: TrustDomain): boolean {
    return this.name === other.name;
  }
}

/**
 * A SPIFFE ID: `spiffe://<trust domain><path>`. Made only by {@link parseSpiffeId}
 * or {@link spiffeIdFromPath}.
 */
export class SpiffeId {
  /** The trust domain the ID belongs to. */
  readonly trustDomain: TrustDomain;
  /** The path, either empty (the trust domain's own ID) or starting with `/`. */
  readonly path: string;

  private constructor(trustDomain: TrustDomain, path: string) {
    this.trustDomain = trustDomain;
    this.path = path;
  }

  /** @internal constructor for already-validated parts. */
  static fromValidated(trustDomain: TrustDomain, path: string): SpiffeId {
    return new SpiffeId(trustDomain, path);
  }

  /** True for the trust domain's own ID (`spiffe://td`), which is not a valid workload identity. */
  isTrustDomainId(): boolean {
    return this.path === "";
  }

  /** Path segments, without the separating slashes. */
  segments(): string[] {
    return this.path === "" ? [] : this.path.slice(1).split("/");
  }

  /** True when the ID belongs to `td`. */
  memberOf(td: TrustDomain): boolean {
    return this.trustDomain.equals(td);
  }

  /** The URI form, `spiffe://td/path`. */
  toString(): string {
    return SCHEME_PREFIX + this.trustDomain.name + this.path;
  }

  /** Serialises as the URI form. */
  toJSON(): string {
    return this.toString();
  }

  /** Equal when trust domain and (case-sensitive) path are equal (ID-17). */
  equals(other: SpiffeId): boolean {
    return this.trustDomain.equals(other.trustDomain) && this.path === other.path;
  }
}

/**
 * Parses a bare trust-domain name (`example.org`). A `spiffe://` form is refused:
 * maps keyed by name and maps keyed by ID are different contexts (pitfall A11);
 * use {@link parseSpiffeId}`(s).trustDomain` for the latter.
 *
 * @throws SigilError `ERR_TRUST_DOMAIN_INVALID` naming what is wrong.
 */
export function parseTrustDomain(name: string): TrustDomain {
  if (typeof name !== "string") throw tdError("not a string");
  if (name.includes("://")) {
    throw tdError(`expected a bare trust-domain name, got a URI ${JSON.stringify(truncate(name))}`);
  }
  checkTrustDomainName(name, tdError);
  return TrustDomain.fromValidated(name);
}

/**
 * Parses a trust domain given as its ID string, `spiffe://name`: the form used as
 * the key of Workload API bundle maps.
 */
export function parseTrustDomainIdString(s: string): TrustDomain {
  const id = parseSpiffeId(s);
  if (!id.isTrustDomainId()) throw tdError(`${JSON.stringify(truncate(s))} has a path; expected spiffe://<trust domain>`);
  return id.trustDomain;
}

function truncate(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/**
 * Parses a SPIFFE ID string under every SPIFFE-ID rule (ID-1 … ID-16).
 *
 * @example
 * ```ts
 * const id = parseSpiffeId("spiffe://example.org/ns/prod/sa/web");
 * id.trustDomain.name // "example.org"
 * ```
 * @throws SigilError `ERR_SPIFFE_ID_INVALID`, e.g. `spiffe id: path segment 2 contains '%'`.
 */
export function parseSpiffeId(s: string): SpiffeId {
  if (typeof s !== "string") throw idError("not a string");
  if (s.length === 0) throw idError("empty string");
  const bytes = Buffer.byteLength(s, "utf8");
  if (bytes > MAX_SPIFFE_ID_BYTES) throw idError(`longer than ${MAX_SPIFFE_ID_BYTES} bytes (${bytes})`);
  if (!s.startsWith(SCHEME_PREFIX)) {
    const colon = s.indexOf(":");
    if (colon > 0 && s.slice(0, colon).toLowerCase() === "spiffe") {
      if (s.slice(0, colon) !== "spiffe") throw idError("scheme must be lowercase 'spiffe'");
      throw idError("scheme must be followed by '//' and a trust domain");
    }
    throw idError(`scheme must be 'spiffe', got ${JSON.stringify(truncate(colon > 0 ? s.slice(0, colon) : s))}`);
  }
  const rest = s.slice(SCHEME_PREFIX.length);
  for (let i = 0; i < rest.length; i++) {
    const ch = rest[i];
    if (ch === "?") throw idError("query is not allowed");
    if (ch === "#") throw idError("fragment is not allowed");
  }
  const slash = rest.indexOf("/");
  const host = slash === -1 ? rest : rest.slice(0, slash);
  const path = slash === -1 ? "" : rest.slice(slash);
  const td = parseHost(host);
  checkPath(path);
  return SpiffeId.fromValidated(td, path);
}

function parseHost(host: string): TrustDomain {
  if (host.length === 0) throw idError("trust domain is missing");
  if (host.includes("@")) throw idError("userinfo is not allowed in the trust domain");
  if (host.startsWith("[")) throw idError("trust domain cannot be an IPv6 literal");
  if (host.includes(":")) throw idError("port is not allowed in the trust domain");
  checkTrustDomainName(host, idError);
  return TrustDomain.fromValidated(host);
}

function checkPath(path: string): void {
  if (path === "") return;
  // path starts with "/"; split off the leading empty piece.
  const segments = path.slice(1).split("/");
  if (path.endsWith("/")) {
    throw idError("path cannot have a trailing slash");
  }
  for (let n = 0; n < segments.length; n++) {
    const seg = segments[n] as string;
    const where = `path segment ${n + 1}`;
    if (seg === "") throw idError(`${where} is empty`);
    if (seg === "." || seg === "..") throw idError(`${where} is '${seg}' (dot segments are not allowed)`);
    for (let i = 0; i < seg.length; i++) {
      const code = seg.charCodeAt(i);
      if (code < 128 && CHAR_CLASS[code] !== 0) continue;
      const ch = String.fromCodePoint(seg.codePointAt(i) ?? code);
      if (ch === "%") throw idError(`${where} contains '%' (percent-encoding is not allowed)`);
      throw idError(`${where} contains ${describeChar(ch)}; allowed are a-z A-Z 0-9 . _ -`);
    }
  }
}

/**
 * Builds a SPIFFE ID from a trust domain and a path (`/a/b`, or segments joined by
 * the caller). The path is validated as in {@link parseSpiffeId}.
 */
export function spiffeIdFromPath(td: TrustDomain, path: string): SpiffeId {
  if (typeof path !== "string") throw idError("path is not a string");
  if (path !== "" && !path.startsWith("/")) throw idError("path must start with '/'");
  checkPath(path);
  const id = SpiffeId.fromValidated(td, path);
  const bytes = Buffer.byteLength(id.toString(), "utf8");
  if (bytes > MAX_SPIFFE_ID_BYTES) throw idError(`longer than ${MAX_SPIFFE_ID_BYTES} bytes (${bytes})`);
  return id;
}
