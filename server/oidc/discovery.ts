/**
 * OIDC discovery documents for a trust domain's JWT-SVID keys: the provider
 * configuration served at `<issuer>/.well-known/openid-configuration` and the
 * JWK Set it points to. Relying parties that speak OIDC (AWS STS, GCP
 * workload identity federation, Azure, Vault's JWT auth) find the keys this
 * way and check `iss` against the issuer.
 *
 * Unlike the Workload API's JWK Set (`spiffe/bundle/jwks.ts`), every key here
 * carries `use: "sig"` and the `alg` its tokens are signed with: several
 * relying parties refuse keys without them. Both the server's
 * `oidc-discovery` service and the `sigil-server oidc-discovery` process
 * render through this module.
 */
import { createHash, type KeyObject } from "node:crypto";
import type { JwtBundle } from "../../spiffe/bundle/jwt-bundle.js";
import { publicKeyToJwkParams, type JwkKeyParams } from "../../spiffe/bundle/jwk.js";
import { SigilError } from "../../spiffe/errors.js";
import type { JwtAlg } from "../../spiffe/jwt/alg.js";

/** One published key: its JWK members plus `kid`, `use` and `alg`. */
export type OidcJwk = JwkKeyParams & { readonly kid: string; readonly use: "sig"; readonly alg: JwtAlg };

/** The JWK Set served at `jwks_uri`. */
export interface OidcJwks {
  readonly keys: readonly OidcJwk[];
}

/** The OpenID Provider metadata a relying party needs to verify ID tokens. */
export interface OidcProviderMetadata {
  readonly issuer: string;
  readonly jwks_uri: string;
  readonly authorization_endpoint?: string;
  readonly response_types_supported: readonly ["id_token"];
  readonly subject_types_supported: readonly ["public"];
  readonly id_token_signing_alg_values_supported: readonly JwtAlg[];
}

/** What the documents are rendered from, besides the keys. */
export interface OidcDiscoverySettings {
  /** The `iss` of the JWT-SVIDs, exactly as they carry it. */
  readonly issuer: string;
  /** Where the JWK Set is published; default `<issuer>/keys`. */
  readonly jwksUri?: string | undefined;
  /** Optional `authorization_endpoint` (Sigil has none; a few relying parties insist on the member). */
  readonly authorizationEndpoint?: string | undefined;
}

/** Both documents, serialized once per key change, with their entity tags. */
export interface OidcDocuments {
  readonly configuration: string;
  readonly configurationEtag: string;
  readonly jwks: string;
  readonly jwksEtag: string;
  /** How many keys the JWK Set holds. */
  readonly keyCount: number;
}

/**
 * The signing algorithm of a JWT-SVID key, the one Sigil signs with
 * (`defaultJwtAlgFor`): ES256 for P-256, ES384 for P-384, ES512 for P-521,
 * RS256 for RSA.
 */
export function jwtAlgForKey(params: JwkKeyParams): JwtAlg {
  if (params.kty === "RSA") return "RS256";
  switch (params.crv) {
    case "P-256":
      return "ES256";
    case "P-384":
      return "ES384";
    case "P-521":
      return "ES512";
  }
}

/**
 * The JWK Set of a trust domain's JWT authorities, sorted by `kid` so the
 * same keys always give the same bytes (and entity tag).
 *
 * @throws SigilError `ERR_BUNDLE_INVALID` for an empty kid, `ERR_KEY_UNSUPPORTED` for a key that is neither EC nor RSA.
 */
export function oidcJwks(authorities: ReadonlyMap<string, KeyObject>): OidcJwks {
  const keys: OidcJwk[] = [];
  for (const kid of [...authorities.keys()].sort()) {
    if (kid.length === 0) throw new SigilError("ERR_BUNDLE_INVALID", "oidc: a JWT authority has an empty kid");
    const params = publicKeyToJwkParams(authorities.get(kid) as KeyObject);
    keys.push({ kid, use: "sig", alg: jwtAlgForKey(params), ...params });
  }
  return { keys };
}

/** `<issuer>/keys`, without a doubled slash. */
export function defaultJwksUri(issuer: string): string {
  return `${issuer.replace(/\/+$/, "")}/keys`;
}

/**
 * The provider configuration. `id_token_signing_alg_values_supported` lists
 * the algorithms of the published keys (ES256 when there are none yet, the
 * default key type's, since the member must not be empty).
 */
export function oidcProviderMetadata(settings: OidcDiscoverySettings, jwks: OidcJwks): OidcProviderMetadata {
  const algs = [...new Set(jwks.keys.map((k) => k.alg))].sort();
  return {
    issuer: settings.issuer,
    jwks_uri: settings.jwksUri ?? defaultJwksUri(settings.issuer),
    ...(settings.authorizationEndpoint !== undefined ? { authorization_endpoint: settings.authorizationEndpoint } : {}),
    response_types_supported: ["id_token"],
    subject_types_supported: ["public"],
    id_token_signing_alg_values_supported: algs.length > 0 ? algs : ["ES256"],
  };
}

function etag(body: string): string {
  return `"${createHash("sha256").update(body).digest("base64url").slice(0, 27)}"`;
}

/**
 * Renders both documents for the JWT bundle of the issuer's trust domain.
 *
 * @example
 * ```ts
 * const docs = renderOidcDocuments({ issuer: "https://oidc.example.org" }, toJwtBundle(ca.bundle()));
 * docs.jwks; // '{"keys":[{"kid":"jwt-A-…","use":"sig","alg":"ES256","kty":"EC",…}]}'
 * ```
 */
export function renderOidcDocuments(settings: OidcDiscoverySettings, bundle: JwtBundle | ReadonlyMap<string, KeyObject>): OidcDocuments {
  const jwks = oidcJwks("authorities" in bundle ? bundle.authorities : bundle);
  const configuration = `${JSON.stringify(oidcProviderMetadata(settings, jwks), null, 2)}\n`;
  const jwksText = `${JSON.stringify(jwks, null, 2)}\n`;
  return { configuration, configurationEtag: etag(configuration), jwks: jwksText, jwksEtag: etag(jwksText), keyCount: jwks.keys.length };
}
