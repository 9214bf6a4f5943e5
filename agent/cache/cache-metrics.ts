/**
 * The agent's cache and sync metrics. Labels stay low-cardinality: the SVID
 * expiry is the minimum over the whole cache, never one series per SPIFFE ID.
 */
import type { Counter, Gauge } from "prom-client";
import type { Metrics } from "../../common/metrics.js";

/** Outcome label of rotations and syncs. */
export type MetricResult = "success" | "error";

/** The agent's cache, rotation and sync metrics, registered on one {@link Metrics}. */
export class AgentCacheMetrics {
  /** `sigil_agent_cache_svids`: X509-SVIDs the cache holds. */
  readonly cacheSvids: Gauge;
  /** `sigil_agent_svid_rotations_total{result}`: workload X509-SVIDs obtained (or not) from the server. */
  readonly rotations: Counter<"result">;
  /** `sigil_agent_x509_svid_expiry_timestamp_seconds`: the earliest notAfter in the cache (0 when empty). */
  readonly x509SvidExpiry: Gauge;
  /** `sigil_agent_sync_total{result}`: sync rounds with the server. */
  readonly syncs: Counter<"result">;
  /** `sigil_agent_taint_replacements_total{svid}`: SVIDs replaced because their chain runs through a tainted authority (`workload` or `agent`). */
  readonly taintReplacements: Counter<"svid">;
  /** `sigil_agent_taint_jwt_svids_dropped_total`: cached JWT-SVIDs dropped because a tainted key signed them. */
  readonly taintJwtDropped: Counter;

  constructor(metrics: Metrics) {
    this.cacheSvids = metrics.gauge({ name: "sigil_agent_cache_svids", help: "X509-SVIDs held in the agent's cache." });
    this.rotations = metrics.counter({
      name: "sigil_agent_svid_rotations_total",
      help: "Workload X509-SVIDs the agent requested from the server (new, renewed or forced by an entry change), by result.",
      labelNames: ["result"],
    });
    this.x509SvidExpiry = metrics.gauge({
      name: "sigil_agent_x509_svid_expiry_timestamp_seconds",
      help: "Earliest expiry (notAfter) of the X509-SVIDs in the agent's cache, as a Unix timestamp; 0 when the cache is empty.",
    });
    this.syncs = metrics.counter({ name: "sigil_agent_sync_total", help: "Sync rounds with the server, by result.", labelNames: ["result"] });
    this.taintReplacements = metrics.counter({
      name: "sigil_agent_taint_replacements_total",
      help: "X509-SVIDs replaced ahead of their renewal point because their chain runs through a tainted authority, by svid (workload, agent).",
      labelNames: ["svid"],
    });
    this.taintJwtDropped = metrics.counter({ name: "sigil_agent_taint_jwt_svids_dropped_total", help: "Cached JWT-SVIDs dropped because a tainted JWT key signed them." });
  }

  /** Records the cache's SVID count and earliest expiry. */
  recordCache(count: number, earliestNotAfter: Date | undefined): void {
    this.cacheSvids.set(count);
    this.x509SvidExpiry.set(earliestNotAfter === undefined ? 0 : earliestNotAfter.getTime() / 1000);
  }
}
