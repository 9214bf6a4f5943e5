/**
 * Sigil's admin API (`sigil.admin.v1`): entries, agents and join tokens,
 * bundles, federation relationships, one-off SVIDs and the transparency log's proofs, served on the server's local Unix socket.
 * Who may connect is decided by the socket's file permissions; every call is
 * audited (method, outcome, non-secret request facts, and the caller's uid,
 * gid, pid and binary through `deps.callerOf`) when auditing is on.
 *
 * @example
 * ```ts
 * const admin = createAdminApi({ trustDomain, serverId, datastore, ca, log, auditEnabled: true, now, defaultX509TtlMs, defaultJwtTtlMs });
 * server.addService(grpcServiceDefinition(EntryAdmin), admin.entry);
 * server.addService(grpcServiceDefinition(AgentAdmin), admin.agent);
 * server.addService(grpcServiceDefinition(BundleAdmin), admin.bundle);
 * server.addService(grpcServiceDefinition(SvidAdmin), admin.svid);
 * server.addService(grpcServiceDefinition(FederationAdmin), admin.federation);
 * server.addService(grpcServiceDefinition(LogAdmin), admin.log);
 * server.addService(grpcServiceDefinition(AuthorityAdmin), admin.authority);
 * ```
 */
import { AgentAdmin, AuthorityAdmin, BundleAdmin, EntryAdmin, FederationAdmin, LogAdmin, SvidAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import type { GrpcServiceImplementation } from "../../spiffe/grpc/service.js";
import { Issuer } from "../issuance/issuer.js";
import { createAgentAdmin } from "./admin/agent.js";
import { createAuthorityAdmin } from "./admin/authority.js";
import { createBundleAdmin } from "./admin/bundle.js";
import type { AdminApiDeps } from "./admin/common.js";
import { createEntryAdmin } from "./admin/entry.js";
import { createFederationAdmin } from "./admin/federation.js";
import { createLogAdmin } from "./admin/log.js";
import { createSvidAdmin } from "./admin/svid.js";
import { createParentResolver } from "./parent-resolver.js";
import { createUnaryWrapper } from "./unary.js";

export type { AdminApiDeps } from "./admin/common.js";
export { DEFAULT_ADMIN_PAGE_SIZE, MAX_ADMIN_BATCH_SIZE, MAX_ADMIN_PAGE_SIZE } from "./admin/common.js";
export { ENTRY_MASK_FIELDS } from "./admin/entry.js";
export { DEFAULT_JOIN_TOKEN_TTL_SECONDS, MAX_JOIN_TOKEN_TTL_SECONDS, MIN_JOIN_TOKEN_LENGTH } from "./admin/agent.js";

/** The admin service implementations, for `server.addService`. */
export interface AdminApi {
  readonly entry: GrpcServiceImplementation<(typeof EntryAdmin)["method"]>;
  readonly agent: GrpcServiceImplementation<(typeof AgentAdmin)["method"]>;
  readonly bundle: GrpcServiceImplementation<(typeof BundleAdmin)["method"]>;
  readonly svid: GrpcServiceImplementation<(typeof SvidAdmin)["method"]>;
  readonly federation: GrpcServiceImplementation<(typeof FederationAdmin)["method"]>;
  readonly log: GrpcServiceImplementation<(typeof LogAdmin)["method"]>;
  readonly authority: GrpcServiceImplementation<(typeof AuthorityAdmin)["method"]>;
}

/** Builds the admin API. */
export function createAdminApi(deps: AdminApiDeps): AdminApi {
  const parents = createParentResolver({ datastore: deps.datastore, now: deps.now, issuesAgentId: deps.issuesAgentId });
  const wrapper = (service: string) =>
    createUnaryWrapper({ log: deps.log, auditEnabled: deps.auditEnabled, name: "admin api", service, ...(deps.callerOf ? { callerOf: deps.callerOf } : {}) });
  return {
    entry: createEntryAdmin(deps, parents, wrapper(EntryAdmin.typeName)),
    agent: createAgentAdmin(deps, parents, wrapper(AgentAdmin.typeName)),
    bundle: createBundleAdmin(deps, wrapper(BundleAdmin.typeName)),
    svid: createSvidAdmin(deps, wrapper(SvidAdmin.typeName), new Issuer(deps)),
    federation: createFederationAdmin(deps, wrapper(FederationAdmin.typeName)),
    log: createLogAdmin(deps.tlogView, wrapper(LogAdmin.typeName)),
    authority: createAuthorityAdmin(deps, wrapper(AuthorityAdmin.typeName)),
  };
}
