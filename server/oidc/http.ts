/**
 * The HTTP(S) listener of OIDC discovery: `/.well-known/openid-configuration`
 * and the JWK Set, from whatever documents the caller holds now. Shared by
 * the server's `oidc-discovery` service and the `sigil-server oidc-discovery`
 * process.
 *
 * Relying parties fetch both documents over HTTPS only; plain HTTP is for a
 * listener behind a TLS-terminating proxy. With `tls`, the certificate and
 * key files are re-read when their modification time changes (checked every
 * `tlsReloadIntervalMs`), so a renewed certificate is served without a
 * restart; a pair that fails to load keeps the previous one. The listener
 * faces relying parties on other networks, so it has the bundle endpoint's
 * limits (`common/http-limits.ts`): seconds per request phase, at most 1,024
 * connections.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { hasRequestBody, PUBLIC_HTTP_LIMITS, type PublicHttpLimits } from "../../common/http-limits.js";
import type { Logger } from "../../common/log.js";
import { startPublicHttpListener, type TlsFiles } from "../../common/public-http-listener.js";
import type { OidcDocuments } from "./discovery.js";

/** The discovery path, relative to the issuer. */
export const OIDC_CONFIGURATION_PATH = "/.well-known/openid-configuration";
/** The default JWK Set path, relative to the issuer. */
export const OIDC_KEYS_PATH = "/keys";

/** Certificate and key files of an HTTPS listener. */
export type OidcTlsFiles = TlsFiles;

/** Options of {@link startOidcListener}. */
export interface OidcListenerOptions {
  readonly host: string;
  /** 0 picks a free port (see {@link OidcListener.port}). */
  readonly port: number;
  /** HTTPS with these files; plain HTTP without. */
  readonly tls?: OidcTlsFiles | undefined;
  /** The issuer: its URL path (if any) prefixes both documents' paths, as relying parties append to it. */
  readonly issuer: string;
  /** An explicit `jwks_uri`; its path is served too. */
  readonly jwksUri?: string | undefined;
  /** The documents to serve now; undefined answers 503 (no keys yet). */
  readonly documents: () => OidcDocuments | undefined;
  /** `Cache-Control: max-age` of both documents, in seconds. */
  readonly maxAgeSeconds: number;
  /** How often the TLS files are checked for changes (default 10 s). */
  readonly tlsReloadIntervalMs?: number;
  /** Timeouts and connection cap (default {@link PUBLIC_HTTP_LIMITS}); tests shorten them. */
  readonly limits?: PublicHttpLimits;
  readonly log: Logger;
}

/** A running OIDC discovery listener. */
export interface OidcListener {
  readonly host: string;
  readonly port: number;
  /** `http(s)://host:port` of the listener (not the issuer). */
  readonly url: string;
  /** Stops listening, closes open connections and the TLS file watch. */
  close(): Promise<void>;
}

const JSON_TYPE = "application/json";

/** The paths of both documents for an issuer (and an explicit `jwks_uri`). */
export function oidcPaths(issuer: string, jwksUri?: string): { readonly configuration: ReadonlySet<string>; readonly keys: ReadonlySet<string> } {
  const prefix = new URL(issuer).pathname.replace(/\/+$/, "");
  const configuration = new Set([OIDC_CONFIGURATION_PATH, `${prefix}${OIDC_CONFIGURATION_PATH}`]);
  const keys = new Set([OIDC_KEYS_PATH, `${prefix}${OIDC_KEYS_PATH}`]);
  if (jwksUri !== undefined) keys.add(new URL(jwksUri).pathname);
  return { configuration, keys };
}

/**
 * Starts the listener. GET and HEAD only (405 otherwise, with `Allow`), 404
 * for any other path, 304 for a matching `If-None-Match`.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` when the TLS files cannot be loaded, `ERR_UNAVAILABLE` when the address cannot be bound.
 */
export async function startOidcListener(options: OidcListenerOptions): Promise<OidcListener> {
  const paths = oidcPaths(options.issuer, options.jwksUri);
  const limits = options.limits ?? PUBLIC_HTTP_LIMITS;
  const cacheControl = `public, max-age=${options.maxAgeSeconds}`;

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    const send = (status: number, headers: Record<string, string>, body: string): void => {
      // Never read (or wait for) a body nobody asked for.
      const close: Record<string, string> = hasRequestBody(req) ? { connection: "close" } : {};
      res.writeHead(status, { "content-length": String(Buffer.byteLength(body)), ...headers, ...close });
      res.end(req.method === "HEAD" ? undefined : body);
    };
    const error = (status: number, message: string, extra: Record<string, string> = {}): void =>
      send(status, { "content-type": JSON_TYPE, "cache-control": "no-store", ...extra }, `${JSON.stringify({ error: message })}\n`);
    const which = paths.configuration.has(path) ? "configuration" : paths.keys.has(path) ? "keys" : undefined;
    if (which === undefined) return error(404, "not found");
    if (req.method !== "GET" && req.method !== "HEAD") return error(405, "method not allowed", { allow: "GET, HEAD" });
    const docs = options.documents();
    if (docs === undefined) return error(503, "no JWT signing keys yet", { "retry-after": "5" });
    const [body, tag] = which === "configuration" ? [docs.configuration, docs.configurationEtag] : [docs.jwks, docs.jwksEtag];
    const headers = { "content-type": JSON_TYPE, "cache-control": cacheControl, etag: tag };
    const ifNoneMatch = req.headers["if-none-match"];
    if (ifNoneMatch !== undefined && ifNoneMatch.split(",").some((t) => t.trim() === tag)) {
      res.writeHead(304, headers);
      res.end();
      return;
    }
    send(200, headers, body);
  };

  return startPublicHttpListener({ host: options.host, port: options.port, tls: options.tls, handle, subsystem: "oidc", tlsReloadIntervalMs: options.tlsReloadIntervalMs, limits, log: options.log });
}
