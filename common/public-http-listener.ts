/**
 * An HTTP(S) listener facing other networks, with the limits of
 * `http-limits.ts` and optional TLS whose certificate and key files are
 * re-read when their modification time changes (checked every
 * `tlsReloadIntervalMs`), so a renewed certificate is served without a
 * restart; a pair that fails to load keeps the previous one. Used by OIDC
 * discovery and the transparency log's tiles listener.
 */
import { readFileSync, statSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { createSecureContext } from "node:tls";
import { limitPublicHttpServer, PUBLIC_HTTP_LIMITS, publicHttpServerOptions, type PublicHttpLimits } from "./http-limits.js";
import type { Logger } from "./log.js";
import { SigilError } from "../spiffe/errors.js";

/** Certificate and key files of an HTTPS listener. */
export interface TlsFiles {
  /** PEM: the serving certificate, then its intermediates. */
  readonly certFile: string;
  /** PEM: its private key. */
  readonly keyFile: string;
}

/** Options of {@link startPublicHttpListener}. */
export interface PublicHttpListenerOptions {
  readonly host: string;
  /** 0 picks a free port. */
  readonly port: number;
  /** HTTPS with these files; plain HTTP without. */
  readonly tls?: TlsFiles | undefined;
  readonly handle: (req: IncomingMessage, res: ServerResponse) => void;
  /** Prefix of messages and logs, e.g. "tlog". */
  readonly subsystem: string;
  /** How often the TLS files are checked for changes (default 10 s). */
  readonly tlsReloadIntervalMs?: number | undefined;
  /** Timeouts and connection cap (default {@link PUBLIC_HTTP_LIMITS}). */
  readonly limits?: PublicHttpLimits | undefined;
  readonly log: Logger;
}

/** A running listener. */
export interface PublicHttpListener {
  readonly host: string;
  readonly port: number;
  /** `http(s)://host:port`. */
  readonly url: string;
  /** Stops listening, closes open connections and the TLS file watch. */
  close(): Promise<void>;
}

function loadTls(files: TlsFiles, subsystem: string): { cert: Buffer; key: Buffer } {
  try {
    const cert = readFileSync(files.certFile);
    const key = readFileSync(files.keyFile);
    // Fails here, with the file names, rather than at the first handshake.
    createSecureContext({ cert, key });
    return { cert, key };
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `${subsystem}: cannot load the serving certificate ${files.certFile} and key ${files.keyFile}: ${(e as Error).message}`, { cause: e });
  }
}

function mtimes(files: TlsFiles): string {
  try {
    return `${statSync(files.certFile).mtimeMs}/${statSync(files.keyFile).mtimeMs}`;
  } catch {
    return "missing";
  }
}

/**
 * Starts the listener.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` when the TLS files cannot be loaded, `ERR_UNAVAILABLE` when the address cannot be bound.
 */
export async function startPublicHttpListener(options: PublicHttpListenerOptions): Promise<PublicHttpListener> {
  const { subsystem, handle } = options;
  const limits = options.limits ?? PUBLIC_HTTP_LIMITS;
  let server: Server | HttpsServer;
  let watch: NodeJS.Timeout | undefined;
  const tls = options.tls;
  if (tls) {
    let seen = mtimes(tls);
    const https = createHttpsServer({ ...loadTls(tls, subsystem), ...publicHttpServerOptions(limits) }, handle);
    server = https;
    watch = setInterval(() => {
      const now = mtimes(tls);
      if (now === seen) return;
      seen = now;
      try {
        https.setSecureContext(loadTls(tls, subsystem));
        options.log.info({ cert_file: tls.certFile }, `${subsystem}: serving certificate reloaded`);
      } catch (e) {
        options.log.warn({ err: (e as Error).message }, `${subsystem}: serving certificate not reloaded; keeping the previous one`);
      }
    }, options.tlsReloadIntervalMs ?? 10_000);
    watch.unref();
  } else {
    server = createHttpServer(publicHttpServerOptions(limits), handle);
  }
  limitPublicHttpServer(server, limits);
  try {
    await new Promise<void>((resolve, reject) => {
      const onError = (e: Error): void => reject(new SigilError("ERR_UNAVAILABLE", `${subsystem}: cannot listen on ${options.host}:${options.port}: ${e.message}`, { cause: e }));
      server.once("error", onError);
      server.listen(options.port, options.host, () => {
        server.off("error", onError);
        resolve();
      });
    });
  } catch (e) {
    if (watch) clearInterval(watch);
    throw e;
  }
  const addr = server.address() as AddressInfo;
  const urlHost = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  return {
    host: addr.address,
    port: addr.port,
    url: `${tls ? "https" : "http"}://${urlHost}:${addr.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        if (watch) clearInterval(watch);
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
