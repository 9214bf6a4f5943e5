/**
 * The transparency log's tiles listener: the log as C2SP tlog-tiles over
 * HTTP(S) on its own port, so any tlog-tiles client can mirror and verify it.
 *
 * | path | body | Cache-Control |
 * |---|---|---|
 * | `/checkpoint` | the latest signed checkpoint (text/plain) | `no-cache` |
 * | `/tile/<L>/<N>`, `/tile/entries/<N>` | a full tile or entry bundle | `public, max-age=31536000, immutable` |
 * | `/tile/<L>/<N>.p/<W>`, `/tile/entries/<N>.p/<W>` | a partial one | `no-cache` |
 * | `/log-keys` | the log's verifier keys, one a line (a Sigil extension) | `no-cache` |
 * | `POST /add-checkpoint` | with `transparency_log.witness`: C2SP tlog-witness ({@link ./witness.ts}) | `no-store` |
 *
 * GET and HEAD only, but for `add-checkpoint`. A malformed tile path (parsed strictly by
 * `parseTilePath`, so `..`, `%2e` and leading zeroes never reach storage) is
 * 400, an unpublished one 404. The listener faces other networks, so it has
 * the bundle endpoint's limits (`common/http-limits.ts`): seconds per request
 * phase, at most 1,024 connections. Anonymous clients must not turn requests
 * into database reads at will: partial tiles and bundles and the key list are
 * answered from memory ({@link cachedTlogView}), and each client address
 * (an IPv6 address counts as its /64) has a token bucket; a request beyond it
 * is 429 with `Retry-After`, before anything is read. `add-checkpoint` costs
 * signature checks and a database write, so it has a bucket of its own, much
 * smaller (`witness.rate_limit_per_second`, `witness.rate_limit_burst`).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Clock } from "../../common/clock.js";
import { systemClock } from "../../common/clock.js";
import { HttpListenerService } from "../../common/health/listener-service.js";
import type { PublicHttpLimits } from "../../common/http-limits.js";
import { hasRequestBody } from "../../common/http-limits.js";
import type { Logger } from "../../common/log.js";
import { startPublicHttpListener, type PublicHttpListener, type TlsFiles } from "../../common/public-http-listener.js";
import { isSigilError } from "../../spiffe/errors.js";
import { parseTilePath } from "../../spiffe/tlog/tiles.js";
import { RateLimiter, sourceAddress } from "../api/rate-limit.js";
import { DEFAULT_TLOG_RATE_BURST, DEFAULT_TLOG_RATE_PER_SECOND, DEFAULT_WITNESS_RATE_BURST, DEFAULT_WITNESS_RATE_PER_SECOND, parseListenAddress } from "./config.js";
import { cachedTlogView } from "./read-cache.js";
import type { TlogReadView } from "./types.js";
import { MAX_ADD_CHECKPOINT_BYTES, type WitnessEndpoint } from "./witness.js";

/** Cache-Control of full tiles and full entry bundles: they never change. */
export const IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable";
/** Cache-Control of the checkpoint, partial tiles and the key list: revalidate every time. */
export const MUTABLE_CACHE_CONTROL = "no-cache";
/** The longest request target answered; a tile path of a tree of 2^53 entries is far shorter. */
export const MAX_TLOG_PATH_LENGTH = 256;

/** Options of {@link startTlogListener}. */
export interface TlogListenerOptions {
  readonly host: string;
  /** 0 picks a free port. */
  readonly port: number;
  /** HTTPS with these files (re-read when they change); plain HTTP without. */
  readonly tls?: TlsFiles | undefined;
  readonly view: TlogReadView;
  /** How often the TLS files are checked for changes (default 10 s). */
  readonly tlsReloadIntervalMs?: number | undefined;
  /** Timeouts and connection cap (default the public listeners'); tests shorten them. */
  readonly limits?: PublicHttpLimits | undefined;
  /** Requests per client address (unset: no limit). */
  readonly rateLimit?: { readonly perSecond: number; readonly burst: number } | undefined;
  /** add-checkpoint requests per client address, a bucket of their own (unset: no limit). */
  readonly witnessRateLimit?: { readonly perSecond: number; readonly burst: number } | undefined;
  /** Time of the rate limit and the key-list cache (default the system clock). */
  readonly clock?: Clock | undefined;
  /** Answers `POST /add-checkpoint` when this server is a witness. */
  readonly witness?: WitnessEndpoint | undefined;
  readonly log: Logger;
}

