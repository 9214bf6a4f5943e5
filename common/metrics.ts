/**
 * Prometheus metrics for both binaries. A {@link Metrics} owns its own
 * prom-client `Registry` (never the global default one), so tests and several
 * servers in one process do not share counters. Names follow prometheus.io:
 * the `sigil_` prefix, base units, `_total` on counters, absolute expiry
 * timestamps instead of TTL gauges. Labels stay low-cardinality: a SPIFFE ID,
 * entry ID, PID or serial is never a label, and {@link Metrics.counter} and
 * friends refuse such label names.
 */
import { performance } from "node:perf_hooks";
import { ServerInterceptingCall, status as grpcStatus, type ServerInterceptor } from "@grpc/grpc-js";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import { SigilError } from "../spiffe/errors.js";

/** The prefix of every Sigil metric name. */
export const METRIC_PREFIX = "sigil_";

/** Label names refused everywhere: each would make one time series per workload, node or request. */
export const FORBIDDEN_LABELS: ReadonlySet<string> = new Set([
  "spiffe_id",
  "id",
  "entry_id",
  "agent_id",
  "parent_id",
  "pid",
  "uid",
  "serial",
  "serial_number",
  "jti",
  "request_id",
  "token",
  "join_token",
]);

/** RPC latency buckets in seconds: sub-millisecond cache hits up to long-lived streams. */
export const RPC_DURATION_BUCKETS: readonly number[] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** Definition of a metric added with {@link Metrics.counter}, {@link Metrics.gauge} or {@link Metrics.histogram}. */
export interface MetricDefinition<L extends string> {
  /** Full name, starting with `sigil_`; counters end in `_total`. */
  readonly name: string;
  /** One-line help text shown in the exposition. */
  readonly help: string;
  /** Label names (never per-workload identifiers). */
  readonly labelNames?: readonly L[];
}

/** Definition of a histogram. */
export interface HistogramDefinition<L extends string> extends MetricDefinition<L> {
  /** Upper bounds of the buckets, in the metric's base unit. */
  readonly buckets?: readonly number[];
}

/** Labels of the RPC metrics. */
export interface RpcLabels {
  /** Fully-qualified service, e.g. `SpiffeWorkloadAPI`, `grpc.health.v1.Health`. */
  readonly service: string;
  /** Method name, e.g. `FetchX509SVID`. */
  readonly method: string;
  /** gRPC status code name, e.g. `OK`, `PERMISSION_DENIED`. */
  readonly code: string;
}

/** Options of {@link Metrics}. */
export interface MetricsOptions {
  /** Register prom-client's `process_*` and `nodejs_*` metrics (default true). */
  readonly defaultMetrics?: boolean;
  /** Labels added to every series (e.g. `{ trust_domain }`); never identifiers. */
  readonly defaultLabels?: Readonly<Record<string, string>>;
}

function invalid(message: string): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `metrics: ${message}`);
}

function checkLabels(name: string, labelNames: readonly string[]): void {
  for (const l of labelNames) {
    if (FORBIDDEN_LABELS.has(l)) throw invalid(`${name}: label ${JSON.stringify(l)} is an identifier; it would create one series per workload`);
  }
}

/**
 * The metrics of one server or agent: the registry plus the metrics both
 * binaries record. Subsystems add their own with {@link Metrics.counter},
 * {@link Metrics.gauge} and {@link Metrics.histogram}.
 *
 * @example
 * ```ts
 * const metrics = new Metrics();
 * const server = new grpc.Server({ interceptors: [rpcMetricsInterceptor(metrics)] });
 * metrics.x509SvidsSigned.inc();
 * metrics.setCaX509Expiry("A", notAfter);
 * const body = await metrics.registry.metrics();
 * ```
 */
