/**
 * The downstream API (`sigil.agent.v1.DownstreamAPI`, on the agent API
 * listener): nested servers. A child Sigil server calls it with an X509-SVID
 * of this trust domain as TLS client certificate, fetched from a local
 * agent's Workload API, whose SPIFFE ID has a registration entry marked
 * `downstream`; it sends its CA key (CSR or SubjectPublicKeyInfo) and gets an
 * intermediate CA certificate signed by the active X.509 authority, with the
 * trust domain's X.509 roots. The child then signs its own SVIDs with it, so
 * they chain parent root → child intermediate → leaf.
 *
 * The caller may present the intermediates of its SVID's chain in the
 * `sigil-agent-chain-bin` metadata, as agents do (`presented-chain.ts`): an
 * SVID another server of the cluster signed chains through them to a root.
 *
 * Every call, refused or not, is first charged to the `downstream_ca` rate
 * limit (per caller ID; per source address without a valid SVID); the
 * caller's entries are then looked up in the in-memory entry index, never
 * the database. Refusals: no or an unverifiable client certificate, or an ID
 * with no downstream entry, is PermissionDenied naming why; a missing or bad
 * key or a negative `preferred_ttl` is InvalidArgument naming the field.
 * Each intermediate is recorded, and logged as a `downstream-ca`
 * transparency-log entry when the log is on, before it is returned.
 */
import { create } from "@bufbuild/protobuf";
import type { Logger } from "../../common/log.js";
import { isAgentId } from "../../common/reserved-ids.js";
import { DownstreamAPI, NewDownstreamX509CAResponseSchema, type NewDownstreamX509CARequest, type NewDownstreamX509CAResponse } from "../../proto/gen/sigil/agent/v1/downstream_pb.js";
import { X509Bundle } from "../../spiffe/bundle/x509-bundle.js";
import { parseCsr, parseSubjectPublicKeyInfo } from "../../spiffe/csr.js";
import { SigilError } from "../../spiffe/errors.js";
import type { GrpcServiceImplementation } from "../../spiffe/grpc/service.js";
import type { SpiffeId, TrustDomain } from "../../spiffe/id.js";
import { StaticX509BundleSource } from "../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../spiffe/x509/verify.js";
import type { CaManager } from "../ca/manager.js";
import type { RegistrationEntry } from "../datastore/index.js";
import { ALLOWED_KEY_TYPES, type Issuer } from "../issuance/issuer.js";
import type { EntryIndex } from "../registration/entry-index.js";
import type { IndexedRecord } from "../registration/entry-index-feed.js";
import { presentedIntermediates } from "./presented-chain.js";
import { sourceAddress, type AgentApiRateLimits, type RateLimitCharge } from "./rate-limit.js";
import { createUnaryWrapper } from "./unary.js";

/** Dependencies of the downstream API. */
export interface DownstreamApiDeps {
  readonly trustDomain: TrustDomain;
  /** The server's entry index (no datastore read per call). */
  readonly index: Pick<EntryIndex<IndexedRecord>, "withSpiffeId">;
  /** Resolves once the index has applied the changes delivered so far (`EntryIndexFeed.settled`); undefined when it has. */
  readonly indexSettled?: () => Promise<void> | undefined;
  readonly ca: Pick<CaManager, "bundle" | "intermediates">;
  /** Signs and records the intermediates. */
  readonly issuer: Pick<Issuer, "downstreamX509Ca">;
  readonly rateLimits: Pick<AgentApiRateLimits, "downstreamCa">;
  readonly charge: RateLimitCharge;
  /** `server.downstream_ca_ttl` (default `ca_ttl`): the longest lifetime given. */
  readonly downstreamCaTtlMs: number;
  readonly now: () => Date;
  readonly log: Logger;
  readonly auditEnabled: boolean;
}

type DownstreamMethods = (typeof DownstreamAPI)["method"];

