/**
 * The admin API listener (`admin-socket` service): the admin services
 * and gRPC health on the server's local Unix socket (directory 0700, socket
 * 0600), every call audited with the caller the kernel names. Stop lets calls
 * in flight finish and removes the socket file.
 */
import { Server } from "@grpc/grpc-js";
import { addHealthService, type HealthService } from "../../common/health/grpc-health.js";
import type { Logger } from "../../common/log.js";
import { rpcMetricsInterceptor, type Metrics } from "../../common/metrics.js";
import type { Service } from "../../common/service.js";
import { AgentAdmin, AuthorityAdmin, BundleAdmin, EntryAdmin, FederationAdmin, LogAdmin, SvidAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { grpcServiceDefinition } from "../../spiffe/grpc/service.js";
import type { TrustDomain } from "../../spiffe/id.js";
import type { CaManager } from "../ca/manager.js";
import type { Datastore } from "../datastore/index.js";
import type { FederationControl } from "../federation/poller.js";
import type { IssuanceLogSink } from "../tlog/log-service.js";
import type { LogAdminView } from "./admin/log.js";
import { createAdminApi } from "./admin-api.js";
import { createAdminCallers, serveAdminSocket, type AdminSocket } from "./admin-socket.js";

/** Dependencies of the {@link AdminListener}. */
export interface AdminListenerDeps {
  /** The socket's absolute path. */
  readonly socketPath: string;
  readonly trustDomain: TrustDomain;
  /** The server's SPIFFE ID, the parent of node-alias entries. */
  readonly serverId: string;
  /** The services this one uses, started before it. */
  readonly datastore: { readonly datastore: Datastore };
  readonly ca: { readonly manager: CaManager };
  /** Served beside the admin API. */
  readonly grpcHealth: HealthService;
  readonly defaultX509TtlMs: number;
  readonly defaultJwtTtlMs: number;
  readonly auditEnabled: boolean;
  readonly metrics: Metrics;
  readonly now: () => Date;
  readonly log: Logger;
  /** Agent IDs the NodeAttestor plugins vouch for before attestation (parents of entries). */
  readonly issuesAgentId?: ((id: string) => boolean) | undefined;
  /** The `federation` service, started before this one. */
  readonly federation?: FederationControl | undefined;
  /** The transparency log's read side once its service started, when `transparency_log.enabled`. */
  readonly tlogView?: (() => LogAdminView | undefined) | undefined;
  /** Where minted credentials' transparency-log entries go, when the log is on. */
  readonly transparencyLog?: IssuanceLogSink | undefined;
}

/** The `admin-socket` service; see the module comment. */
export class AdminListener implements Service {
  readonly name = "admin-socket";
  readonly #d: AdminListenerDeps;
  #socket: AdminSocket | undefined;

  constructor(deps: AdminListenerDeps) {
    this.#d = deps;
  }

  async start(): Promise<void> {
    const d = this.#d;
    const callers = createAdminCallers();
    const admin = createAdminApi({
      trustDomain: d.trustDomain,
      serverId: d.serverId,
      datastore: d.datastore.datastore,
      ca: d.ca.manager,
      log: d.log,
      metrics: d.metrics,
      auditEnabled: d.auditEnabled,
      now: d.now,
      defaultX509TtlMs: d.defaultX509TtlMs,
      defaultJwtTtlMs: d.defaultJwtTtlMs,
      callerOf: (call) => callers.callerOf(call),
      issuesAgentId: d.issuesAgentId,
      federation: d.federation,
      tlogView: d.tlogView,
      transparencyLog: d.transparencyLog,
    });
    const server = new Server({ interceptors: [rpcMetricsInterceptor(d.metrics)] });
    server.addService(grpcServiceDefinition(EntryAdmin), admin.entry);
    server.addService(grpcServiceDefinition(AgentAdmin), admin.agent);
    server.addService(grpcServiceDefinition(BundleAdmin), admin.bundle);
    server.addService(grpcServiceDefinition(SvidAdmin), admin.svid);
    server.addService(grpcServiceDefinition(FederationAdmin), admin.federation);
    server.addService(grpcServiceDefinition(LogAdmin), admin.log);
    server.addService(grpcServiceDefinition(AuthorityAdmin), admin.authority);
    addHealthService(server, d.grpcHealth);
    this.#socket = await serveAdminSocket({ server, socketPath: d.socketPath, callers, log: d.log });
  }

  async stop(): Promise<void> {
    await this.#socket?.close();
  }
}
