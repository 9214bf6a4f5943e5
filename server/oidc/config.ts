/**
 * Config of OIDC discovery: the `oidc_discovery` section of the server config
 * (the server's `oidc-discovery` service), and the config file of the
 * `sigil-server oidc-discovery` process, which takes its keys from a local
 * agent's Workload API instead of the CA. Both share the listener keys.
 */
import { z } from "zod";
import { duration } from "../../common/config/duration.js";
import { healthChecksSection, host, logLevel, port, trustDomainName } from "../../common/config/fields.js";

/**
 * Why `issuer` cannot be the issuer of OIDC discovery, or undefined. Relying
 * parties append `/.well-known/openid-configuration` to it and Sigil appends
 * `/keys`, so it must be an http(s) URL without query or fragment (OpenID
 * Connect Discovery 1.0, section 2).
 */
export function oidcIssuerProblem(issuer: string): string | undefined {
  let protocol: string;
  try {
    protocol = new URL(issuer).protocol;
  } catch {
    protocol = "";
  }
  // Unescaped, `?` and `#` can only start a query or a fragment (`https://x/?` has an empty query).
  if ((protocol === "https:" || protocol === "http:") && !/[?#]/.test(issuer)) return undefined;
  return `${issuer} cannot be an OIDC issuer: it must be an http(s) URL without query or fragment (relying parties append /.well-known/openid-configuration to it)`;
}

/** Serving certificate files (HTTPS). */
const tlsSection = z
  .strictObject({
    cert_file_path: z.string().min(1).describe("PEM file with the serving certificate, followed by its intermediates. Its SAN must name the issuer's host."),
    key_file_path: z.string().min(1).describe("PEM file with the serving certificate's private key."),
  })
  .describe(
    "Serve HTTPS with this WebPKI certificate (re-read when the files change). Without it the listener speaks plain HTTP: relying parties fetch the documents over HTTPS only, so plain HTTP is for a listener behind a TLS-terminating proxy or load balancer.",
  );

/** The listener keys both configs share. */
const listenerShape = {
  address: host.default("0.0.0.0").describe("Address the discovery listener binds to."),
  port: port.default(8008).describe("Port of the discovery listener."),
  tls: tlsSection.optional(),
  jwks_uri: z
    .url({ protocol: /^https?$/ })
    .optional()
    .describe("`jwks_uri` to advertise when the JWK Set is published elsewhere (a CDN or bucket). Default: `<issuer>/keys`, served by this listener."),
  cache_max_age: duration({ minMs: 0 })
    .prefault("1m")
    .describe("`Cache-Control: max-age` of both documents. Keep it well under the time a prepared JWT key is published before it signs (`ca_ttl`/3)."),
};

/** The server config's `oidc_discovery` section. */
export const oidcDiscoverySection = z
  .strictObject({
    enabled: z.boolean().default(false).describe("Serve OIDC discovery for this trust domain's JWT-SVIDs from the server. Requires `server.jwt_issuer`, which becomes the document's `issuer`."),
    ...listenerShape,
  })
  .describe("OIDC discovery (`/.well-known/openid-configuration` and `/keys`) for relying parties that verify JWT-SVIDs as OIDC ID tokens: AWS STS, GCP workload identity federation, Azure, Vault (docs/oidc-discovery.md).");

/** The server config's `oidc_discovery` section, validated. */
export type OidcDiscoveryConfig = z.output<typeof oidcDiscoverySection>;

/** The config file of `sigil-server oidc-discovery`. */
export const oidcProcessConfigSchema = z
  .strictObject({
    $schema: z.string().optional().describe("JSON Schema reference for editors; ignored."),
    issuer: z
      .url({ protocol: /^https?$/ })
      .superRefine((issuer, ctx) => {
        const problem = oidcIssuerProblem(issuer);
        if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
      })
      .describe("The issuer: exactly the `iss` the JWT-SVIDs carry (the server's `server.jwt_issuer`). Relying parties fetch `<issuer>/.well-known/openid-configuration`."),
    ...listenerShape,
    workload_api: z
      .strictObject({
        socket_path: z.string().min(1).describe("The local agent's Workload API socket."),
        trust_domain: trustDomainName.describe("The trust domain whose JWT keys are published (the issuer's); bundles of federated trust domains are not."),
      })
      .describe("Where the keys come from: the JWT bundles this process receives as a workload of a local agent, watched so rotations are published as they happen."),
    log_level: logLevel.prefault("info").describe("Minimum log level."),
    log_format: z.enum(["json", "text"]).default("json").describe("`json` (one JSON object per line) or `text`."),
    health_checks: healthChecksSection({
      listenerEnabled: "Serve `/live` and `/ready` on their own HTTP listener.",
      readyPath: "Readiness path: 200 once the trust domain's JWT keys have been received from the agent, else 503.",
    }).prefault({}),
  })
  .describe("Config of `sigil-server oidc-discovery`: OIDC discovery served by a workload of a local agent.");

/** A validated `sigil-server oidc-discovery` config. */
export type OidcProcessConfig = z.output<typeof oidcProcessConfigSchema>;
