/**
 * What a taint covers on the agent, and when its replacements are asked for.
 *
 * The server names tainted X.509 authorities by the SHA-256 of their
 * SubjectPublicKeyInfo. An X509-SVID is covered when any certificate of its
 * chain was signed by a tainted authority, or is one (a tainted intermediate
 * sits in the chain; a tainted root signs the top of it from the bundle). The
 * signer is found by name and key identifier, and by signature when a
 * certificate carries no authority key identifier: CAs of one trust domain
 * often share a subject name across rotations.
 *
 * Replacements are planned in batches, each at its own random point of a
 * spread window: every agent learns of a taint within the same second (the
 * change notice), so without the spread the whole fleet would ask at once.
 * A covered SVID stays served until its replacement is in the cache; the
 * authority stays in the bundle until it is revoked, so it still verifies.
 */
import { createHash, X509Certificate } from "node:crypto";
import { decodeCertificate, type DecodedCertificate } from "../../spiffe/x509/decode-certificate.js";
import { keyIdentifier } from "../../spiffe/x509/extensions.js";
import type { TaintSet } from "../sync/server-client.js";

/** Default most X509-SVIDs per replacement request under a taint. */
export const DEFAULT_TAINT_BATCH_SIZE = 100;
/** Default window over which an agent spreads its replacement batches (ms). */
export const DEFAULT_TAINT_SPREAD_MS = 10_000;

/** A taint set with nothing in it. */
export const NO_TAINT: TaintSet = { x509SpkiSha256: new Set(), jwtKeyIds: new Set() };

/** Whether two taint sets name the same authorities. */
export function sameTaint(a: TaintSet, b: TaintSet): boolean {
  const same = (x: ReadonlySet<string>, y: ReadonlySet<string>): boolean => x.size === y.size && [...x].every((v) => y.has(v));
  return same(a.x509SpkiSha256, b.x509SpkiSha256) && same(a.jwtKeyIds, b.jwtKeyIds);
}

