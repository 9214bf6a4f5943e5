/**
 * What `log verify` checks in each Sigil log entry once the tree is proven
 * intact (the `onEntry` hook of {@link verifyLog}): the entry decodes as a
 * Sigil entry, its SPIFFE ID is in the log's trust domain, its certificate
 * (the `cert` field of X.509 kinds) chains to the trust bundle the auditor
 * gives, at the time it was issued, and names the SPIFFE ID and serial the
 * entry says — and, for monitoring, that the ID is one the auditor expects.
 * A `delivered` entry must refer to an earlier entry of the same credential
 * (serial or JWT hash), issued to the same agent for the same SPIFFE ID
 * ({@link IssuedCredentials} remembers them compactly).
 *
 * A problem is a {@link AuditFinding}, reported and counted; it does not stop
 * the run (the log itself is sound, the issuance is what is suspicious).
 *
 * CA certificates the log records (X.509 authority events, downstream CAs)
 * that chain to the bundle become intermediates for the SVIDs after them, so
 * a server whose CA sits under an upstream root is audited with the upstream
 * root alone.
 */
import { X509Certificate } from "node:crypto";
import { X509Bundle, type X509BundleSource } from "../bundle/x509-bundle.js";
import { SigilError } from "../errors.js";
import { parseSpiffeId, type TrustDomain } from "../id.js";
import { canonicalSerialHex } from "../x509/serial.js";
import { verifyX509Svid } from "../x509/verify.js";
import { IssuedCredentials, type CredentialName } from "./issued-credentials.js";
import { decodeLogEntry, type LogDeliveredEntry, type SigilLogEntry } from "./sigil-entry.js";

/** Why an entry is reported. */
export type AuditFindingKind = "undecodable" | "outside-trust-domain" | "unchained" | "mismatch" | "not-allowed" | "missing-certificate";