/** The rate-limit key of a request: its client address, an IPv6 one as its /64 ({@link sourceAddress}). */
function clientKey(req: IncomingMessage): string {
  const address = req.socket.remoteAddress;
  if (address === undefined) return "unknown";
  return sourceAddress(address.includes(":") ? `[${address}]:0` : `${address}:0`);
}

const OCTETS = "application/octet-stream";
const TEXT = "text/plain; charset=utf-8";

/**
 * The request handler alone (exported for tests that drive it without a
 * socket). It reads `view` as it is: {@link startTlogListener} puts the cache in front.
 */
export function tlogRequestHandler(view: TlogReadView, log: Logger, limiter?: RateLimiter, witness?: WitnessEndpoint, witnessLimiter?: RateLimiter): (req: IncomingMessage, res: ServerResponse) => void {
  const send = (req: IncomingMessage, res: ServerResponse, status: number, headers: Record<string, string>, body: Uint8Array | string): void => {
    // Never read (or wait for) a body nobody asked for.
    const close: Record<string, string> = hasRequestBody(req) ? { connection: "close" } : {};
    const bytes = typeof body === "string" ? Buffer.from(body, "utf8") : body;
    res.writeHead(status, { "content-length": String(bytes.length), "x-content-type-options": "nosniff", ...headers, ...close });
    res.end(req.method === "HEAD" ? undefined : bytes);
  };
  const error = (req: IncomingMessage, res: ServerResponse, status: number, message: string, extra: Record<string, string> = {}): void =>
    send(req, res, status, { "content-type": TEXT, "cache-control": "no-store", ...extra }, `${message}\n`);

  const serve = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const target = req.url ?? "/";
    const toWitness = witness !== undefined && (target.split("?")[0] ?? "") === "/add-checkpoint";
    const bucket = toWitness ? witnessLimiter : limiter;
    if (bucket) {
      const client = clientKey(req);
      const d = bucket.take(client);
      if (!d.allowed) {
        const seconds = Math.ceil(d.retryAfterMs / 1000);
        return error(req, res, 429, `too many requests from ${client}; retry after ${seconds} s`, { "retry-after": String(seconds) });
      }
    }
    if (toWitness) return addCheckpoint(req, res, witness);
    if (req.method !== "GET" && req.method !== "HEAD") return error(req, res, 405, "method not allowed", { allow: "GET, HEAD" });
    if (target.length > MAX_TLOG_PATH_LENGTH) return error(req, res, 414, `request target longer than ${MAX_TLOG_PATH_LENGTH} characters`);
    const path = (target.split("?")[0] ?? "/").replace(/^\//, "");
    if (path === "checkpoint") {
      const cp = view.latestCheckpoint();
      if (cp === undefined) return error(req, res, 404, "no checkpoint yet", { "retry-after": "1" });
      return send(req, res, 200, { "content-type": TEXT, "cache-control": MUTABLE_CACHE_CONTROL }, cp.note);
    }
    if (path === "log-keys") {
      const keys = await view.verifierKeys();
      return send(req, res, 200, { "content-type": TEXT, "cache-control": MUTABLE_CACHE_CONTROL }, keys.map((k) => `${k}\n`).join(""));
    }
    if (!path.startsWith("tile/")) return error(req, res, 404, "not found");
    try {
      parseTilePath(path);
    } catch (e) {
      return error(req, res, 400, isSigilError(e) ? e.message : "malformed tile path");
    }
    let resource;
    try {
      resource = await view.resource(path);
    } catch (e) {
      if (isSigilError(e, "ERR_INVALID_ARGUMENT") || isSigilError(e, "ERR_TLOG_MALFORMED")) return error(req, res, 400, e.message);
      throw e;
    }
    if (resource === undefined) return error(req, res, 404, `${path} is not published`);
    send(req, res, 200, { "content-type": OCTETS, "cache-control": resource.immutable ? IMMUTABLE_CACHE_CONTROL : MUTABLE_CACHE_CONTROL }, resource.body);
  };

  const addCheckpoint = async (req: IncomingMessage, res: ServerResponse, w: WitnessEndpoint): Promise<void> => {
    if (req.method !== "POST") return error(req, res, 405, "method not allowed", { allow: "POST" });
    const declared = Number(req.headers["content-length"] ?? "0");
    if (declared > MAX_ADD_CHECKPOINT_BYTES) return error(req, res, 413, `the body is larger than ${MAX_ADD_CHECKPOINT_BYTES} bytes`);
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_ADD_CHECKPOINT_BYTES) return error(req, res, 413, `the body is larger than ${MAX_ADD_CHECKPOINT_BYTES} bytes`);
      chunks.push(chunk);
    }
    const answer = await w.addCheckpoint(Buffer.concat(chunks));
    const body = Buffer.from(answer.body, "utf8");
    res.writeHead(answer.status, { "content-type": answer.contentType, "content-length": String(body.length), "cache-control": "no-store", "x-content-type-options": "nosniff" });
    res.end(body);
  };

  return (req, res) => {
    serve(req, res).catch((e: unknown) => {
      log.error({ err: e instanceof Error ? e.message : String(e), path: req.url?.slice(0, MAX_TLOG_PATH_LENGTH) }, "tlog: serving a log resource failed");
      if (!res.headersSent) error(req, res, 500, "internal error");
      else res.destroy();
    });
  };
}

