/**
 * The SPIFFE bundle endpoint (SPIFFE Federation §5): this trust domain's
 * bundle over HTTPS for the servers that federate with it. `GET` (or `HEAD`)
 * on the configured path answers the current bundle with `spiffe_sequence`
 * and `spiffe_refresh_hint`; the body is rendered once per bundle change, so a
 * rotation is visible on the next request (FED-15) and a request costs no
 * serialization. TLS 1.2+ with Mozilla's "intermediate" ciphers (FED-8); no
 * client certificate or credential is ever asked for (FED-14). The serving
 * certificate comes from a {@link ServingCertificateSource} (the server's
 * SVID, an SVID minted for the endpoint, or a WebPKI file pair) and is swapped
 * for new connections whenever the source changes.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import type { SecureContextOptions } from "node:tls";
import { hasRequestBody, limitPublicHttpServer, PUBLIC_HTTP_LIMITS, publicHttpServerOptions } from "../../common/http-limits.js";
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import { serializeSpiffeBundle, type SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { SigilError } from "../../spiffe/errors.js";

/** A certificate chain and its key, PEM, as the endpoint presents them. */
export interface ServingCertificate {
  /** Leaf first, then intermediates. */
  readonly certChainPem: string;
  /** The leaf's private key (PKCS#8 or PKCS#1/SEC1 PEM). */
  readonly privateKeyPem: string;
}

/** Where the endpoint's TLS identity comes from; it changes over time (SVID renewal, file reload). */
export interface ServingCertificateSource {
  /**
   * The certificate to present now.
   *
   * @throws SigilError `ERR_UNAVAILABLE` before the source has one
   */
  current(): ServingCertificate;
  /** Calls `listener` after every change of {@link current}; returns the unsubscribe function. */
  onChange(listener: () => void): () => void;
}

/** The own trust domain's bundle, kept current (a {@link CaManager} is one). */
export interface OwnBundleSource {
  /** The current bundle. */
  bundle(): SpiffeBundle;
  /** Calls `listener` with each new bundle; returns the unsubscribe function. */
  onBundleChange(listener: (bundle: SpiffeBundle) => void): () => void;
}

/** Options of {@link startBundleEndpoint}. */
export interface BundleEndpointOptions {
  /** Address to listen on. */
  readonly host: string;
  /** Port; 0 picks a free one (see {@link BundleEndpoint.port}). */
  readonly port: number;
  /** URL path of the bundle (`/` by default in config); anything else answers 404. */
  readonly path: string;
  /** `spiffe_refresh_hint` of the served bundle, whole seconds (BUNDLE-7). */
  readonly refreshHintSeconds: number;
  readonly bundles: OwnBundleSource;
  readonly certificates: ServingCertificateSource;
  /** Receives `sigil_bundle_endpoint_requests_total{code}`. */
  readonly metrics: Metrics;
  readonly log: Logger;
}

/** A listening bundle endpoint. */
export interface BundleEndpoint {
  /** The address actually bound. */
  readonly host: string;
  /** The port actually bound. */
  readonly port: number;
  /** `https://host:port/path`: what federated servers are configured with (with a DNS name for `https_web`). */
  readonly url: string;
  /** Stops listening, closes open connections and stops following the bundle and the certificate. */
  close(): Promise<void>;
}

/**
 * Mozilla's "intermediate" TLS 1.2 suites (server-side-tls v5), ECDHE only: the
 * DHE suites of the list need configured DH parameters, which the endpoint
 * does not have. Then the three TLS 1.3 suites, which Node takes from the same string.
 */
export const INTERMEDIATE_CIPHERS = [
  "TLS_AES_128_GCM_SHA256",
  "TLS_AES_256_GCM_SHA384",
  "TLS_CHACHA20_POLY1305_SHA256",
  "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-RSA-AES128-GCM-SHA256",
  "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-ECDSA-CHACHA20-POLY1305",
  "ECDHE-RSA-CHACHA20-POLY1305",
].join(":");

/** TLS settings of every context the endpoint uses (FED-8, FED-14). */
const TLS_SETTINGS = { minVersion: "TLSv1.2", ciphers: INTERMEDIATE_CIPHERS, honorCipherOrder: true } as const satisfies SecureContextOptions;

const JSON_TYPE = "application/json";

/** A pre-rendered response. */
interface Rendered {
  readonly body: Buffer;
  readonly sequence: string;
}

function secureContextOptions(cert: ServingCertificate): SecureContextOptions {
  return { ...TLS_SETTINGS, cert: cert.certChainPem, key: cert.privateKeyPem };
}

