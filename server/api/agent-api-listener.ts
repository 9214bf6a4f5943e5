/**
 * The agent API listener (`agent-api` service): gRPC over TLS on
 * `server.bind_address:bind_port`. The server presents its own X509-SVID
 * (`server-svid`); agents present theirs, optional at the TLS layer so that
 * attestation can run without one. It serves the AgentAPI (transport in
 * `agent-api.ts`, node attestation in `server/attestation/`, signing and
 * recording in `server/issuance/`, delta sync memory and change notices) and
 * gRPC health, and the DownstreamAPI of nested servers (`downstream-api.ts`). Agent records and bundles are read through the change-fed
 * caches it is given. Stop lets calls in flight
 * finish for at most 5 s, then cancels them.
 */
import { Server, experimental } from "@grpc/grpc-js";
import type { Clock } from "../../common/clock.js";
import { addHealthService, type HealthService } from "../../common/health/grpc-health.js";
import type { Logger } from "../../common/log.js";
import { rpcMetricsInterceptor, type Metrics } from "../../common/metrics.js";
import type { Service } from "../../common/service.js";
import { createPlugins, PLUGIN_CATALOG, type PluginSection } from "../../plugins/catalog.js";
import { OwnedPlugins } from "../../plugins/descriptor.js";
import type { ServerNodeAttestor } from "../../plugins/nodeattestor/types.js";
import { AgentAPI } from "../../proto/gen/sigil/agent/v1/agent_pb.js";
import { DownstreamAPI } from "../../proto/gen/sigil/agent/v1/downstream_pb.js";
import { SigilError } from "../../spiffe/errors.js";
import { grpcServiceDefinition } from "../../spiffe/grpc/service.js";
import { parseSpiffeId, type SpiffeId, type TrustDomain } from "../../spiffe/id.js";
import { NodeAttestation } from "../attestation/node-attestation.js";
import type { CaManager } from "../ca/manager.js";
import type { AttestedAgent, Datastore, StoredBundle } from "../datastore/index.js";
import type { FeedCache } from "../datastore/feed-cache.js";
import type { IssuanceLogSink } from "../tlog/log-service.js";
import { Issuer } from "../issuance/issuer.js";
import type { EntryIndex } from "../registration/entry-index.js";
import type { IndexedRecord } from "../registration/entry-index-feed.js";
import type { ChangeFeed } from "../datastore/change-feed.js";
import { canonicalTaint, createAgentApi, type TaintedAuthorities } from "./agent-api.js";
import { AgentSyncHistory } from "./agent-sync-history.js";
import { ChangeNotifier, followAgentEvents } from "./change-notifier.js";
import type { MemoryCertificateProvider } from "./cert-provider.js";
import { rateLimitCharger, type AgentApiRateLimits } from "./rate-limit.js";
import { createDownstreamApi } from "./downstream-api.js";
import { DeliveryLog } from "../tlog/deliveries.js";

/**
 * How long a stop waits for agent API calls in flight before cancelling them.
 * Any TLS client can open a call and never finish sending it; without a
 * bound, one such peer kept `sigil-server run` from exiting on SIGTERM.
 */
const STOP_GRACE_MS = 5_000;

/** Most bytes of one request message. */
const MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024;

/** Dependencies of the {@link AgentApiListener}. */
export interface AgentApiListenerDeps {
  /** `server.bind_address`. */
  readonly host: string;
  /** `server.bind_port`; 0 picks a free one. */
  readonly port: number;
  readonly trustDomain: TrustDomain;
  /** `plugins.NodeAttestor` of the server config. */
  readonly nodeAttestors: PluginSection | undefined;
  /** The services this one uses, all started before it. */
  readonly datastore: { readonly datastore: Datastore };
  readonly ca: { readonly manager: CaManager };
  readonly entries: { readonly index: EntryIndex<IndexedRecord>; settled?(): Promise<void> | undefined };
  /** Agent records and bundles kept current by the change feed (the `agent-cache` and `bundle-cache` services). */
  readonly agents: Pick<FeedCache<AttestedAgent>, "get" | "reload">;
  readonly bundles: Pick<FeedCache<StoredBundle>, "get">;
  /** The change feed: its agent events end the change streams of evicted and banned agents, and drop what the entry index cached for them. */
  readonly feed: Pick<ChangeFeed, "subscribe">;
  readonly serverSvid: { readonly certificates: MemoryCertificateProvider };
  /** Served beside the AgentAPI. */
  readonly grpcHealth: HealthService;
  readonly rateLimits: AgentApiRateLimits;
  readonly agentTtlMs: number;
  /** `server.downstream_ca_ttl` (default `ca_ttl`): longest lifetime of a downstream server's intermediate CA. */
  readonly downstreamCaTtlMs: number;
  readonly defaultX509TtlMs: number;
  readonly defaultJwtTtlMs: number;
  readonly auditEnabled: boolean;
  readonly metrics: Metrics;
  readonly clock: Clock;
  readonly log: Logger;
  /** Where issued credentials' transparency-log entries go (`transparency_log.enabled`); unset: not logged. */
  readonly transparencyLog?: IssuanceLogSink | undefined;
}

