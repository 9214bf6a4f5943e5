/**
 * `sigil.admin.v1.AuthorityAdmin`: the CA authorities of every server sharing
 * the database, and the crisis commands on them (prepare, activate, taint,
 * revoke; docs/incident-response.md), with the inventory of live SVIDs under
 * a key. State changes go through the answering server's {@link CaManager};
 * other servers take them up from the journal at their next rotation step.
 */
import { create } from "@bufbuild/protobuf";
import {
  ActivateAuthorityResponseSchema,
  AuthoritySchema,
  InventoryResponse_AgentCountSchema,
  InventoryResponse_SpiffeIdCountSchema,
  InventoryResponse_SvidSchema,
  InventoryResponseSchema,
  ListAuthoritiesResponseSchema,
  RevokeAuthorityResponseSchema,
  TaintAuthorityResponseSchema,
  type ActivateAuthorityRequest,
  type ActivateAuthorityResponse,
  type Authority as WireAuthority,
  type AuthorityAdmin,
  type InventoryRequest,
  type InventoryResponse,
  type ListAuthoritiesRequest,
  type ListAuthoritiesResponse,
  type PrepareAuthorityRequest,
  type RevokeAuthorityRequest,
  type RevokeAuthorityResponse,
  type TaintAuthorityRequest,
  type TaintAuthorityResponse,
} from "../../../proto/gen/sigil/admin/v1/admin_pb.js";
import { SigilError } from "../../../spiffe/errors.js";
import type { GrpcServiceImplementation } from "../../../spiffe/grpc/service.js";
import type { AuthorityKind, AuthorityView } from "../../ca/manager.js";
import { INVENTORY_DEFAULT_LIMIT, INVENTORY_MAX_LIMIT } from "../../datastore/index.js";
import { pickupsOf, type Pickup } from "../../tlog/deliveries.js";
import type { UnaryWrapper } from "../unary.js";
import { invalidField, type AdminApiDeps } from "./common.js";

type AuthorityMethods = (typeof AuthorityAdmin)["method"];

/** `kind` of a request: "x509" or "jwt" (empty allowed where the key ID decides). */
function kindField(kind: string, optional: boolean): AuthorityKind | undefined {
  if (kind === "x509" || kind === "jwt") return kind;
  if (kind === "" && optional) return undefined;
  throw invalidField("kind", `must be "x509" or "jwt", got ${JSON.stringify(kind.slice(0, 40))}`);
}

function keyIdField(keyId: string): string {
  if (keyId.length === 0) throw invalidField("key_id", "is empty");
  if (keyId.length > 256) throw invalidField("key_id", "is longer than 256 characters");
  return keyId;
}

/** The wire form of an authority, with its live SVID count. */
export function wireAuthority(a: AuthorityView, liveSvids: number): WireAuthority {
  return create(AuthoritySchema, {
    serverId: a.serverId,
    kind: a.kind,
    slotId: a.slotId,
    keyId: a.keyId,
    status: a.status,
    notBefore: BigInt(a.notBefore.getTime()),
    notAfter: BigInt(a.notAfter.getTime()),
    certDer: a.certDer ?? new Uint8Array(),
    upstream: a.upstream,
    spkiSha256: a.spkiSha256,
    liveSvids: BigInt(liveSvids),
  });
}

