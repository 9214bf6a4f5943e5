/**
 * `sigil.admin.v1.FederationAdmin`: federation relationships (the foreign
 * trust domains whose bundles the server fetches) and their fetch status.
 * Validation is the config file's (`server/federation/relationships.ts`),
 * with request field paths in messages. A change takes effect at once: the
 * `federation` service is told and fetches (or stops polling). Relationships
 * from the config file are listed with `source: "config"` and cannot be
 * changed or deleted here.
 */
import { create } from "@bufbuild/protobuf";
import {
  DeleteFederationRelationshipResponseSchema,
  FederationRelationshipSchema,
  FederationStatusSchema,
  ListFederationRelationshipsResponseSchema,
  type CreateFederationRelationshipRequest,
  type DeleteFederationRelationshipRequest,
  type DeleteFederationRelationshipResponse,
  type FederationAdmin,
  type FederationRelationship as WireRelationship,
  type GetFederationRelationshipRequest,
  type ListFederationRelationshipsRequest,
  type ListFederationRelationshipsResponse,
  type RefreshFederationRelationshipRequest,
  type UpdateFederationRelationshipRequest,
} from "../../../proto/gen/sigil/admin/v1/admin_pb.js";
import { SigilError } from "../../../spiffe/errors.js";
import type { GrpcServiceImplementation } from "../../../spiffe/grpc/service.js";
import type { TrustDomain } from "../../../spiffe/id.js";
import type { BundleDeleteMode } from "../../datastore/bundle.js";
import type { FederationRelationship, FederationRelationshipWriteOptions } from "../../datastore/federation-relationship.js";
import type { RelationshipStatus } from "../../federation/poller.js";
import { checkEndpointAuthenticable, foreignAuthorityProblem, parseInitialBundle, relationshipInput, validateRelationship, type RelationshipFieldNames, type RelationshipSpec } from "../../federation/relationships.js";
import type { UnaryWrapper } from "../unary.js";
import { invalidField, trustDomainField, type AdminApiDeps } from "./common.js";

type FederationMethods = (typeof FederationAdmin)["method"];

/** Request field paths of a relationship, for messages. */
const FIELDS: RelationshipFieldNames = {
  trustDomain: "relationship.trust_domain",
  bundleEndpointUrl: "relationship.bundle_endpoint_url",
  profile: "relationship.bundle_endpoint_profile",
  endpointSpiffeId: "relationship.endpoint_spiffe_id",
  initialBundle: "relationship.trust_domain_bundle",
};

const ms = (d: Date | undefined): bigint => BigInt(d?.getTime() ?? 0);

/** The wire form of a stored relationship with the poller's status. */
function wireRelationship(r: FederationRelationship, status: RelationshipStatus | undefined): WireRelationship {
  return create(FederationRelationshipSchema, {
    trustDomain: r.trustDomain,
    bundleEndpointUrl: r.bundleEndpointUrl,
    bundleEndpointProfile: r.profile,
    endpointSpiffeId: r.endpointSpiffeId ?? "",
    source: r.source,
    status: create(FederationStatusSchema, {
      lastAttempt: ms(status?.lastAttempt),
      lastSuccess: ms(status?.lastSuccess),
      lastResult: status?.lastResult ?? "",
      lastError: status?.lastError ?? "",
      sequence: status?.sequence ?? "",
      nextRefresh: ms(status?.nextRefresh),
    }),
  });
}