/**
 * Starts the tiles listener.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` when the TLS files cannot be loaded, `ERR_UNAVAILABLE` when the address cannot be bound.
 */
export function startTlogListener(options: TlogListenerOptions): Promise<PublicHttpListener> {
  const clock = options.clock ?? systemClock;
  const limiter = options.rateLimit ? new RateLimiter({ perSecond: options.rateLimit.perSecond, burst: options.rateLimit.burst, clock }) : undefined;
  const witnessLimiter = options.witnessRateLimit ? new RateLimiter({ perSecond: options.witnessRateLimit.perSecond, burst: options.witnessRateLimit.burst, clock }) : undefined;
  return startPublicHttpListener({
    host: options.host,
    port: options.port,
    tls: options.tls,
    handle: tlogRequestHandler(cachedTlogView(options.view, { clock }), options.log, limiter, options.witness, witnessLimiter),
    subsystem: "tlog",
    tlsReloadIntervalMs: options.tlsReloadIntervalMs,
    limits: options.limits,
    log: options.log,
  });
}

/** The `transparency_log` keys the listener reads. */
export interface TlogListenerSettings {
  readonly enabled: boolean;
  readonly listen_address?: string | undefined;
  readonly tls_cert_file?: string | undefined;
  readonly tls_key_file?: string | undefined;
  readonly rate_limit?: boolean | undefined;
  readonly rate_limit_per_second?: number | undefined;
  readonly rate_limit_burst?: number | undefined;
  readonly witness?: { readonly rate_limit_per_second?: number | undefined; readonly rate_limit_burst?: number | undefined } | undefined;
}

/**
 * The `tlog-listener` service when the log is enabled and `listen_address`
 * is set (undefined otherwise). `view` is called at start: the log service
 * starts before it.
 */
export function tlogListenerService(settings: TlogListenerSettings | undefined, view: () => TlogReadView, log: Logger, witness?: () => WitnessEndpoint | undefined): HttpListenerService | undefined {
  const address = settings?.enabled === true && settings.listen_address !== undefined ? parseListenAddress(settings.listen_address) : undefined;
  if (settings === undefined || address === undefined) return undefined;
  const tls = settings.tls_cert_file !== undefined && settings.tls_key_file !== undefined ? { certFile: settings.tls_cert_file, keyFile: settings.tls_key_file } : undefined;
  const rateLimit =
    settings.rate_limit === false ? undefined : { perSecond: settings.rate_limit_per_second ?? DEFAULT_TLOG_RATE_PER_SECOND, burst: settings.rate_limit_burst ?? DEFAULT_TLOG_RATE_BURST };
  const witnessRateLimit =
    settings.rate_limit === false
      ? undefined
      : { perSecond: settings.witness?.rate_limit_per_second ?? DEFAULT_WITNESS_RATE_PER_SECOND, burst: settings.witness?.rate_limit_burst ?? DEFAULT_WITNESS_RATE_BURST };
  return new HttpListenerService("tlog-listener", () => startTlogListener({ host: address.host, port: address.port, tls, view: view(), rateLimit, witnessRateLimit, witness: witness?.(), log }));
}
