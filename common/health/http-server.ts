/**
 * The HTTP health listener: `/live`, `/ready` and optionally `/metrics`.
 * Kubernetes probes and Prometheus cannot reach a Unix socket, so both
 * binaries serve these over TCP (SPIRE's `health_checks` block, bind port 8080).
 * Liveness stays cheap; readiness asks the caller's check ("can issue").
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { SigilError } from "../../spiffe/errors.js";
import type { Metrics } from "../metrics.js";

/** The answer of a readiness (or liveness) check. */
export interface Readiness {
  /** True when the process can serve. */
  readonly ready: boolean;
  /** Why it cannot (empty when ready), e.g. `"ca: no active X.509 CA"`. */
  readonly reasons: readonly string[];
}

/** Options of {@link startHealthServer}. */
export interface HealthServerOptions {
  /** Address to listen on (e.g. `127.0.0.1`). */
  readonly host: string;
  /** Port to listen on; 0 picks a free one (see {@link HttpListener.port}). */
  readonly port: number;
  /** Liveness path (default `/live`). */
  readonly livePath?: string;
  /** Readiness path (default `/ready`). */
  readonly readyPath?: string;
  /** When given, Prometheus text is served at {@link HealthServerOptions.metricsPath}. */
  readonly metrics?: Metrics;
  /** Metrics path (default `/metrics`). */
  readonly metricsPath?: string;
  /** Readiness check; a rejection or a hang longer than `readinessTimeoutMs` counts as not ready. */
  readonly readiness: () => Promise<Readiness>;
  /** Optional liveness check; without one, liveness is "the process answers". */
  readonly liveness?: () => Promise<Readiness>;
  /** Longest wait for a check before answering 503 (default 5000 ms). */
  readonly checkTimeoutMs?: number;
}

/** Options of {@link startMetricsServer}. */
export interface MetricsServerOptions {
  /** Address to listen on. */
  readonly host: string;
  /** Port to listen on; 0 picks a free one. */
  readonly port: number;
  /** The metrics to serve. */
  readonly metrics: Metrics;
  /** Metrics path (default `/metrics`). */
  readonly path?: string;
}

/** A running HTTP listener. */
export interface HttpListener {
  /** The address actually bound. */
  readonly host: string;
  /** The port actually bound. */
  readonly port: number;
  /** `http://host:port`. */
  readonly url: string;
  /** Stops listening and closes open connections. */
  close(): Promise<void>;
}

type Route = () => Promise<{ status: number; contentType: string; body: string }>;

const JSON_TYPE = "application/json; charset=utf-8";

function json(status: number, value: unknown): { status: number; contentType: string; body: string } {
  return { status, contentType: JSON_TYPE, body: `${JSON.stringify(value)}\n` };
}

async function runCheck(check: () => Promise<Readiness>, timeoutMs: number, what: string): Promise<Readiness> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<Readiness>((resolve) => {
    timer = setTimeout(() => resolve({ ready: false, reasons: [`${what} check timed out after ${timeoutMs} ms`] }), timeoutMs);
    timer.unref();
  });
  try {
    return await Promise.race([
      check().catch((e: unknown) => ({ ready: false, reasons: [`${what} check failed: ${e instanceof Error ? e.message : String(e)}`] })),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function checkPath(p: string): string {
  if (!p.startsWith("/")) throw new SigilError("ERR_INVALID_ARGUMENT", `health: path ${JSON.stringify(p)} must start with "/"`);
  return p;
}

function metricsRoute(metrics: Metrics): Route {
  return async () => ({ status: 200, contentType: metrics.registry.contentType, body: await metrics.registry.metrics() });
}

async function listen(routes: ReadonlyMap<string, Route>, host: string, port: number): Promise<HttpListener> {
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    const route = routes.get(path);
    const send = (status: number, contentType: string, body: string): void => {
      res.writeHead(status, { "content-type": contentType, "cache-control": "no-store", "content-length": Buffer.byteLength(body) });
      res.end(req.method === "HEAD" ? undefined : body);
    };
    if (route === undefined) return send(404, JSON_TYPE, `${JSON.stringify({ error: "not found" })}\n`);
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      return send(405, JSON_TYPE, `${JSON.stringify({ error: "method not allowed" })}\n`);
    }
    route().then(
      (r) => send(r.status, r.contentType, r.body),
      () => send(500, JSON_TYPE, `${JSON.stringify({ error: "internal error" })}\n`),
    );
  };
  const server: Server = createServer(handle);
  await new Promise<void>((resolve, reject) => {
    const onError = (e: Error): void => reject(new SigilError("ERR_UNAVAILABLE", `health: cannot listen on ${host}:${port}: ${e.message}`, { cause: e }));
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const urlHost = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  return {
    host: addr.address,
    port: addr.port,
    url: `http://${urlHost}:${addr.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * Starts the HTTP health listener: `GET livePath` answers 200 `{"live":true}`
 * (or 503 with reasons when a liveness check says otherwise), `GET readyPath`
 * answers 200 `{"ready":true,"reasons":[]}` or 503 `{"ready":false,"reasons":[…]}`,
 * and, with `metrics`, `GET /metrics` answers the Prometheus text format.
 *
 * @throws SigilError `ERR_UNAVAILABLE` when the address cannot be bound
 */
export async function startHealthServer(options: HealthServerOptions): Promise<HttpListener> {
  const timeoutMs = options.checkTimeoutMs ?? 5000;
  const routes = new Map<string, Route>();
  const liveness = options.liveness;
  routes.set(checkPath(options.livePath ?? "/live"), async () => {
    if (liveness === undefined) return json(200, { live: true });
    const r = await runCheck(liveness, timeoutMs, "liveness");
    return json(r.ready ? 200 : 503, { live: r.ready, reasons: r.reasons });
  });
  routes.set(checkPath(options.readyPath ?? "/ready"), async () => {
    const r = await runCheck(options.readiness, timeoutMs, "readiness");
    return json(r.ready ? 200 : 503, { ready: r.ready, reasons: r.reasons });
  });
  if (options.metrics !== undefined) routes.set(checkPath(options.metricsPath ?? "/metrics"), metricsRoute(options.metrics));
  return listen(routes, options.host, options.port);
}

/**
 * Starts a listener serving only Prometheus metrics (`telemetry.prometheus`),
 * for when scraping should not share the health port.
 *
 * @throws SigilError `ERR_UNAVAILABLE` when the address cannot be bound
 */
export async function startMetricsServer(options: MetricsServerOptions): Promise<HttpListener> {
  return listen(new Map([[checkPath(options.path ?? "/metrics"), metricsRoute(options.metrics)]]), options.host, options.port);
}