/** Builds the FederationAdmin service implementation. */
export function createFederationAdmin(deps: AdminApiDeps, unary: UnaryWrapper): GrpcServiceImplementation<FederationMethods> {
  const own = deps.trustDomain;
  const ds = deps.datastore;

  async function wire(r: FederationRelationship): Promise<WireRelationship> {
    // Before the first fetch of a relationship the poller knows nothing; the held sequence is still worth showing.
    const status = deps.federation?.status(r.trustDomain) ?? { ...(await ds.getBundle(r.trustDomain).then((b) => (b ? { sequence: b.sequence } : {}))) };
    return wireRelationship(r, status);
  }

  function tdField(field: string, value: string): TrustDomain {
    const td = trustDomainField(field, value);
    if (td.equals(own)) throw invalidField(field, `${td.name} is this server's own trust domain`);
    return td;
  }

  async function existing(field: string, td: TrustDomain): Promise<FederationRelationship> {
    const r = await ds.getFederationRelationship(td.name);
    if (r === undefined) throw new SigilError("ERR_NOT_FOUND", `${field}: no federation relationship with ${td.name}`);
    return r;
  }

  function refuseConfig(r: FederationRelationship, field: string, verb: string): void {
    if (r.source === "config") {
      throw new SigilError(
        "ERR_FAILED_PRECONDITION",
        `${field}: the relationship with ${r.trustDomain} is defined in the server config (federation.federates_with["${r.trustDomain}"]); ${verb} it there and restart the server`,
      );
    }
  }

  /** Validates a create/update request's relationship and its initial bundle. */
  async function validated(w: WireRelationship | undefined): Promise<{ spec: RelationshipSpec; options: FederationRelationshipWriteOptions }> {
    if (w === undefined) throw invalidField("relationship", "is required");
    const spec = validateRelationship(
      { trustDomain: w.trustDomain, bundleEndpointUrl: w.bundleEndpointUrl, profile: w.bundleEndpointProfile, endpointSpiffeId: w.endpointSpiffeId },
      own,
      FIELDS,
    );
    let options: FederationRelationshipWriteOptions = {};
    if (w.trustDomainBundle) {
      const initial = parseInitialBundle(w.trustDomainBundle, w.trustDomainBundleFormat || "spiffe", spec.trustDomain, FIELDS.initialBundle);
      for (const warning of initial.warnings) deps.log.warn({ trust_domain: spec.trustDomain.name }, `admin api: initial bundle: ${warning}`);
      const foreign = await foreignAuthorityProblem(initial.bundle, deps.ca.bundle(), ds);
      if (foreign !== undefined) throw invalidField(FIELDS.initialBundle, foreign);
      options = { initialBundle: { document: initial.document, sequence: initial.sequence } };
    } else if (w.trustDomainBundleFormat) {
      throw invalidField("relationship.trust_domain_bundle_format", "is given without relationship.trust_domain_bundle");
    }
    await checkEndpointAuthenticable(spec, own, options.initialBundle !== undefined, ds, FIELDS);
    return { spec, options };
  }

  return {
    listFederationRelationships: unary<ListFederationRelationshipsRequest, ListFederationRelationshipsResponse>("ListFederationRelationships", async (_req, _call, audit) => {
      const all = await ds.listFederationRelationships();
      audit.details.returned = all.length;
      return { res: create(ListFederationRelationshipsResponseSchema, { relationships: await Promise.all(all.map(wire)) }) };
    }),

    getFederationRelationship: unary<GetFederationRelationshipRequest, WireRelationship>("GetFederationRelationship", async (req, _call, audit) => {
      audit.details.trust_domain = req.trustDomain;
      const td = tdField("trust_domain", req.trustDomain);
      return { res: await wire(await existing("trust_domain", td)) };
    }),

    createFederationRelationship: unary<CreateFederationRelationshipRequest, WireRelationship>("CreateFederationRelationship", async (req, _call, audit) => {
      audit.details.trust_domain = req.relationship?.trustDomain ?? "";
      const { spec, options } = await validated(req.relationship);
      audit.details.trust_domain = spec.trustDomain.name;
      audit.details.profile = spec.profile;
      const existingOne = await ds.getFederationRelationship(spec.trustDomain.name);
      if (existingOne !== undefined) {
        throw new SigilError("ERR_ALREADY_EXISTS", `${FIELDS.trustDomain}: a relationship with ${spec.trustDomain.name} already exists (source: ${existingOne.source})`);
      }
      const stored = await ds.createFederationRelationship(relationshipInput(spec, "api"), options);
      deps.federation?.relationshipChanged(stored.trustDomain);
      return { res: await wire(stored) };
    }),

    updateFederationRelationship: unary<UpdateFederationRelationshipRequest, WireRelationship>("UpdateFederationRelationship", async (req, _call, audit) => {
      audit.details.trust_domain = req.relationship?.trustDomain ?? "";
      const td = tdField(FIELDS.trustDomain, req.relationship?.trustDomain ?? "");
      refuseConfig(await existing(FIELDS.trustDomain, td), FIELDS.trustDomain, "change");
      const { spec, options } = await validated(req.relationship);
      audit.details.profile = spec.profile;
      const stored = await ds.updateFederationRelationship(relationshipInput(spec, "api"), options);
      deps.federation?.relationshipChanged(stored.trustDomain);
      return { res: await wire(stored) };
    }),

    deleteFederationRelationship: unary<DeleteFederationRelationshipRequest, DeleteFederationRelationshipResponse>("DeleteFederationRelationship", async (req, _call, audit) => {
      audit.details.trust_domain = req.trustDomain;
      const td = tdField("trust_domain", req.trustDomain);
      const mode = (req.mode || "restrict") as BundleDeleteMode;
      if (mode !== "restrict" && mode !== "dissociate") throw invalidField("mode", `must be "restrict" or "dissociate", got ${JSON.stringify(req.mode.slice(0, 40))}`);
      audit.details.mode = mode;
      refuseConfig(await existing("trust_domain", td), "trust_domain", "remove");
      await ds.deleteFederationRelationship(td.name, mode);
      deps.federation?.relationshipDeleted(td.name);
      return { res: create(DeleteFederationRelationshipResponseSchema, {}) };
    }),

    refreshFederationRelationship: unary<RefreshFederationRelationshipRequest, WireRelationship>("RefreshFederationRelationship", async (req, _call, audit) => {
      audit.details.trust_domain = req.trustDomain;
      const td = tdField("trust_domain", req.trustDomain);
      const r = await existing("trust_domain", td);
      if (deps.federation === undefined) throw new SigilError("ERR_UNAVAILABLE", "federation: the federation service is not running");
      const status = await deps.federation.refreshNow(td.name);
      audit.details.sequence = status.sequence ?? "";
      return { res: wireRelationship(r, status) };
    }),
  };
}
