/**
 * The optional HTTP listeners (health, metrics) as {@link Service}s: bound at
 * start, closed at stop. Both binaries' configs ask for them the same way
 * (`health_checks`, `telemetry.prometheus`).
 */
import type { Metrics } from "../metrics.js";
import type { Service } from "../service.js";
import { startHealthServer, startMetricsServer, type HttpListener, type Readiness } from "./http-server.js";

/** An HTTP listener as a service (`health-listener`, `metrics-listener`). */
export class HttpListenerService implements Service {
  readonly name: string;
  readonly #open: () => Promise<HttpListener>;
  /** The bound listener, once started. */
  listener: HttpListener | undefined;

  /**
   * @param name the service's name in logs and readiness
   * @param open binds the listener (`startHealthServer`, `startMetricsServer`)
   */
  constructor(name: string, open: () => Promise<HttpListener>) {
    this.name = name;
    this.#open = open;
  }

  async start(): Promise<void> {
    this.listener = await this.#open();
  }

  async stop(): Promise<void> {
    await this.listener?.close();
  }
}

/** The `health_checks` and `telemetry` sections of a server or agent config. */
export interface HttpListenersConfig {
  readonly health_checks?:
    | { readonly listener_enabled: boolean; readonly bind_address: string; readonly bind_port: number; readonly live_path: string; readonly ready_path: string }
    | undefined;
  readonly telemetry?: { readonly prometheus?: { readonly host: string; readonly port: number } | undefined } | undefined;
}

/** The listeners a config asks for; each is undefined when not configured. */
export interface HttpListenerServices {
  /** `health-listener`: `/live`, `/ready` (and `/metrics`). */
  readonly health: HttpListenerService | undefined;
  /** `metrics-listener`: `/metrics` on `telemetry.prometheus`. */
  readonly metrics: HttpListenerService | undefined;
  /** The configured ones, health first: list them last but for what reports on them. */
  readonly services: readonly HttpListenerService[];
}

/**
 * Builds (does not start) the HTTP listeners a config asks for.
 *
 * @example
 * ```ts
 * const http = httpListenerServices(config, { metrics, readiness: () => services.readiness() });
 * const services = new ServiceGroup([...core, ...http.services], log);
 * ```
 */
export function httpListenerServices(config: HttpListenersConfig, deps: { readonly metrics: Metrics; readonly readiness: () => Promise<Readiness> }): HttpListenerServices {
  const { metrics } = deps;
  const hc = config.health_checks?.listener_enabled ? config.health_checks : undefined;
  const health = hc
    ? new HttpListenerService("health-listener", () =>
        startHealthServer({ host: hc.bind_address, port: hc.bind_port, livePath: hc.live_path, readyPath: hc.ready_path, readiness: deps.readiness, metrics }),
      )
    : undefined;
  const prom = config.telemetry?.prometheus;
  const metricsListener = prom ? new HttpListenerService("metrics-listener", () => startMetricsServer({ host: prom.host, port: prom.port, metrics })) : undefined;
  return { health, metrics: metricsListener, services: [health, metricsListener].filter((s) => s !== undefined) };
}
