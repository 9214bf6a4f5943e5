/**
 * `sigil.admin.v1.BundleAdmin`: the server's own bundle (read only: the CA
 * manager owns it) and federated bundles. A federated bundle is parsed as a
 * SPIFFE bundle for its trust domain before it is stored, and stored as given.
 * It may not hold a key that is already an authority of another trust domain,
 * this server's included (BUNDLE-1).
 */
import { create } from "@bufbuild/protobuf";
import {
  DeleteFederatedBundleResponseSchema,
  ListFederatedBundlesResponseSchema,
  type BundleAdmin,
  type DeleteFederatedBundleRequest,
  type DeleteFederatedBundleResponse,
  type GetBundleRequest,
  type ListFederatedBundlesRequest,
  type ListFederatedBundlesResponse,
  type SetFederatedBundleRequest,
} from "../../../proto/gen/sigil/admin/v1/admin_pb.js";
import { BundleSchema, type Bundle as WireBundle } from "../../../proto/gen/sigil/types/v1/types_pb.js";
import { authorityKeySharedWith } from "../../../spiffe/bundle/shared-authorities.js";
import { MAX_SEQUENCE_NUMBER, parseSpiffeBundle, serializeSpiffeBundle, type SpiffeBundle } from "../../../spiffe/bundle/spiffe-bundle.js";
import { SigilError, isSigilError } from "../../../spiffe/errors.js";
import type { GrpcServiceImplementation } from "../../../spiffe/grpc/service.js";
import { parseTrustDomain, type TrustDomain } from "../../../spiffe/id.js";
import type { UnaryWrapper } from "../unary.js";
import { wireBundle } from "../wire.js";
import { invalidField, trustDomainField, type AdminApiDeps } from "./common.js";

type BundleMethods = (typeof BundleAdmin)["method"];

/** Largest bundle document accepted (a bundle with a few hundred keys fits easily). */
export const MAX_BUNDLE_DOCUMENT_BYTES = 1024 * 1024;

/** Parses a wire `sequence` (decimal u64; empty = none). */
function sequenceField(value: string): bigint | undefined {
  if (value === "") return undefined;
  if (!/^(0|[1-9][0-9]{0,19})$/.test(value) || BigInt(value) > MAX_SEQUENCE_NUMBER) {
    throw invalidField("bundle.sequence", `must be an unsigned 64-bit decimal integer, got ${JSON.stringify(value.slice(0, 40))}`);
  }
  return BigInt(value);
}

