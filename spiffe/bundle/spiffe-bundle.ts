/**
 * SPIFFE bundles (SPIFFE Trust Domain and Bundle §4): one trust domain's X.509
 * and JWT authorities with their sequence number and refresh hint, and the JWK
 * Set JSON they travel in.
 *
 * Parsing follows the spec's leniency and logs what it skipped (pitfalls A7,
 * A10): JWKs with a missing, unknown or wrong-case `use`, an unknown `kty` or
 * curve, or an x509-svid entry without certificates are skipped with a warning;
 * only `x5c[0]` is used. Things that cannot be read safely are errors: a
 * jwt-svid key without a `kid`, a duplicate `kid`, an `x5c[0]` that is not a
 * certificate, key parameters that disagree with the certificate.
 */
import { X509Certificate, type KeyObject } from "node:crypto";
import { SigilError } from "../errors.js";
import type { TrustDomain } from "../id.js";
import { hasKeyParams, jwkToPublicKey, publicKeyToJwkParams, samePublicKey, SUPPORTED_KTYS } from "./jwk.js";
import { formatJsonPath, formatJsonValue, isJsonObject, parseJson, type JsonArray, type JsonObject, type JsonValue } from "./json.js";
import { JwtBundle } from "./jwt-bundle.js";
import { X509Bundle } from "./x509-bundle.js";

/** One trust domain's bundle. */
export interface SpiffeBundle {
  readonly trustDomain: TrustDomain;
  /** DER of each X.509 authority (root CA certificate), in order. */
  readonly x509Authorities: readonly Uint8Array[];
  /** JWT authorities keyed by `kid`. */
  readonly jwtAuthorities: ReadonlyMap<string, KeyObject>;
  /** `spiffe_sequence`: a 64-bit unsigned integer, exact at any size. */
  readonly sequenceNumber?: bigint;
  /** `spiffe_refresh_hint`, in whole seconds. */
  readonly refreshHintSeconds?: number;
}

/** A parsed bundle and what the parser skipped or ignored, for the log. */
export interface ParsedSpiffeBundle {
  readonly bundle: SpiffeBundle;
  /** Messages such as `bundle: keys[2] has no x5c; skipped`. */
  readonly warnings: string[];
}

/** `use` of a JWK holding an X.509 authority (X509-22). */
export const USE_X509_SVID = "x509-svid";
/** `use` of a JWK holding a JWT authority (JWT-19). */
export const USE_JWT_SVID = "jwt-svid";

/** Largest `spiffe_sequence`: 2^64 - 1. */
export const MAX_SEQUENCE_NUMBER = 0xffff_ffff_ffff_ffffn;

const STD_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function invalid(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_BUNDLE_INVALID", `bundle: ${message}`, cause === undefined ? undefined : { cause });
}

/** The X.509 half of a bundle, as verification takes it. */
export function toX509Bundle(bundle: SpiffeBundle): X509Bundle {
  return new X509Bundle(bundle.trustDomain, bundle.x509Authorities);
}

/** The JWT half of a bundle, as validation takes it. */
export function toJwtBundle(bundle: SpiffeBundle): JwtBundle {
  return new JwtBundle(bundle.trustDomain, bundle.jwtAuthorities);
}

/** Options for {@link readBundleObject}. */
export interface ReadBundleOptions {
  /** Path of the bundle object inside the document, for messages (`["trust_domains", "a.org"]`). */
  readonly path?: readonly (string | number)[];
  /** Drop `spiffe_refresh_hint`: a bundle map's schedule is its own (BUNDLE-16). */
  readonly ignoreRefreshHint?: boolean;
}

/**
 * Reads one already-parsed bundle object. Shared by {@link parseSpiffeBundle} and
 * the bundle-map parser so both apply the same rules.
 *
 * @throws SigilError `ERR_BUNDLE_INVALID`.
 */