/** Builds the DownstreamAPI service implementation. */
export function createDownstreamApi(deps: DownstreamApiDeps): GrpcServiceImplementation<DownstreamMethods> {
  const unary = createUnaryWrapper({ log: deps.log, auditEnabled: deps.auditEnabled, name: "downstream api" });

  /** The caller's verified SPIFFE ID; its chain may need the intermediates it presented or this server's own. */
  function callerId(raw: Buffer, presented: readonly Uint8Array[]): SpiffeId {
    const source = new StaticX509BundleSource([new X509Bundle(deps.trustDomain, deps.ca.bundle().x509Authorities)]);
    try {
      return verifyX509Svid([new Uint8Array(raw), ...presented, ...deps.ca.intermediates()], source, { now: deps.now() }).id;
    } catch (e) {
      throw new SigilError("ERR_PERMISSION_DENIED", `downstream api: client certificate is not a valid SVID of ${deps.trustDomain.name}: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Charges one call to `key`'s downstream_ca bucket. */
  function charge(key: string): void {
    deps.charge("downstream_ca", deps.rateLimits.downstreamCa, key, 1, (n) => `new downstream x509 ca: rate limit: ${key} made more than ${n} calls per second`);
  }

  /** The caller's unexpired entry marked downstream (the first by ID when there are several). */
  async function downstreamEntry(id: SpiffeId): Promise<RegistrationEntry> {
    const denied = (why: string): SigilError => new SigilError("ERR_PERMISSION_DENIED", `downstream api: ${id} ${why}; only a downstream server (an entry with downstream: true) may ask for an intermediate CA`);
    if (isAgentId(id)) throw denied("is an agent");
    await deps.indexSettled?.();
    const now = deps.now().getTime();
    const found = deps.index
      .withSpiffeId(id.toString())
      .map((i) => i.record)
      .filter((e) => e.downstream && (e.expiresAt === null || e.expiresAt.getTime() > now));
    const [entry] = found.sort((a, b) => (a.id < b.id ? -1 : 1));
    if (!entry) throw denied("has no registration entry marked downstream");
    return entry;
  }

  return {
    newDownstreamX509CA: unary<NewDownstreamX509CARequest, NewDownstreamX509CAResponse>("NewDownstreamX509CA", async (req, call, ctx) => {
      const raw = call.getAuthContext()?.sslPeerCertificate?.raw;
      if (!raw || raw.length === 0) {
        charge(sourceAddress(call.getPeer()));
        throw new SigilError("ERR_PERMISSION_DENIED", "downstream api: no client certificate: the call needs the downstream server's X509-SVID");
      }
      let id: SpiffeId;
      try {
        id = callerId(raw, presentedIntermediates(call.metadata, "downstream api"));
      } catch (e) {
        charge(sourceAddress(call.getPeer()));
        throw e;
      }
      const caller = id.toString();
      ctx.caller = { spiffeId: caller };
      // Before the lookup, so a caller without an entry pays for its refusals too.
      charge(caller);
      const entry = await downstreamEntry(id);
      let publicKeyDer: Uint8Array;
      try {
        if (req.key.case === "csr") publicKeyDer = parseCsr(req.key.value, ALLOWED_KEY_TYPES).publicKeyDer;
        else if (req.key.case === "publicKey") publicKeyDer = parseSubjectPublicKeyInfo(req.key.value, ALLOWED_KEY_TYPES).publicKeyDer;
        else throw new SigilError("ERR_INVALID_ARGUMENT", "a csr or public_key is required");
      } catch (e) {
        if (!(e instanceof SigilError)) throw e;
        const field = req.key.case === "csr" ? "csr" : req.key.case === "publicKey" ? "public_key" : "key";
        throw new SigilError("ERR_INVALID_ARGUMENT", `new downstream x509 ca: ${field}: ${e.message}`, { cause: e });
      }
      if (req.preferredTtl < 0n) throw new SigilError("ERR_INVALID_ARGUMENT", `new downstream x509 ca: preferred_ttl: ${req.preferredTtl} is negative (seconds; 0 asks for server.downstream_ca_ttl)`);
      const preferredMs = Number(req.preferredTtl) * 1000;
      const ttlMs = preferredMs > 0 ? Math.min(preferredMs, deps.downstreamCaTtlMs) : deps.downstreamCaTtlMs;
      // Recorded (and logged) before it resolves: an intermediate that is not in the log is never handed out.
      const issued = await deps.issuer.downstreamX509Ca(caller, entry, { publicKeyDer, ttlMs });
      return {
        res: create(NewDownstreamX509CAResponseSchema, {
          caCertChain: [...issued.chain],
          x509Authorities: [...deps.ca.bundle().x509Authorities],
          expiresAt: BigInt(Math.floor(issued.notAfter.getTime() / 1000)),
        }),
        caller,
        details: { entry_id: entry.id, serial: issued.serial },
      };
    }),
  };
}