/** Creates the AuthorityAdmin implementation. */
export function createAuthorityAdmin(deps: AdminApiDeps, unary: UnaryWrapper): GrpcServiceImplementation<AuthorityMethods> {
  const ca = deps.ca;
  const live = async (keyId: string) => (await deps.datastore.issuanceInventory({ caKeyId: keyId, now: deps.now(), limit: 0, countOnly: true })).live;
  const wire = async (a: AuthorityView) => wireAuthority(a, a.status === "revoked" ? 0 : await live(a.keyId));
  /** The kind of `keyId` when the request left it out: the journal knows. */
  const kindOf = async (kind: AuthorityKind | undefined, keyId: string): Promise<AuthorityKind> => {
    if (kind) return kind;
    const found = (await ca.list()).find((a) => a.keyId === keyId);
    if (!found) throw new SigilError("ERR_NOT_FOUND", `key_id: no authority with key ID "${keyId}" (see "sigil-server authority list")`);
    return found.kind;
  };

  return {
    listAuthorities: unary<ListAuthoritiesRequest, ListAuthoritiesResponse>("ListAuthorities", async (_req, _call, audit) => {
      const all = await ca.list();
      audit.details.returned = all.length;
      return { res: create(ListAuthoritiesResponseSchema, { authorities: await Promise.all(all.map(wire)) }) };
    }),

    prepareAuthority: unary<PrepareAuthorityRequest, WireAuthority>("PrepareAuthority", async (req, _call, audit) => {
      const kind = kindField(req.kind, false) as AuthorityKind;
      audit.details.kind = kind;
      const a = await ca.prepare(kind);
      audit.details.key_id = a.keyId;
      return { res: wireAuthority(a, 0) };
    }),

    activateAuthority: unary<ActivateAuthorityRequest, ActivateAuthorityResponse>("ActivateAuthority", async (req, _call, audit) => {
      const kind = kindField(req.kind, false) as AuthorityKind;
      audit.details.kind = kind;
      const r = await ca.activate(kind);
      audit.details.key_id = r.activated.keyId;
      return { res: create(ActivateAuthorityResponseSchema, { activated: await wire(r.activated), ...(r.previous ? { previous: await wire(r.previous) } : {}) }) };
    }),

    taintAuthority: unary<TaintAuthorityRequest, TaintAuthorityResponse>("TaintAuthority", async (req, _call, audit) => {
      const keyId = keyIdField(req.keyId);
      audit.details.key_id = keyId;
      const kind = await kindOf(kindField(req.kind, true), keyId);
      audit.details.kind = kind;
      const r = await ca.taint(kind, keyId);
      if (r.activated) audit.details.activated = r.activated.keyId;
      return {
        res: create(TaintAuthorityResponseSchema, {
          tainted: await wire(r.tainted),
          ...(r.activated ? { activated: await wire(r.activated) } : {}),
          preparedFirst: r.preparedFirst,
        }),
      };
    }),

    revokeAuthority: unary<RevokeAuthorityRequest, RevokeAuthorityResponse>("RevokeAuthority", async (req, _call, audit) => {
      const keyId = keyIdField(req.keyId);
      audit.details.key_id = keyId;
      audit.details.force = req.force;
      const kind = await kindOf(kindField(req.kind, true), keyId);
      audit.details.kind = kind;
      const r = await ca.revoke(kind, keyId, { force: req.force });
      audit.details.live_svids = r.liveSvids;
      if (r.warning) deps.log.warn({ key_id: keyId, live_svids: r.liveSvids }, `admin api: ${r.warning}`);
      return { res: create(RevokeAuthorityResponseSchema, { revoked: wireAuthority(r.revoked, 0), liveSvids: BigInt(r.liveSvids), warning: r.warning ?? "" }) };
    }),

    inventory: unary<InventoryRequest, InventoryResponse>("Inventory", async (req, _call, audit) => {
      const keyId = keyIdField(req.keyId);
      audit.details.key_id = keyId;
      if (!Number.isInteger(req.limit) || req.limit < -1 || req.limit > INVENTORY_MAX_LIMIT) {
        throw invalidField("limit", `must be -1 (counts only), 0 (default ${INVENTORY_DEFAULT_LIMIT}) or up to ${INVENTORY_MAX_LIMIT}, got ${req.limit}`);
      }
      const inv = await deps.datastore.issuanceInventory({ caKeyId: keyId, now: deps.now(), limit: req.limit === -1 ? 0 : req.limit === 0 ? INVENTORY_DEFAULT_LIMIT : req.limit });
      // A mistyped key ID must not read as "nothing left under it"; live credentials under a key the journal no longer lists are still shown.
      if (inv.live === 0 && !(await ca.list()).some((a) => a.keyId === keyId)) {
        throw new SigilError("ERR_NOT_FOUND", `key_id: no authority with key ID "${keyId}" (see "sigil-server authority list")`);
      }
      audit.details.live = inv.live;
      // With the log on, each listed X509-SVID issued to an agent says whether a workload ever got it
      // (admin mints, server SVIDs and downstream CAs reach no agent, so no pick-up is ever reported for them).
      const pickups = deps.transparencyLog
        ? await pickupsOf(deps.datastore, inv.svids.filter((s) => s.kind === "x509-svid" && s.agentId !== null).map((s) => s.serial))
        : new Map<string, Pickup>();
      const pickup = (serial: string) => {
        const p = pickups.get(serial);
        if (p === undefined) return {};
        return p.pickedUp ? { pickup: "picked-up", deliveredAt: BigInt(p.deliveredAt?.getTime() ?? 0) } : { pickup: "never-picked-up" };
      };
      return {
        res: create(InventoryResponseSchema, {
          keyId,
          live: BigInt(inv.live),
          agents: inv.agents.map((a) => create(InventoryResponse_AgentCountSchema, { agentId: a.agentId ?? "", count: BigInt(a.count) })),
          spiffeIds: inv.spiffeIds.map((s) => create(InventoryResponse_SpiffeIdCountSchema, { spiffeId: s.spiffeId, count: BigInt(s.count) })),
          svids: inv.svids.map((s) =>
            create(InventoryResponse_SvidSchema, { serial: s.serial, kind: s.kind, spiffeId: s.spiffeId, entryId: s.entryId ?? "", agentId: s.agentId ?? "", notAfter: BigInt(s.notAfter.getTime()), ...pickup(s.serial) }),
          ),
        }),
      };
    }),
  };
}
