/**
 * `sigil.admin.v1.SvidAdmin`: one-off SVIDs for any identity in the trust
 * domain outside the reserved `/spire` namespace, with no entry (SPIRE's
 * `x509 mint` / `jwt mint`), and the issuance log of every credential the
 * server signed. The X.509 key stays with the caller: only the CSR's public
 * key is used.
 */
import { create } from "@bufbuild/protobuf";
import {
  IssuanceSchema,
  ListIssuancesResponseSchema,
  MintJWTSVIDResponseSchema,
  MintX509SVIDResponseSchema,
  type ListIssuancesRequest,
  type ListIssuancesResponse,
  type MintJWTSVIDRequest,
  type MintJWTSVIDResponse,
  type MintX509SVIDRequest,
  type MintX509SVIDResponse,
  type SvidAdmin,
} from "../../../proto/gen/sigil/admin/v1/admin_pb.js";
import { parseCsr } from "../../../spiffe/csr.js";
import { isSigilError } from "../../../spiffe/errors.js";
import type { GrpcServiceImplementation } from "../../../spiffe/grpc/service.js";
import { checkDnsName } from "../../registration/entry-validation.js";
import { ALLOWED_KEY_TYPES, mintAudienceProblem, type Issuer } from "../../issuance/issuer.js";
import type { UnaryWrapper } from "../unary.js";
import type { IssuanceRecord, ListIssuancesRequest as IssuanceQuery } from "../../datastore/index.js";
import { checkEntryId, checkSerialHex } from "../../datastore/validate.js";
import { invalidField, pageRequest, spiffeIdField, ttlField, unixSeconds, withPageToken, type AdminApiDeps } from "./common.js";

type SvidMethods = (typeof SvidAdmin)["method"];

/** Most DNS SANs one minted X509-SVID may carry. */
export const MAX_MINT_DNS_NAMES = 100;

/** Who the issuance log names as the requester of minted SVIDs. */
const ADMIN_REQUESTER = "admin:local";

/** Builds the SvidAdmin service implementation; mints are signed and recorded by `issuer`. */
export function createSvidAdmin(deps: AdminApiDeps, unary: UnaryWrapper, issuer: Pick<Issuer, "mintX509Svid" | "mintJwtSvid">): GrpcServiceImplementation<SvidMethods> {
  return {
    mintX509SVID: unary<MintX509SVIDRequest, MintX509SVIDResponse>("MintX509SVID", async (req, _call, audit) => {
      audit.details.spiffe_id = req.spiffeId;
      const spiffeId = spiffeIdField("spiffe_id", req.spiffeId, { issuableIn: deps.trustDomain, kind: "workload" });
      const ttlMs = ttlField("ttl", req.ttl, deps.defaultX509TtlMs, deps.maxTtlMs);
      if (req.dnsNames.length > MAX_MINT_DNS_NAMES) throw invalidField("dns_names", `${req.dnsNames.length} names is more than the maximum ${MAX_MINT_DNS_NAMES}`);
      req.dnsNames.forEach((d, i) => checkDnsName(d, `dns_names[${i}]`));
      if (req.csr.length === 0) throw invalidField("csr", "is required");
      let publicKeyDer: Uint8Array;
      try {
        publicKeyDer = parseCsr(req.csr, ALLOWED_KEY_TYPES).publicKeyDer;
      } catch (e) {
        throw invalidField("csr", isSigilError(e) ? e.message : String(e), e);
      }
      const issued = await issuer.mintX509Svid({ spiffeId, publicKeyDer, ttlMs, dnsNames: req.dnsNames }, ADMIN_REQUESTER);
      Object.assign(audit.details, { spiffe_id: spiffeId.toString(), dns_names: [...req.dnsNames], serial: issued.serial, expires_at: issued.notAfter.toISOString() });
      return {
        res: create(MintX509SVIDResponseSchema, {
          svid: { spiffeId: spiffeId.toString(), certChain: [...issued.chain], expiresAt: unixSeconds(issued.notAfter) },
          bundle: [...deps.ca.bundle().x509Authorities],
        }),
      };
    }),

    mintJWTSVID: unary<MintJWTSVIDRequest, MintJWTSVIDResponse>("MintJWTSVID", async (req, _call, audit) => {
      audit.details.spiffe_id = req.spiffeId;
      audit.details.audience = [...req.audience];
      const spiffeId = spiffeIdField("spiffe_id", req.spiffeId, { issuableIn: deps.trustDomain, kind: "workload" });
      const audienceBad = mintAudienceProblem(req.audience);
      if (audienceBad) throw invalidField(audienceBad.field, audienceBad.message);
      const ttlMs = ttlField("ttl", req.ttl, deps.defaultJwtTtlMs, deps.maxTtlMs);
      const jwt = await issuer.mintJwtSvid({ spiffeId, audience: req.audience, ttlMs }, ADMIN_REQUESTER);
      Object.assign(audit.details, { spiffe_id: spiffeId.toString(), key_id: jwt.keyId, expires_at: jwt.expiresAt.toISOString() });
      return { res: create(MintJWTSVIDResponseSchema, { token: jwt.token, expiresAt: unixSeconds(jwt.expiresAt) }) };
    }),

    listIssuances: unary<ListIssuancesRequest, ListIssuancesResponse>("ListIssuances", async (req, _call, audit) => {
      const query: IssuanceQuery = {
        ...(req.bySpiffeId ? { spiffeId: spiffeIdField("by_spiffe_id", req.bySpiffeId).toString() } : {}),
        ...(req.byEntryId ? { entryId: field("by_entry_id", () => checkEntryId(req.byEntryId)) } : {}),
        ...(req.byAgentId ? { agentId: spiffeIdField("by_agent_id", req.byAgentId).toString() } : {}),
        ...(req.bySerial ? { serial: field("by_serial", () => checkSerialHex("serial", req.bySerial)) } : {}),
        ...(req.live ? { liveAt: deps.now() } : {}),
        ...pageRequest(req.pageSize, req.pageToken),
      };
      const page = await withPageToken(req.pageToken, () => deps.datastore.listIssuances(query));
      audit.details.returned = page.items.length;
      return {
        res: create(ListIssuancesResponseSchema, { issuances: page.items.map(wireIssuance), nextPageToken: page.nextPageToken ?? "" }),
      };
    }),
  };
}

/** Runs a datastore check, naming `name` (not the datastore's own wording) when it fails. */
function field<T>(name: string, check: () => T): T {
  try {
    return check();
  } catch (e) {
    throw invalidField(name, (e instanceof Error ? e.message : String(e)).replace(/^datastore: (serial )?/, ""), e);
  }
}

/** An issuance record on the wire. */
function wireIssuance(r: IssuanceRecord) {
  return create(IssuanceSchema, {
    serial: r.serial,
    kind: r.kind,
    spiffeId: r.spiffeId,
    entryId: r.entryId ?? "",
    agentId: r.agentId ?? "",
    caKeyId: r.caKeyId,
    notBefore: unixSeconds(r.notBefore),
    notAfter: unixSeconds(r.notAfter),
    issuedAt: unixSeconds(r.issuedAt),
    selectors: [...r.selectors],
    requestedBy: r.requestedBy,
    jwtId: r.jwtId ?? "",
    audience: [...(r.audience ?? [])],
  });
}
