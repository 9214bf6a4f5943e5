/**
 * Limits of the HTTP(S) listeners that face other networks (the bundle
 * endpoint, OIDC discovery): each serves one small GET, so every phase of a
 * request gets seconds, not Node's minutes, and one client cannot hold an
 * unbounded number of connections open (slowloris).
 */
import type { IncomingMessage, Server as HttpServer } from "node:http";
import type { Server as HttpsServer } from "node:https";

/** Timeouts (milliseconds) and the connection cap of a public listener. */
export interface PublicHttpLimits {
  /** TLS handshake (HTTPS only). */
  readonly handshakeTimeoutMs: number;
  /** From the first byte to the end of the request headers. */
  readonly headersTimeoutMs: number;
  /** The whole request. */
  readonly requestTimeoutMs: number;
  /** An idle keep-alive connection between requests. */
  readonly keepAliveTimeoutMs: number;
  /** A socket with no traffic at all. */
  readonly idleSocketTimeoutMs: number;
  /** Open connections; further ones are closed as they arrive. */
  readonly maxConnections: number;
}

/** The limits both public listeners use. */
export const PUBLIC_HTTP_LIMITS: PublicHttpLimits = {
  handshakeTimeoutMs: 10_000,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 15_000,
  keepAliveTimeoutMs: 5_000,
  idleSocketTimeoutMs: 30_000,
  maxConnections: 1024,
};

/** The `createServer` options that carry `limits` (Node checks the header and request timeouts every second). */
export function publicHttpServerOptions(limits: PublicHttpLimits): {
  handshakeTimeout: number;
  headersTimeout: number;
  requestTimeout: number;
  keepAliveTimeout: number;
  connectionsCheckingInterval: number;
} {
  return {
    handshakeTimeout: limits.handshakeTimeoutMs,
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    // Node's default (30 s) would let a slow client keep its connection three times the headers timeout.
    connectionsCheckingInterval: Math.min(1_000, limits.headersTimeoutMs),
  };
}

/** Applies the limits that are set on a created server: the connection cap and the idle-socket timeout. */
export function limitPublicHttpServer(server: HttpServer | HttpsServer, limits: PublicHttpLimits): void {
  server.maxConnections = limits.maxConnections;
  server.setTimeout(limits.idleSocketTimeoutMs, (socket) => socket.destroy());
}

/** True when the request announces a body, which these listeners never read: answer it with `connection: close`. */
export function hasRequestBody(req: IncomingMessage): boolean {
  const length = req.headers["content-length"];
  return (length !== undefined && length !== "0") || req.headers["transfer-encoding"] !== undefined;
}