/** The `agent-api` service; see the module comment. */
export class AgentApiListener implements Service {
  readonly name = "agent-api";
  readonly #d: AgentApiListenerDeps;
  #server: Server | undefined;
  #address: string | undefined;
  /** The NodeAttestor instances. */
  readonly #plugins: OwnedPlugins;
  #attestors: ReadonlyMap<string, ServerNodeAttestor> = new Map();
  #notifier: ChangeNotifier | undefined;
  #unsubscribeFeed: (() => void) | undefined;

  constructor(deps: AgentApiListenerDeps) {
    this.#d = deps;
    this.#plugins = new OwnedPlugins(deps.log);
  }

  /**
   * Whether a configured NodeAttestor gives agents this ID
   * (`ServerNodeAttestor.issuesAgentId`); false before the start and for
   * anything that is not a SPIFFE ID.
   */
  issuesAgentId(id: string): boolean {
    if (this.#attestors.size === 0) return false;
    let parsed: SpiffeId;
    try {
      parsed = parseSpiffeId(id);
    } catch {
      return false;
    }
    for (const a of this.#attestors.values()) if (a.issuesAgentId?.(parsed) === true) return true;
    return false;
  }

  /** `host:port` actually bound. */
  get address(): string {
    if (this.#address === undefined) throw new SigilError("ERR_UNAVAILABLE", "agent api: not started");
    return this.#address;
  }

  start(): Promise<void> {
    return this.#plugins.starting(() => this.#start());
  }

  async #start(): Promise<void> {
    const d = this.#d;
    const datastore = d.datastore.datastore;
    const ca = d.ca.manager;
    const now = (): Date => d.clock.now();
    const attestors = (this.#attestors = new Map(this.#plugins.add(createPlugins("server", PLUGIN_CATALOG.NodeAttestor, d.nodeAttestors, { trustDomain: d.trustDomain, store: datastore })).map((a) => [a.name, a])));
    const issuer = new Issuer({ ca, datastore, metrics: d.metrics, now, defaultX509TtlMs: d.defaultX509TtlMs, defaultJwtTtlMs: d.defaultJwtTtlMs, transparencyLog: d.transparencyLog });
    const taintedAuthorities = (): TaintedAuthorities => ca.taintedAuthorities();
    const notifier = (this.#notifier = new ChangeNotifier({ index: d.entries.index, bundle: () => ca.bundle(), taint: () => canonicalTaint(taintedAuthorities()).key, now, log: d.log }));
    this.#unsubscribeFeed = followAgentEvents({ feed: d.feed, getAgent: (id) => datastore.getAgent(id), notifier, index: d.entries.index, log: d.log });
    const api = createAgentApi({
      trustDomain: d.trustDomain,
      datastore,
      agents: d.agents,
      bundles: d.bundles,
      ca,
      index: d.entries.index,
      indexSettled: () => d.entries.settled?.(),
      attestation: new NodeAttestation({ attestors, datastore, issuer, agentTtlMs: d.agentTtlMs }),
      issuer,
      log: d.log,
      metrics: d.metrics,
      auditEnabled: d.auditEnabled,
      now,
      rateLimits: d.rateLimits,
      syncHistory: new AgentSyncHistory(),
      notifier,
      taintedAuthorities,
      deliveries: new DeliveryLog({ tlog: d.transparencyLog ? { datastore, sink: d.transparencyLog } : undefined, now, log: d.log, metrics: d.metrics }),
    });
    const server = new Server({ interceptors: [rpcMetricsInterceptor(d.metrics)], "grpc.max_receive_message_length": MAX_RECEIVE_MESSAGE_BYTES });
    server.addService(grpcServiceDefinition(AgentAPI), api);
    const charge = rateLimitCharger(d.metrics);
    server.addService(
      grpcServiceDefinition(DownstreamAPI),
      createDownstreamApi({
        trustDomain: d.trustDomain,
        index: d.entries.index,
        indexSettled: () => d.entries.settled?.(),
        ca,
        issuer,
        rateLimits: d.rateLimits,
        charge,
        downstreamCaTtlMs: d.downstreamCaTtlMs,
        now,
        log: d.log,
        auditEnabled: d.auditEnabled,
      }),
    );
    addHealthService(server, d.grpcHealth);
    const certs = d.serverSvid.certificates;
    const creds = experimental.createCertificateProviderServerCredentials(certs, certs, false);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${d.host}:${d.port}`, creds, (err, p) =>
        err ? reject(new SigilError("ERR_UNAVAILABLE", `agent api: cannot listen on ${d.host}:${d.port}: ${err.message}`, { cause: err })) : resolve(p),
      ),
    );
    this.#server = server;
    this.#address = `${d.host}:${port}`;
  }

  /** Stops the listener, then closes the NodeAttestor plugins. */
  async stop(): Promise<void> {
    // Change streams never finish on their own: end them so the stop need not wait out the grace.
    this.#unsubscribeFeed?.();
    this.#unsubscribeFeed = undefined;
    this.#notifier?.close();
    const server = this.#server;
    if (server) {
      await new Promise<void>((resolve) => {
        // Calls in flight may finish; a peer that never completes its request must not hold the stop up.
        const force = setTimeout(() => server.forceShutdown(), STOP_GRACE_MS);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
    }
    await this.#plugins.close();
  }
}