/** Builds the BundleAdmin service implementation. */
export function createBundleAdmin(deps: AdminApiDeps, unary: UnaryWrapper): GrpcServiceImplementation<BundleMethods> {
  const own = deps.trustDomain;

  function foreign(field: string, value: string): TrustDomain {
    const td = trustDomainField(field, value);
    if (td.equals(own)) throw invalidField(field, `${td.name} is the server's own trust domain; its bundle is managed by the CA`);
    return td;
  }

  /**
   * BUNDLE-1: whoever holds a key that two trust domains trust can mint
   * identities in both, so a bundle sharing an authority key with the own
   * bundle or another stored one is refused (pasting one domain's bundle under
   * another's name is the usual way this happens).
   */
  async function refuseSharedKeys(bundle: SpiffeBundle): Promise<void> {
    const others: SpiffeBundle[] = [deps.ca.bundle()];
    for (const stored of await deps.datastore.listBundles()) {
      if (stored.trustDomain === own.name || stored.trustDomain === bundle.trustDomain.name) continue;
      try {
        others.push(parseSpiffeBundle(stored.document, parseTrustDomain(stored.trustDomain)).bundle);
      } catch (e) {
        deps.log.warn({ err: e, trust_domain: stored.trustDomain }, "admin api: a stored federated bundle does not parse; not compared for shared keys");
      }
    }
    const shared = authorityKeySharedWith(bundle, others);
    if (shared === undefined) return;
    const owners = shared.trustDomains.filter((name) => name !== bundle.trustDomain.name);
    throw invalidField(
      "bundle.spiffe_bundle_json",
      `holds an authority key (SPKI SHA-256 ${shared.spkiSha256}) that is already an authority of ${owners.join(", ")}; a key may be an authority of one trust domain only (BUNDLE-1)`,
    );
  }

  return {
    getBundle: unary<GetBundleRequest, WireBundle>("GetBundle", async (_req, _call, audit) => {
      audit.details.trust_domain = own.name;
      const stored = await deps.datastore.getBundle(own.name);
      if (stored) return { res: wireBundle(stored) };
      // The CA publishes to the datastore on start; until then, its in-memory bundle.
      const b = deps.ca.bundle();
      return { res: create(BundleSchema, { trustDomain: own.name, spiffeBundleJson: serializeSpiffeBundle(b), sequence: (b.sequenceNumber ?? 0n).toString() }) };
    }),

    listFederatedBundles: unary<ListFederatedBundlesRequest, ListFederatedBundlesResponse>("ListFederatedBundles", async (_req, _call, audit) => {
      const bundles = (await deps.datastore.listBundles()).filter((b) => b.trustDomain !== own.name);
      audit.details.returned = bundles.length;
      return { res: create(ListFederatedBundlesResponseSchema, { bundles: bundles.map(wireBundle) }) };
    }),

    setFederatedBundle: unary<SetFederatedBundleRequest, WireBundle>("SetFederatedBundle", async (req, _call, audit) => {
      const b = req.bundle;
      if (!b) throw invalidField("bundle", "is required");
      audit.details.trust_domain = b.trustDomain;
      const td = foreign("bundle.trust_domain", b.trustDomain);
      audit.details.trust_domain = td.name;
      if (!b.spiffeBundleJson) throw invalidField("bundle.spiffe_bundle_json", "is required");
      const bytes = Buffer.byteLength(b.spiffeBundleJson, "utf8");
      if (bytes > MAX_BUNDLE_DOCUMENT_BYTES) throw invalidField("bundle.spiffe_bundle_json", `is ${bytes} bytes, more than the maximum ${MAX_BUNDLE_DOCUMENT_BYTES}`);
      let parsed;
      try {
        parsed = parseSpiffeBundle(b.spiffeBundleJson, td);
      } catch (e) {
        throw invalidField("bundle.spiffe_bundle_json", isSigilError(e) ? e.message : String(e), e);
      }
      if (parsed.bundle.x509Authorities.length === 0 && parsed.bundle.jwtAuthorities.size === 0) {
        throw invalidField("bundle.spiffe_bundle_json", "has no X.509 or JWT authorities");
      }
      for (const w of parsed.warnings) deps.log.warn({ trust_domain: td.name }, `admin api: federated bundle: ${w}`);
      const sequence = sequenceField(b.sequence) ?? parsed.bundle.sequenceNumber ?? 0n;
      await refuseSharedKeys(parsed.bundle);
      const stored = await deps.datastore.setBundle({ trustDomain: td.name, document: b.spiffeBundleJson, sequence });
      audit.details.sequence = stored.sequence;
      audit.details.x509_authorities = parsed.bundle.x509Authorities.length;
      audit.details.jwt_authorities = parsed.bundle.jwtAuthorities.size;
      return { res: wireBundle(stored) };
    }),

    deleteFederatedBundle: unary<DeleteFederatedBundleRequest, DeleteFederatedBundleResponse>("DeleteFederatedBundle", async (req, _call, audit) => {
      audit.details.trust_domain = req.trustDomain;
      const td = foreign("trust_domain", req.trustDomain);
      audit.details.trust_domain = td.name;
      if (!(await deps.datastore.getBundle(td.name))) throw new SigilError("ERR_NOT_FOUND", `trust_domain: no bundle is stored for ${td.name}`);
      const users = await deps.datastore.countEntries({ federatesWith: { trustDomains: [td.name], match: "superset" } });
      if (users > 0) {
        throw new SigilError("ERR_FAILED_PRECONDITION", `trust_domain: ${users} entr${users === 1 ? "y federates" : "ies federate"} with ${td.name}; remove it from their federates_with first`);
      }
      // Mode restrict: the datastore checks again inside its transaction.
      await deps.datastore.deleteBundle(td.name, "restrict");
      return { res: create(DeleteFederatedBundleResponseSchema, {}) };
    }),
  };
}