export class Metrics {
  /** The registry every metric of this instance is registered on. */
  readonly registry: Registry;
  /** `sigil_rpc_requests_total{service,method,code}`: finished RPCs. */
  readonly rpcRequests: Counter<keyof RpcLabels>;
  /** `sigil_rpc_duration_seconds{service,method,code}`: RPC latency (stream lifetime for streams). */
  readonly rpcDuration: Histogram<keyof RpcLabels>;
  /** `sigil_x509_svids_signed_total`: X509-SVIDs signed by the server CA. */
  readonly x509SvidsSigned: Counter;
  /** `sigil_jwt_svids_signed_total`: JWT-SVIDs signed by the server. */
  readonly jwtSvidsSigned: Counter;
  /** `sigil_issuance_log_write_seconds`: from handing issuance records to the datastore until they are committed. */
  readonly issuanceLogWrite: Histogram;
  /** `sigil_ca_x509_expiry_timestamp_seconds{slot}`: notAfter of each X.509 CA slot. */
  readonly caX509Expiry: Gauge<"slot">;
  /** `sigil_ca_jwt_key_expiry_timestamp_seconds{slot}`: notAfter of each JWT key slot. */
  readonly caJwtKeyExpiry: Gauge<"slot">;

  constructor(options: MetricsOptions = {}) {
    this.registry = new Registry();
    if (options.defaultLabels !== undefined) {
      checkLabels("default labels", Object.keys(options.defaultLabels));
      this.registry.setDefaultLabels({ ...options.defaultLabels });
    }
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    this.rpcRequests = this.counter({ name: "sigil_rpc_requests_total", help: "Finished RPCs by service, method and gRPC status code.", labelNames: ["service", "method", "code"] });
    this.rpcDuration = this.histogram({
      name: "sigil_rpc_duration_seconds",
      help: "RPC duration in seconds by service, method and gRPC status code (the whole stream for streaming RPCs).",
      labelNames: ["service", "method", "code"],
      buckets: RPC_DURATION_BUCKETS,
    });
    this.x509SvidsSigned = this.counter({ name: "sigil_x509_svids_signed_total", help: "X509-SVIDs signed." });
    this.jwtSvidsSigned = this.counter({ name: "sigil_jwt_svids_signed_total", help: "JWT-SVIDs signed." });
    this.issuanceLogWrite = this.histogram({
      name: "sigil_issuance_log_write_seconds",
      help: "Seconds from handing issuance records to the datastore until they are committed; agent API calls answer only after it.",
      buckets: RPC_DURATION_BUCKETS,
    });
    this.caX509Expiry = this.gauge({ name: "sigil_ca_x509_expiry_timestamp_seconds", help: "Expiry (notAfter) of the X.509 CA in each slot, as a Unix timestamp.", labelNames: ["slot"] });
    this.caJwtKeyExpiry = this.gauge({ name: "sigil_ca_jwt_key_expiry_timestamp_seconds", help: "Expiry of the JWT signing key in each slot, as a Unix timestamp.", labelNames: ["slot"] });
  }

  /** Awaits an issuance-log write, observing how long it took in `sigil_issuance_log_write_seconds`. */
  async timeIssuanceLogWrite<T>(write: Promise<T>): Promise<T> {
    const start = performance.now();
    try {
      return await write;
    } finally {
      this.issuanceLogWrite.observe((performance.now() - start) / 1000);
    }
  }

  /** Records one finished RPC: the counter and the duration histogram. */
  recordRpc(labels: RpcLabels, durationSeconds: number): void {
    const l = { service: labels.service, method: labels.method, code: labels.code };
    this.rpcRequests.inc(l);
    this.rpcDuration.observe(l, durationSeconds);
  }

  /** Sets the X.509 CA expiry of a slot (`A`, `B`), or removes the series with `undefined`. */
  setCaX509Expiry(slot: string, notAfter: Date | undefined): void {
    setTimestamp(this.caX509Expiry, slot, notAfter);
  }

  /** Sets the JWT key expiry of a slot, or removes the series with `undefined`. */
  setCaJwtKeyExpiry(slot: string, notAfter: Date | undefined): void {
    setTimestamp(this.caJwtKeyExpiry, slot, notAfter);
  }

  /**
   * Adds (or returns the already added) counter. The name must start with
   * `sigil_` and end with `_total`.
   *
   * @throws SigilError `ERR_INVALID_ARGUMENT` for a bad name, an identifier label,
   *   or a name already used by a different kind of metric
   */
  counter<L extends string = never>(def: MetricDefinition<L>): Counter<L> {
    if (!def.name.endsWith("_total")) throw invalid(`counter ${def.name} must end in "_total"`);
    return this.#add(def, Counter, () => new Counter<L>({ name: def.name, help: def.help, labelNames: [...(def.labelNames ?? [])], registers: [this.registry] }));
  }