/** C0/C1 controls, DEL, bidi marks and overrides, line/paragraph separators: what could rewrite a terminal line. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;

/** `s` with every {@link CONTROL} character written as `\uXXXX`: logged text is attacker-influenced and goes to a terminal. */
export function escapeControls(s: string): string {
  return s.replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** One reported entry. */
export interface AuditFinding {
  readonly index: number;
  readonly kind: AuditFindingKind;
  /** The entry's kind (`x509-svid`, `authority`, …) when it decoded. */
  readonly entryKind?: string;
  readonly spiffeId?: string;
  readonly serial?: string;
  /** One line naming the entry and what is wrong. */
  readonly message: string;
}

/**
 * A list of SPIFFE ID patterns, one a line: an exact ID, or one with `*`
 * (any characters but `/`) and `**` (anything, slashes included). Blank
 * lines and lines starting with `#` are ignored.
 */
export class SpiffeIdAllowList {
  readonly #exact = new Set<string>();
  readonly #patterns: RegExp[] = [];

  /** @throws SigilError `ERR_INVALID_ARGUMENT` naming the line of a pattern that is not a SPIFFE ID. */
  constructor(text: string, source = "allow list") {
    text.split(/\r?\n/).forEach((raw, i) => {
      const line = raw.trim();
      if (line === "" || line.startsWith("#")) return;
      if (!line.startsWith("spiffe://")) throw new SigilError("ERR_INVALID_ARGUMENT", `log verify: ${source} line ${i + 1}: ${JSON.stringify(line.slice(0, 80))} is not a spiffe:// ID or pattern`);
      if (!line.includes("*")) {
        this.#exact.add(line);
        return;
      }
      const re = line
        .split("**")
        .map((part) => part.split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join("[^/]*"))
        .join(".*");
      this.#patterns.push(new RegExp(`^${re}$`));
    });
  }

  /** True when the ID is listed or matches a pattern. */
  allows(spiffeId: string): boolean {
    return this.#exact.has(spiffeId) || this.#patterns.some((p) => p.test(spiffeId));
  }
}

/** Options of {@link SigilEntryAuditor}. */
export interface SigilAuditOptions {
  /** The log's trust domain (its checkpoint origin is `<trust domain>/sigil/issuance`). */
  readonly trustDomain: TrustDomain;
  /** The trust domain's X.509 authorities; without them certificates are not checked. */
  readonly x509Authorities?: readonly Uint8Array[];
  /** When given, every credential's SPIFFE ID must be allowed. */
  readonly allowIds?: SpiffeIdAllowList;
  /** Called with each finding as it is found. */
  readonly onFinding?: (finding: AuditFinding) => void;
}

/** At most this many logged CA certificates are kept as intermediates. */
const MAX_INTERMEDIATES = 4096;

/** The trust domain a Sigil log's origin names, `example.org/sigil/issuance` → `example.org`. */
export function trustDomainOfOrigin(origin: string): string {
  const m = /^([^/]+)\/sigil\/issuance$/.exec(origin);
  if (m === null) throw new SigilError("ERR_INVALID_ARGUMENT", `log verify: origin ${JSON.stringify(origin)} is not <trust domain>/sigil/issuance; give the trust domain`);
  return m[1] as string;
}

/**
 * Checks entries one by one (see the module comment); pass {@link onEntry} to
 * `verifyLog`.
 */
export class SigilEntryAuditor {
  readonly #o: SigilAuditOptions;
  readonly #bundle: X509BundleSource | undefined;
  readonly #roots: X509Certificate[];
  readonly #intermediates: X509Certificate[] = [];
  // By subject: a leaf is verified with the logged CAs that can be above it, not all of them.
  readonly #bySubject = new Map<string, X509Certificate[]>();
  readonly #counts = new Map<AuditFindingKind, number>();
  /** Workload credentials logged so far, for the `delivered` entries that refer to them. */
  readonly #issued = new IssuedCredentials();
  #entries = 0;

  constructor(options: SigilAuditOptions) {
    this.#o = options;
    const ders = options.x509Authorities;
    if (ders !== undefined) {
      if (ders.length === 0) throw new SigilError("ERR_INVALID_ARGUMENT", "log verify: the trust bundle holds no X.509 authorities");
      const bundle = new X509Bundle(options.trustDomain, ders);
      this.#roots = [...bundle.authorities];
      this.#bundle = { getX509BundleForTrustDomain: (td) => (td.name === options.trustDomain.name ? bundle : undefined) };
    } else {
      this.#roots = [];
    }
  }

  /** Entries audited so far. */
  get entries(): number {
    return this.#entries;
  }

  /** Findings so far, by kind. */
  get counts(): ReadonlyMap<AuditFindingKind, number> {
    return this.#counts;
  }

  /** Findings so far. */
  get findings(): number {
    let n = 0;
    for (const c of this.#counts.values()) n += c;
    return n;
  }

  /** The `onEntry` hook of `verifyLog`. */
  readonly onEntry = (index: number, bytes: Uint8Array): void => {
    this.#entries++;
    let entry: SigilLogEntry;
    try {
      entry = decodeLogEntry(bytes);
    } catch (e) {
      this.#report({ index, kind: "undecodable", message: `log verify: entry ${index}: not a Sigil log entry: ${(e as Error).message}` });
      return;
    }
    if (entry.kind === "delivered") {
      this.#delivered(index, entry);
      return;
    }
    if ((entry.kind === "x509-svid" && entry.serial !== undefined) || (entry.kind === "jwt-svid" && entry.jwtSha256 !== undefined)) {
      const name: CredentialName = entry.serial !== undefined ? { serial: entry.serial } : { jwtSha256: entry.jwtSha256 ?? "" };
      this.#issued.add(name, { index, agentId: entry.agentId, spiffeId: entry.spiffeId });
    }
    if (entry.kind === "authority") {
      if (entry.authorityKind === "x509" && entry.cert !== undefined) this.#caCertificate(index, entry.kind, undefined, entry.cert);
      return;
    }
    const base = { index, entryKind: entry.kind, spiffeId: entry.spiffeId, ...(entry.serial === undefined ? {} : { serial: entry.serial }) };
    const what = `log verify: entry ${index}: ${entry.kind} ${escapeControls(entry.spiffeId)}${entry.serial === undefined ? "" : ` serial ${escapeControls(entry.serial)}`}`;
    let td: string | undefined;
    try {
      td = parseSpiffeId(entry.spiffeId).trustDomain.name;
    } catch {
      td = undefined;
    }
    if (td !== this.#o.trustDomain.name) {
      this.#report({ ...base, kind: "outside-trust-domain", message: `${what}: the ID is not in trust domain ${this.#o.trustDomain.name}` });
    }
    if (this.#o.allowIds !== undefined && !this.#o.allowIds.allows(entry.spiffeId)) {
      this.#report({ ...base, kind: "not-allowed", message: `${what}: ALERT: the ID is not in the allowed list` });
    }
    if (this.#bundle === undefined || entry.kind === "jwt-svid") return;
    if (entry.cert === undefined) {
      // Every X.509 kind logs its certificate; without it nothing ties the entry to what was issued.
      this.#report({ ...base, kind: "missing-certificate", message: `${what}: the entry has no certificate to check against the trust bundle` });
      return;
    }
    if (entry.kind === "downstream-ca") {
      this.#caCertificate(index, entry.kind, entry.spiffeId, entry.cert);
      return;
    }
    const leaf = Buffer.from(entry.cert, "base64");
    // Checked when it was issued: an old SVID has long expired, and so may its CA.
    const at = new Date(Math.min(Math.max(entry.issuedAt, entry.notBefore), entry.notAfter) * 1000);
    try {
      const verified = verifyX509Svid([leaf, ...this.#candidates(new X509Certificate(leaf).issuer)], this.#bundle, { now: at });
      const serial = canonicalSerialHex(new X509Certificate(leaf).serialNumber);
      if (verified.id.toString() !== entry.spiffeId) {
        this.#report({ ...base, kind: "mismatch", message: `${what}: the certificate names ${verified.id.toString()}` });
      } else if (entry.serial !== undefined && serial !== entry.serial) {
        this.#report({ ...base, kind: "mismatch", message: `${what}: the certificate has serial ${serial}` });
      }
    } catch (e) {
      this.#report({ ...base, kind: "unchained", message: `${what}: the certificate does not chain to the trust bundle of ${this.#o.trustDomain.name}: ${(e as Error).message}` });
    }
  };

  /** A pick-up refers to its credential's own entry, which the server logged first, for the same agent and ID. */
  #delivered(index: number, entry: LogDeliveredEntry): void {
    const name: CredentialName = entry.serial !== undefined ? { serial: entry.serial } : { jwtSha256: entry.jwtSha256 ?? "" };
    const named = entry.serial !== undefined ? `serial ${escapeControls(entry.serial)}` : `jwt ${escapeControls(entry.jwtSha256 ?? "")}`;
    const ref = entry.issuanceIndex;
    const problems: string[] = [];
    if (ref >= index) {
      problems.push(`refers to issuance entry ${ref}, which is not before it`);
    } else {
      const issued = this.#issued.get(name);
      if (issued === undefined) {
        problems.push(`refers to issuance entry ${ref}, but no ${entry.serial !== undefined ? "x509-svid" : "jwt-svid"} entry before it is that credential`);
      } else {
        if (issued.index !== ref) problems.push(`refers to issuance entry ${ref}, but the credential is logged at entry ${issued.index}`);
        if (issued.spiffeId !== entry.spiffeId) problems.push(`issuance entry ${issued.index} is for ${escapeControls(issued.spiffeId)}`);
        if (issued.agentId !== entry.agentId) {
          problems.push(`issuance entry ${issued.index} issued it ${issued.agentId === undefined ? "to no agent" : `to agent ${escapeControls(issued.agentId)}`}, not to ${escapeControls(entry.agentId)}`);
        }
      }
    }
    if (problems.length === 0) return;
    this.#report({
      index,
      kind: "mismatch",
      entryKind: entry.kind,
      spiffeId: entry.spiffeId,
      ...(entry.serial === undefined ? {} : { serial: entry.serial }),
      message: `log verify: entry ${index}: delivered ${escapeControls(entry.spiffeId)} ${named}: ${problems.join("; ")}`,
    });
  }

  /** A logged CA certificate: kept as an intermediate when a bundle authority (or a kept intermediate) signed it. */
  #caCertificate(index: number, entryKind: string, spiffeId: string | undefined, certB64: string): void {
    const der = Buffer.from(certB64, "base64");
    const what = `log verify: entry ${index}: ${entryKind}${spiffeId === undefined ? "" : ` ${escapeControls(spiffeId)}`}`;
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(der);
    } catch (e) {
      this.#report({ index, kind: "unchained", entryKind, message: `${what}: the CA certificate does not parse: ${(e as Error).message}` });
      return;
    }
    if (this.#roots.some((r) => r.raw.equals(der))) return;
    const issuers = [...this.#roots, ...(this.#bySubject.get(cert.issuer) ?? [])];
    if (issuers.some((i) => cert.checkIssued(i) && cert.verify(i.publicKey))) {
      if (this.#intermediates.length < MAX_INTERMEDIATES && !this.#intermediates.some((c) => c.raw.equals(der))) {
        this.#intermediates.push(cert);
        this.#bySubject.set(cert.subject, [...(this.#bySubject.get(cert.subject) ?? []), cert]);
      }
      return;
    }
    this.#report({ index, kind: "unchained", entryKind, ...(spiffeId === undefined ? {} : { spiffeId }), message: `${what}: the CA certificate ${escapeControls(cert.subject.replace(/\n/g, ", "))} is neither in the trust bundle of ${this.#o.trustDomain.name} nor signed by it` });
  }

  /** The logged CA certificates that may be on the path above a certificate issued by `issuer` (DER). */
  #candidates(issuer: string): Buffer[] {
    const out: Buffer[] = [];
    const seen = new Set<string>();
    let names = [issuer];
    for (let depth = 0; depth < 8 && names.length > 0; depth++) {
      const next: string[] = [];
      for (const name of names) {
        if (seen.has(name)) continue;
        seen.add(name);
        for (const c of this.#bySubject.get(name) ?? []) {
          out.push(c.raw);
          next.push(c.issuer);
        }
      }
      names = next;
    }
    return out;
  }

  #report(f: AuditFinding): void {
    this.#counts.set(f.kind, (this.#counts.get(f.kind) ?? 0) + 1);
    this.#o.onFinding?.(f);
  }
}