/**
 * Starts the bundle endpoint and resolves once it listens.
 *
 * @example
 * ```ts
 * const endpoint = await startBundleEndpoint({ host: "0.0.0.0", port: 8443, path: "/", refreshHintSeconds: 300, bundles: ca, certificates, metrics, log });
 * log.info({ url: endpoint.url }, "bundle endpoint listening");
 * ```
 * @throws SigilError `ERR_UNAVAILABLE` when the address cannot be bound or no certificate is available yet,
 *   `ERR_INVALID_ARGUMENT` when the certificate or key is unusable
 */
export async function startBundleEndpoint(options: BundleEndpointOptions): Promise<BundleEndpoint> {
  const { log, path } = options;
  const requests = options.metrics.counter({
    name: "sigil_bundle_endpoint_requests_total",
    help: "Requests to the SPIFFE bundle endpoint, by HTTP status code.",
    labelNames: ["code"],
  });
  const render = (bundle: SpiffeBundle): Rendered => {
    // The configured hint wins over the stored one: it is what the operator promised federated servers.
    const served: SpiffeBundle = { ...bundle, refreshHintSeconds: options.refreshHintSeconds };
    return { body: Buffer.from(serializeSpiffeBundle(served), "utf8"), sequence: (bundle.sequenceNumber ?? 0n).toString() };
  };
  let current = render(options.bundles.bundle());

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const send = (status: number, headers: Record<string, string | number>, body: Buffer | string): void => {
      if (hasRequestBody(req)) headers["connection"] = "close"; // never read (or wait for) a body nobody asked for
      res.writeHead(status, { "cache-control": "no-store", "content-length": Buffer.byteLength(body), ...headers });
      res.end(req.method === "HEAD" ? undefined : body);
      requests.inc({ code: String(status) });
    };
    const target = (req.url ?? "/").split("?")[0];
    if (target !== path) return send(404, { "content-type": JSON_TYPE }, `${JSON.stringify({ error: "not found" })}\n`);
    if (req.method !== "GET" && req.method !== "HEAD") {
      return send(405, { "content-type": JSON_TYPE, allow: "GET, HEAD" }, `${JSON.stringify({ error: "method not allowed" })}\n`);
    }
    const r = current;
    send(200, { "content-type": JSON_TYPE, etag: `"${r.sequence}"` }, r.body);
  };

  let server: Server;
  try {
    server = createServer(
      {
        ...secureContextOptions(options.certificates.current()),
        requestCert: false,
        // A bundle fetch is one small GET: slow or idle clients must not hold the endpoint.
        ...publicHttpServerOptions(PUBLIC_HTTP_LIMITS),
      },
      handle,
    );
  } catch (e) {
    if (e instanceof SigilError) throw e;
    throw new SigilError("ERR_INVALID_ARGUMENT", `bundle endpoint: the serving certificate is unusable: ${(e as Error).message}`, { cause: e });
  }
  limitPublicHttpServer(server, PUBLIC_HTTP_LIMITS);
  server.on("tlsClientError", (e) => log.debug({ err: e.message }, "bundle endpoint: TLS handshake failed"));

  const unsubscribeBundle = options.bundles.onBundleChange((b) => {
    try {
      current = render(b);
    } catch (e) {
      log.error({ err: (e as Error).message }, "bundle endpoint: cannot serialize the new bundle; still serving the previous one");
    }
  });
  const unsubscribeCert = options.certificates.onChange(() => {
    try {
      server.setSecureContext(secureContextOptions(options.certificates.current()));
    } catch (e) {
      log.error({ err: (e as Error).message }, "bundle endpoint: cannot use the new serving certificate; still serving the previous one");
    }
  });
  const unsubscribe = (): void => {
    unsubscribeBundle();
    unsubscribeCert();
  };

  try {
    await new Promise<void>((resolve, reject) => {
      const onError = (e: Error): void => reject(new SigilError("ERR_UNAVAILABLE", `bundle endpoint: cannot listen on ${options.host}:${options.port}: ${e.message}`, { cause: e }));
      server.once("error", onError);
      server.listen(options.port, options.host, () => {
        server.off("error", onError);
        resolve();
      });
    });
  } catch (e) {
    unsubscribe();
    throw e;
  }
  const addr = server.address() as AddressInfo;
  const urlHost = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  return {
    host: addr.address,
    port: addr.port,
    url: `https://${urlHost}:${addr.port}${path}`,
    close: () => {
      unsubscribe();
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