export function readBundleObject(obj: JsonObject, trustDomain: TrustDomain, warnings: string[], options: ReadBundleOptions = {}): SpiffeBundle {
  const base = options.path ?? [];
  const at = (...more: (string | number)[]): string => formatJsonPath([...base, ...more]);
  const keys = obj["keys"];
  if (keys === undefined) throw invalid(`${at("keys")} is missing`);
  if (!Array.isArray(keys)) throw invalid(`${at("keys")} is not an array`);

  const x509 = new Map<string, Uint8Array>();
  const jwt = new Map<string, KeyObject>();
  for (let i = 0; i < keys.length; i++) {
    const entry: JsonValue | undefined = (keys as JsonArray)[i];
    const where = at("keys", i);
    if (!isJsonObject(entry)) throw invalid(`${where} is not a JSON object`);
    const use = entry["use"];
    // use is case-sensitive (BUNDLE-13); anything else is skipped, never fatal (BUNDLE-9, A7).
    if (use === undefined) {
      warnings.push(`bundle: ${where} has no use; skipped`);
      continue;
    }
    if (use !== USE_X509_SVID && use !== USE_JWT_SVID) {
      warnings.push(`bundle: ${where} has unsupported use ${formatJsonValue(use)}; skipped`);
      continue;
    }
    const kty = entry["kty"];
    if (typeof kty !== "string" || !SUPPORTED_KTYS.includes(kty)) {
      warnings.push(`bundle: ${where} has ${kty === undefined ? "no kty" : `unsupported kty ${formatJsonValue(kty)}`}; skipped`);
      continue;
    }
    if (use === USE_X509_SVID) {
      const der = readX509Entry(entry, kty, where, warnings);
      if (der === undefined) continue;
      const id = Buffer.from(der).toString("base64");
      if (x509.has(id)) warnings.push(`bundle: ${where} repeats an earlier certificate; skipped`);
      else x509.set(id, der);
    } else {
      const kid = entry["kid"];
      if (typeof kid !== "string" || kid.length === 0) throw invalid(`${where} is a jwt-svid key without a kid`);
      if (jwt.has(kid)) throw invalid(`${where} repeats kid ${JSON.stringify(kid)}`);
      const key = jwkToPublicKey(entry);
      if ("kind" in key) {
        if (key.kind === "invalid") throw invalid(`${where}: ${key.message}`);
        warnings.push(`bundle: ${where}: ${key.message}; skipped`);
        continue;
      }
      jwt.set(kid, key);
    }
  }

  const sequenceNumber = readSequence(obj["spiffe_sequence"], at("spiffe_sequence"));
  // §5.1.1 and §6.1 call the hint refresh_hint; treat it as the same field (pitfall A12).
  const hintName = obj["spiffe_refresh_hint"] !== undefined ? "spiffe_refresh_hint" : "refresh_hint";
  const refreshHintSeconds = options.ignoreRefreshHint ? undefined : readRefreshHint(obj[hintName], at(hintName));
  return Object.freeze({
    trustDomain,
    x509Authorities: Object.freeze([...x509.values()]),
    jwtAuthorities: jwt,
    ...(sequenceNumber !== undefined ? { sequenceNumber } : {}),
    ...(refreshHintSeconds !== undefined ? { refreshHintSeconds } : {}),
  });
}

function readX509Entry(entry: JsonObject, kty: string, where: string, warnings: string[]): Uint8Array | undefined {
  const x5c = entry["x5c"];
  // Missing or empty x5c: skip this entry, keep the rest of the bundle (X509-25).
  if (x5c === undefined) {
    warnings.push(`bundle: ${where} has no x5c; skipped`);
    return undefined;
  }
  if (!Array.isArray(x5c)) throw invalid(`${where}.x5c is not an array`);
  if (x5c.length === 0) {
    warnings.push(`bundle: ${where} has an empty x5c; skipped`);
    return undefined;
  }
  if (x5c.length > 1) warnings.push(`bundle: ${where}.x5c has ${x5c.length} certificates; only the first is used`);
  if (entry["kid"] !== undefined) warnings.push(`bundle: ${where} is an x509-svid entry with a kid; kid ignored`);
  const first: unknown = x5c[0];
  // x5c is standard base64 (RFC 7517 §4.7), not base64url.
  if (typeof first !== "string" || first.length === 0 || !STD_BASE64.test(first)) throw invalid(`${where}.x5c[0] is not standard base64`);
  const der = new Uint8Array(Buffer.from(first, "base64"));
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(der);
  } catch (e) {
    throw invalid(`${where}.x5c[0] is not a DER certificate`, e);
  }
  let certKey: KeyObject;
  try {
    certKey = cert.publicKey;
  } catch (e) {
    throw invalid(`${where}.x5c[0] holds a public key that cannot be loaded`, e);
  }
  const certKty = certKey.asymmetricKeyType === "ec" ? "EC" : certKey.asymmetricKeyType === "rsa" ? "RSA" : String(certKey.asymmetricKeyType);
  if (certKty !== kty) throw invalid(`${where} has kty ${JSON.stringify(kty)} but its certificate holds an ${certKty} key`);
  // Key parameters that disagree with the certificate mean a corrupt or forged entry (pitfall A10).
  if (hasKeyParams(entry)) {
    const key = jwkToPublicKey(entry);
    if ("kind" in key) throw invalid(`${where}: ${key.message}`);
    if (!samePublicKey(key, certKey)) throw invalid(`${where}: key parameters do not match the x5c[0] certificate's key`);
  }
  return der;
}

