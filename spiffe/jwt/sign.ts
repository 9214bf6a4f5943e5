/**
 * JWT-SVID issuance. The compact JWS is built by hand (two base64url JSON
 * segments and one `Signer.sign` call) because `jose`'s SignJWT reaches less than
 * half of raw `crypto.sign` here (spec/performance-limits.md).
 */
import { SigilError, toSigilError } from "../errors.js";
import type { SpiffeId } from "../id.js";
import type { Signer } from "../signer.js";
import { defaultJwtAlgFor, jwtAlgParams, signerFitsAlg, type JwtAlg } from "./alg.js";
import { encodeJsonSegment } from "./compact.js";
import type { JwtSvidTyp } from "./header.js";

/** What to put in a JWT-SVID and who signs it. */
export interface SignJwtSvidOptions {
  /** The workload's SPIFFE ID (`sub`); a trust-domain ID is refused. */
  readonly spiffeId: SpiffeId;
  /** One or more audiences (`aud`, JWT-9). One value is emitted as a string, several as an array. */
  readonly audience: readonly string[];
  /** `exp`; must be after `issuedAt`. Truncated to whole seconds. */
  readonly expiresAt: Date;
  /** `iat`; defaults to the current time. Pass the injected clock's time. */
  readonly issuedAt?: Date;
  readonly signer: Signer;
  /** Further claims (`iss`, `jti`, custom, JWT-15). `sub`, `aud`, `exp` and `iat` cannot be overridden. */
  readonly extraClaims?: Readonly<Record<string, unknown>>;
  /** `typ` header value; default `"JWT"`. */
  readonly typ?: JwtSvidTyp;
  /** Algorithm; must fit the signer's key. Default: ES256 / ES384 for EC keys, RS256 for RSA keys. */
  readonly alg?: JwtAlg;
  /** Receives advisory messages, e.g. that more than one audience was requested (JWT-11). */
  readonly onWarning?: (message: string) => void;
}

/** Claims a caller may not set through `extraClaims`. */
const RESERVED_CLAIMS: readonly string[] = ["sub", "aud", "exp", "iat"];

// The header segment depends only on the signer, alg and typ: encode it once per combination.
const headerCache = new WeakMap<Signer, Map<string, string>>();

function headerSegment(signer: Signer, alg: JwtAlg, typ: JwtSvidTyp): string {
  let perSigner = headerCache.get(signer);
  if (perSigner === undefined) {
    perSigner = new Map();
    headerCache.set(signer, perSigner);
  }
  const key = `${alg}.${typ}`;
  let segment = perSigner.get(key);
  if (segment === undefined) {
    // Exactly alg, kid and typ (JWT-2); kid is always set (JWT-6, pitfall A4).
    segment = encodeJsonSegment({ alg, kid: signer.id, typ });
    perSigner.set(key, segment);
  }
  return segment;
}

function claimError(message: string): SigilError {
  return new SigilError("ERR_JWT_CLAIM_INVALID", `jwtsvid: ${message}`);
}

/**
 * Signs a JWT-SVID and returns it in compact serialization.
 *
 * @example
 * ```ts
 * const token = signJwtSvid({
 *   spiffeId: parseSpiffeId("spiffe://example.org/web"),
 *   audience: ["api"],
 *   issuedAt: clock.now(),
 *   expiresAt: new Date(clock.now().getTime() + 5 * 60_000),
 *   signer,
 * });
 * ```
 * @throws SigilError `ERR_JWT_CLAIM_INVALID` for an empty audience, a trust-domain
 *   `sub`, an expiry not after issuance or a reserved extra claim;
 *   `ERR_JWT_ALG_NOT_ALLOWED` when `alg` does not fit the signer; `ERR_JWT_SIGN`
 *   when the signer fails.
 */
export function signJwtSvid(options: SignJwtSvidOptions): string {
  const { spiffeId, audience, expiresAt, signer } = options;
  if (spiffeId.isTrustDomainId()) throw claimError(`sub ${spiffeId.toString()} is a trust-domain ID, not a workload identity`);
  if (audience.length === 0) throw claimError("audience must have at least one value");
  for (let i = 0; i < audience.length; i++) {
    const a = audience[i];
    if (typeof a !== "string" || a.length === 0) throw claimError(`audience[${i}] is not a non-empty string`);
  }
  if (audience.length > 1) {
    options.onWarning?.(`jwtsvid: token for ${spiffeId.toString()} has ${audience.length} audiences; a single audience is strongly recommended`);
  }
  const issuedAt = options.issuedAt ?? new Date();
  const iat = Math.floor(issuedAt.getTime() / 1000);
  const exp = Math.floor(expiresAt.getTime() / 1000);
  if (!Number.isFinite(exp) || !Number.isFinite(iat)) throw claimError("expiresAt and issuedAt must be valid dates");
  if (exp <= iat) throw claimError(`expiresAt ${expiresAt.toISOString()} is not after issuedAt ${issuedAt.toISOString()}`);
  const extra = options.extraClaims;
  if (extra !== undefined) {
    for (const name of RESERVED_CLAIMS) {
      if (Object.hasOwn(extra, name)) throw claimError(`extraClaims cannot set ${name}`);
    }
  }

  const alg = options.alg ?? defaultJwtAlgFor(signer.keyType);
  if (!signerFitsAlg(signer.keyType, alg)) {
    throw new SigilError("ERR_JWT_ALG_NOT_ALLOWED", `jwtsvid: a ${signer.keyType} signer cannot sign ${alg}`);
  }
  const params = jwtAlgParams(alg);
  const payload = {
    sub: spiffeId.toString(),
    aud: audience.length === 1 ? audience[0] : [...audience],
    exp,
    iat,
    ...extra,
  };
  const signingInput = `${headerSegment(signer, alg, options.typ ?? "JWT")}.${encodeJsonSegment(payload)}`;

  let signature: Uint8Array;
  try {
    signature = signer.sign(Buffer.from(signingInput, "latin1"), {
      hash: params.hash,
      dsaEncoding: "ieee-p1363",
      rsaPadding: params.family === "rsa-pss" ? "pss" : "pkcs1",
    });
  } catch (e) {
    throw toSigilError(e, "ERR_JWT_SIGN", `jwtsvid: signer ${signer.id} failed`);
  }
  // A signer that ignored dsaEncoding would yield DER, which no verifier accepts in a JWS.
  if (params.signatureBytes !== undefined && signature.byteLength !== params.signatureBytes) {
    throw new SigilError(
      "ERR_JWT_SIGN",
      `jwtsvid: signer ${signer.id} returned a ${signature.byteLength}-byte ${alg} signature; expected ${params.signatureBytes} (IEEE P1363)`,
    );
  }
  return `${signingInput}.${Buffer.from(signature.buffer, signature.byteOffset, signature.byteLength).toString("base64url")}`;
}