/** Lower-case hex SHA-256 of a certificate's SubjectPublicKeyInfo (DER), as the server names tainted authorities. */
export function spkiSha256Hex(cert: DecodedCertificate): string {
  return createHash("sha256").update(cert.spki).digest("hex");
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");

interface TaintedAuthority {
  readonly subject: string;
  /** The authority's subject key identifier, and the one computed from its key (either may be what children name). */
  readonly keyIds: ReadonlySet<string>;
  readonly der: Uint8Array;
}

/**
 * Decides which chains a taint set covers. Build one per taint set and
 * bundle; it remembers the intermediates it has seen, so checking thousands
 * of SVIDs under the same CA decodes that CA once.
 */
export class TaintMatcher {
  readonly #taint: ReadonlySet<string>;
  /** Tainted certificates seen so far (bundle roots, chain intermediates), by subject. */
  readonly #tainted = new Map<string, TaintedAuthority[]>();
  readonly #seen = new Set<string>();
  /** Verdicts for a certificate (by DER) that is not a leaf: it or its signer is tainted. */
  readonly #verdicts = new Map<string, boolean>();
  readonly #publicKeys = new Map<Uint8Array, X509Certificate>();

  /**
   * @param taint the tainted SPKI hashes
   * @param authorities the own trust domain's X.509 authorities (DER), where a tainted root is found
   */
  constructor(taint: ReadonlySet<string>, authorities: readonly Uint8Array[]) {
    this.#taint = taint;
    for (const der of authorities) this.#learn(der);
  }

  /** True when nothing is tainted: no chain can match. */
  get empty(): boolean {
    return this.#taint.size === 0;
  }

  /**
   * Whether the chain (leaf first, then its intermediates, DER) runs through a
   * tainted authority. A chain that cannot be decoded is not covered (it is
   * not this module's to judge; it was verified when obtained).
   */
  covers(chain: readonly Uint8Array[]): boolean {
    if (this.empty || chain.length === 0) return false;
    let decoded: DecodedCertificate[];
    try {
      for (const der of chain.slice(1)) this.#learn(der);
      decoded = chain.map((d) => decodeCertificate(d));
    } catch {
      return false;
    }
    return decoded.some((cert, i) => {
      if (i === 0) return this.#signedByTainted(cert);
      const key = Buffer.from(cert.der).toString("base64");
      let verdict = this.#verdicts.get(key);
      if (verdict === undefined) {
        verdict = this.#taint.has(spkiSha256Hex(cert)) || this.#signedByTainted(cert);
        this.#verdicts.set(key, verdict);
      }
      return verdict;
    });
  }

  #learn(der: Uint8Array): void {
    const key = Buffer.from(der).toString("base64");
    if (this.#seen.has(key)) return;
    this.#seen.add(key);
    const cert = decodeCertificate(der);
    if (!this.#taint.has(spkiSha256Hex(cert))) return;
    const keyIds = new Set([hex(keyIdentifier(cert.subjectPublicKeyBits))]);
    if (cert.subjectKeyId) keyIds.add(hex(cert.subjectKeyId));
    const subject = hex(cert.subject);
    const list = this.#tainted.get(subject) ?? [];
    list.push({ subject, keyIds, der });
    this.#tainted.set(subject, list);
  }

  /** Whether a tainted authority signed `cert`: same issuer name, and the key identifier or the signature says it was that key. */
  #signedByTainted(cert: DecodedCertificate): boolean {
    const candidates = this.#tainted.get(hex(cert.issuer));
    if (!candidates) return false;
    const aki = cert.authorityKeyId ? hex(cert.authorityKeyId) : undefined;
    if (aki !== undefined) return candidates.some((c) => c.keyIds.has(aki));
    const x = new X509Certificate(cert.der);
    return candidates.some((c) => {
      let issuer = this.#publicKeys.get(c.der);
      if (!issuer) this.#publicKeys.set(c.der, (issuer = new X509Certificate(c.der)));
      return x.verify(issuer.publicKey);
    });
  }
}

/** An SVID the taint covers, with what orders the plan. */
export interface TaintedItem {
  readonly id: string;
  /** Soonest-expiring first: it has the least time left to be replaced. */
  readonly notAfter: Date;
}

/**
 * When each covered SVID is asked for again: in batches of at most
 * `batchSize`, soonest-expiring first, each batch at `now` plus its own
 * uniform random point of `[0, spreadMs)`. Pure.
 *
 * @param random uniform in [0, 1), one call per batch
 */
export function planTaintReplacements(items: readonly TaintedItem[], now: Date, options: { readonly batchSize: number; readonly spreadMs: number }, random: () => number): Map<string, Date> {
  const sorted = [...items].sort((a, b) => a.notAfter.getTime() - b.notAfter.getTime() || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const batchSize = Math.max(1, Math.floor(options.batchSize));
  const plan = new Map<string, Date>();
  for (let i = 0; i < sorted.length; i += batchSize) {
    const offset = Math.floor(Math.min(Math.max(random(), 0), 1) * Math.max(0, options.spreadMs));
    const at = new Date(now.getTime() + offset);
    for (const item of sorted.slice(i, i + batchSize)) plan.set(item.id, at);
  }
  return plan;
}

/**
 * The latest time of a plan from {@link planTaintReplacements}, or undefined
 * for an empty one. A loop, not `Math.max(...times)`: spreading a plan of
 * ~100,000 SVIDs into arguments throws a RangeError.
 */
export function lastPlannedAt(plan: ReadonlyMap<string, Date>): Date | undefined {
  let last: Date | undefined;
  for (const at of plan.values()) if (last === undefined || at.getTime() > last.getTime()) last = at;
  return last;
}

/** The `kid` of a compact JWS's protected header, or undefined when it has none or cannot be read. */
export function jwtKeyId(token: string): string | undefined {
  const header = token.split(".", 1)[0];
  if (!header) return undefined;
  try {
    const parsed: unknown = JSON.parse(Buffer.from(header, "base64url").toString("utf8"));
    const kid = typeof parsed === "object" && parsed !== null ? (parsed as { kid?: unknown }).kid : undefined;
    return typeof kid === "string" ? kid : undefined;
  } catch {
    return undefined;
  }
}