  /**
   * Adds (or returns) a gauge, e.g. the agent's cache size or
   * `sigil_x509_svid_expiry_timestamp_seconds`.
   *
   * @throws SigilError `ERR_INVALID_ARGUMENT` as for {@link Metrics.counter}
   */
  gauge<L extends string = never>(def: MetricDefinition<L>): Gauge<L> {
    return this.#add(def, Gauge, () => new Gauge<L>({ name: def.name, help: def.help, labelNames: [...(def.labelNames ?? [])], registers: [this.registry] }));
  }

  /**
   * Adds (or returns) a histogram. Use base units (`_seconds`, `_bytes`).
   *
   * @throws SigilError `ERR_INVALID_ARGUMENT` as for {@link Metrics.counter}
   */
  histogram<L extends string = never>(def: HistogramDefinition<L>): Histogram<L> {
    return this.#add(def, Histogram, () =>
      new Histogram<L>({
        name: def.name,
        help: def.help,
        labelNames: [...(def.labelNames ?? [])],
        registers: [this.registry],
        ...(def.buckets === undefined ? {} : { buckets: [...def.buckets] }),
      }),
    );
  }

  #add<M>(def: MetricDefinition<string>, kind: abstract new (...args: never[]) => M, create: () => M): M {
    if (!def.name.startsWith(METRIC_PREFIX) || !/^[a-z_][a-z0-9_]*$/.test(def.name)) {
      throw invalid(`metric name ${JSON.stringify(def.name)} must be snake_case and start with "${METRIC_PREFIX}"`);
    }
    checkLabels(def.name, def.labelNames ?? []);
    const existing = this.registry.getSingleMetric(def.name);
    if (existing !== undefined) {
      if (!(existing instanceof kind)) throw invalid(`${def.name} is already registered as a different kind of metric`);
      return existing;
    }
    return create();
  }
}

function setTimestamp(gauge: Gauge<"slot">, slot: string, notAfter: Date | undefined): void {
  if (notAfter === undefined) gauge.remove({ slot });
  else gauge.set({ slot }, notAfter.getTime() / 1000);
}

const CODE_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(grpcStatus)
    .filter((e): e is [string, number] => typeof e[1] === "number")
    .map(([name, code]) => [code, name]),
);

/** The name of a gRPC status code (`0` → `OK`, `7` → `PERMISSION_DENIED`). */
export function grpcCodeName(code: number): string {
  return CODE_NAMES.get(code) ?? "UNKNOWN";
}

/** Splits a gRPC method path `/pkg.Service/Method` into service and method. */
export function splitMethodPath(path: string): { service: string; method: string } {
  const slash = path.lastIndexOf("/");
  if (slash <= 0) return { service: "unknown", method: path.replace(/^\//, "") || "unknown" };
  return { service: path.slice(1, slash), method: path.slice(slash + 1) };
}

/**
 * A grpc-js server interceptor that records every RPC's count and latency in
 * `sigil_rpc_requests_total` and `sigil_rpc_duration_seconds`, labelled by
 * service, method and final status code (`CANCELLED` when the client goes
 * away first). Pass it when creating the server:
 * `new grpc.Server({ interceptors: [rpcMetricsInterceptor(metrics)] })`.
 */
export function rpcMetricsInterceptor(metrics: Metrics): ServerInterceptor {
  return (descriptor, call) => {
    const { service, method } = splitMethodPath(descriptor.path);
    const start = performance.now();
    let recorded = false;
    const finish = (code: number): void => {
      if (recorded) return;
      recorded = true;
      metrics.recordRpc({ service, method, code: grpcCodeName(code) }, (performance.now() - start) / 1000);
    };
    return new ServerInterceptingCall(call, {
      start: (next) => next({ onCancel: () => finish(grpcStatus.CANCELLED) }),
      sendStatus: (st, next) => {
        finish(st.code ?? grpcStatus.UNKNOWN);
        next(st);
      },
    });
  };
}