function readSequence(v: unknown, where: string): bigint | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "bigint") throw invalid(`${where} is not an integer`);
  if (v < 0n || v > MAX_SEQUENCE_NUMBER) throw invalid(`${where} ${v} is outside the 64-bit unsigned range`);
  return v;
}

function readRefreshHint(v: unknown, where: string): number | undefined {
  if (v === undefined) return undefined;
  // Integer seconds only: "5m" and 300.5 are both refused (BUNDLE-7).
  if (typeof v !== "bigint") throw invalid(`${where} is not an integer number of seconds`);
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`${where} ${v} is out of range`);
  return Number(v);
}

/**
 * Parses a SPIFFE bundle (a JWK Set with SPIFFE members) for `trustDomain`.
 * Extra top-level members are allowed and ignored (BUNDLE-5).
 *
 * @example
 * ```ts
 * const { bundle, warnings } = parseSpiffeBundle(body, parseTrustDomain("example.org"));
 * for (const w of warnings) log.warn(w);
 * ```
 * @throws SigilError `ERR_BUNDLE_INVALID` naming the member and what is wrong.
 */
export function parseSpiffeBundle(json: string | Uint8Array, trustDomain: TrustDomain): ParsedSpiffeBundle {
  const doc = parseJson(json);
  if (!isJsonObject(doc)) throw invalid("the bundle is not a JSON object");
  const warnings: string[] = [];
  return { bundle: readBundleObject(doc, trustDomain, warnings), warnings };
}

/** Options for {@link bundleToJson}. */
export interface BundleJsonOptions {
  /** Emit `spiffe_refresh_hint` when the bundle has one; default true. Bundle maps pass false (BUNDLE-16). */
  readonly includeRefreshHint?: boolean;
}

/**
 * The JSON text of a bundle object. Shared by {@link serializeSpiffeBundle} and
 * the bundle-map serializer.
 *
 * @throws SigilError `ERR_BUNDLE_INVALID` (bad sequence or hint, unreadable
 *   certificate, empty kid) or `ERR_KEY_UNSUPPORTED`.
 */
export function bundleToJson(bundle: SpiffeBundle, options: BundleJsonOptions = {}): string {
  const keys: object[] = [];
  bundle.x509Authorities.forEach((der, i) => {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(der);
    } catch (e) {
      throw invalid(`x509 authority ${i} of "${bundle.trustDomain.name}" is not a DER certificate`, e);
    }
    // One JWK per CA, key parameters from the certificate, exactly one x5c, no kid (X509-22/23/24).
    keys.push({ use: USE_X509_SVID, ...publicKeyToJwkParams(cert.publicKey), x5c: [Buffer.from(der).toString("base64")] });
  });
  for (const [kid, key] of bundle.jwtAuthorities) {
    if (kid.length === 0) throw invalid(`a JWT authority of "${bundle.trustDomain.name}" has an empty kid`);
    keys.push({ use: USE_JWT_SVID, kid, ...publicKeyToJwkParams(key) });
  }
  let out = `{"keys":${JSON.stringify(keys)}`;
  const hint = bundle.refreshHintSeconds;
  if (hint !== undefined && options.includeRefreshHint !== false) {
    if (!Number.isSafeInteger(hint) || hint < 0) throw invalid(`refresh hint ${hint} is not a whole, non-negative number of seconds`);
    out += `,"spiffe_refresh_hint":${hint}`;
  }
  const seq = bundle.sequenceNumber;
  if (seq !== undefined) {
    if (seq < 0n || seq > MAX_SEQUENCE_NUMBER) throw invalid(`sequence number ${seq} is outside the 64-bit unsigned range`);
    // Raw digits: JSON.stringify cannot write a bigint, and a number would round above 2^53.
    out += `,"spiffe_sequence":${seq.toString()}`;
  }
  return `${out}}`;
}

/**
 * Serializes a bundle as a SPIFFE bundle JWK Set: x509-svid JWKs with `kty`, key
 * parameters and one standard-base64 `x5c`; jwt-svid JWKs with `kid`;
 * `spiffe_refresh_hint` and an exact `spiffe_sequence`; nothing else.
 *
 * @example
 * ```ts
 * res.end(serializeSpiffeBundle(ca.bundle()));
 * ```
 * @throws SigilError `ERR_BUNDLE_INVALID` or `ERR_KEY_UNSUPPORTED`.
 */
export function serializeSpiffeBundle(bundle: SpiffeBundle): string {
  return bundleToJson(bundle);
}
