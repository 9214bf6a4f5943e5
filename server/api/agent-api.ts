/**
 * The agent-facing API (gRPC over TLS): the transport. `AttestAgent` is open
 * to anyone (the node attestor decides, `server/attestation/`); every other
 * call must present the caller's current agent SVID as TLS client
 * certificate, is checked against the agent record (an ID under
 * `/spire/agent/`, known, not banned, current serial), and is authorized
 * through the entry index. Agent records and bundles come from caches the
 * change feed keeps current (`datastore/feed-cache.ts`), so a sync in the
 * steady state reads nothing from the database; a serial the cached record
 * does not hold as current is checked against the stored record, and making
 * a renewed SVID current is a database write. Signing and recording are `server/issuance/`'s:
 * SPIFFE IDs, TTLs and DNS names of issued SVIDs come from entries, never
 * from what the agent sends; only the public key is taken from the request.
 * This module maps requests and results to and from the wire.
 *
 * SyncAuthorized answers deltas to agents that ask for them (see
 * `agent-sync-history.ts`); WatchChanges holds a stream per agent on which
 * change notices are pushed (see `change-notifier.ts`). SyncAuthorized also
 * carries the agent's pick-up reports, checked before it answers and logged
 * after it by `../tlog/deliveries.ts`.
 *
 * Rate limits (see `rate-limit.ts`) are charged before any work: attestation
 * attempts per source address, signed credentials, syncs and change stream
 * opens per agent. A refused call
 * is ResourceExhausted with a retry hint and changes nothing.
 */
import { createHash, type X509Certificate } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { status, type Metadata, type ServerDuplexStream, type ServerWritableStream } from "@grpc/grpc-js";
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import { AGENT_PATH_PREFIX, isAgentId } from "../../common/reserved-ids.js";
import { toServiceError } from "../../common/rpc/status.js";
import {
  AttestAgentResponseSchema,
  BatchNewX509SVIDResponseSchema,
  NewJWTSVIDResponseSchema,
  RenewAgentResponseSchema,
  SyncAuthorizedResponseSchema,
  WatchChangesResponseSchema,
  type AgentAPI,
  type AttestAgentRequest,
  type AttestAgentResponse,
  type BatchNewX509SVIDRequest,
  type BatchNewX509SVIDResponse,
  type NewJWTSVIDRequest,
  type NewJWTSVIDResponse,
  type RenewAgentRequest,
  type RenewAgentResponse,
  type SyncAuthorizedRequest,
  type SyncAuthorizedResponse,
  type WatchChangesRequest,
  type WatchChangesResponse,
} from "../../proto/gen/sigil/agent/v1/agent_pb.js";
import { X509SVIDSchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { parseCsr, parseSubjectPublicKeyInfo } from "../../spiffe/csr.js";
import { SigilError } from "../../spiffe/errors.js";
import type { SpiffeId, TrustDomain } from "../../spiffe/id.js";
import { verifyX509Svid } from "../../spiffe/x509/verify.js";
import { StaticX509BundleSource } from "../../spiffe/x509/static-bundle-source.js";
import { X509Bundle } from "../../spiffe/bundle/x509-bundle.js";
import type { GrpcServiceImplementation } from "../../spiffe/grpc/service.js";
import type { NodeAttestation } from "../attestation/node-attestation.js";
import type { CaManager, IssuedX509 } from "../ca/manager.js";
import type { AttestedAgent, Datastore, RegistrationEntry, StoredBundle } from "../datastore/index.js";
import type { FeedCache } from "../datastore/feed-cache.js";
import { ALLOWED_KEY_TYPES, mintAudienceProblem, type EntryX509Request, type Issuer } from "../issuance/issuer.js";
import type { EntryIndex } from "../registration/entry-index.js";
import { authorizedEntries, type IndexedRecord } from "../registration/entry-index-feed.js";
import { rateLimitCharger, sourceAddress, type AgentApiRateLimits } from "./rate-limit.js";
import { presentedIntermediates } from "./presented-chain.js";
import { auditCall, createUnaryWrapper } from "./unary.js";
import type { AgentSyncHistory } from "./agent-sync-history.js";
import type { ChangeNotifier } from "./change-notifier.js";
import type { DeliveryLog } from "../tlog/deliveries.js";
import { canonicalSerialHex } from "../../spiffe/x509/serial.js";
import { wireBundle, wireEntry, wireSelector, wireStatus } from "./wire.js";

/** Most SVIDs one BatchNewX509SVID call may ask for. */
export const MAX_BATCH_SIZE = 1000;
/** How long attestation may wait for a challenge response. */
const CHALLENGE_TIMEOUT_MS = 30_000;

/** Dependencies of the agent API. */
export interface AgentApiDeps {
  readonly trustDomain: TrustDomain;
  readonly datastore: Datastore;
  /** Agent records by SPIFFE ID, kept current by the change feed. */
  readonly agents: Pick<FeedCache<AttestedAgent>, "get" | "reload">;
  /** Stored bundles by trust-domain name, kept current by the change feed. */
  readonly bundles: Pick<FeedCache<StoredBundle>, "get">;
  readonly ca: CaManager;
  readonly index: EntryIndex<IndexedRecord>;
  /** Resolves once the index has applied the changes delivered so far (`EntryIndexFeed.settled`); undefined when it has. */
  readonly indexSettled?: () => Promise<void> | undefined;
  /** Node attestation and agent SVID renewal. */
  readonly attestation: NodeAttestation;
  /** Signs and records entries' SVIDs. */
  readonly issuer: Issuer;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly auditEnabled: boolean;
  readonly now: () => Date;
  /** Limits on attestation and signing; `{}` turns them all off. */
  readonly rateLimits: AgentApiRateLimits;
  /** What each agent was last answered, for delta syncs. */
  readonly syncHistory: AgentSyncHistory;
  /** Pushes change notices on WatchChanges streams. */
  readonly notifier: ChangeNotifier;
  /**
   * The own trust domain's tainted authorities (the CA manager's), sent to
   * agents in every sync answer; omitted: none are tainted.
   */
  readonly taintedAuthorities?: (() => TaintedAuthorities) | undefined;
  /** Logs the first deliveries agents report in their syncs (`server/tlog/deliveries.ts`); omitted: reports are ignored. */
  readonly deliveries?: DeliveryLog | undefined;
}

/** Tainted authorities as the CA manager reports them. */
export interface TaintedAuthorities {
  /** Lower-case hex SHA-256 of each tainted X.509 CA certificate's SubjectPublicKeyInfo (DER). */
  readonly x509SpkiSha256: readonly string[];
  /** Key IDs (`kid`) of tainted JWT signing keys. */
  readonly jwtKeyIds: readonly string[];
}

/**
 * The taint set in a canonical order, and its key for revisions and change
 * digests ("" when nothing is tainted, so revisions are unchanged then).
 */
export function canonicalTaint(t: TaintedAuthorities | undefined): { readonly x509: string[]; readonly jwt: string[]; readonly key: string } {
  const x509 = [...new Set(t?.x509SpkiSha256 ?? [])].sort();
  const jwt = [...new Set(t?.jwtKeyIds ?? [])].sort();
  const key = x509.length + jwt.length === 0 ? "" : `taint:${x509.join(",")}|${JSON.stringify(jwt)}`;
  return { x509, jwt, key };
}

type AgentMethods = (typeof AgentAPI)["method"];

/** A client certificate that verified against a bundle snapshot. */
interface VerifiedCaller {
  readonly id: SpiffeId;
  readonly serial: string;
  readonly source: StaticX509BundleSource;
  /** Latest notBefore and earliest notAfter of the verified chain (ms). */
  readonly validFrom: number;
  readonly validUntil: number;
}

/** Most verified client certificates remembered. */
const MAX_VERIFIED_CERTS = 10_000;

interface AuthenticatedAgent {
  readonly id: SpiffeId;
  readonly record: AttestedAgent;
  /** The earliest notAfter of the client certificate's verified chain (ms). */
  readonly validUntil: number;
}

/** Builds the AgentAPI service implementation. */
export function createAgentApi(deps: AgentApiDeps): GrpcServiceImplementation<AgentMethods> {
  const log = deps.log;

  // One parsed source per bundle snapshot: parsing roots costs more than verifying with them.
  let cachedSource: { bundle: unknown; source: StaticX509BundleSource } | undefined;
  function bundleSource(): StaticX509BundleSource {
    const b = deps.ca.bundle();
    if (cachedSource?.bundle !== b) cachedSource = { bundle: b, source: new StaticX509BundleSource([new X509Bundle(deps.trustDomain, b.x509Authorities)]) };
    return cachedSource.source;
  }

  // Client certificates already verified against the current bundle, by DER:
  // an agent presents the same SVID on every call, and verifying its chain
  // costs more than the rest of a call's bookkeeping. A hit holds only while
  // the bundle is the same and every certificate of the chain is still valid;
  // the agent record (ban, current serial) is checked on every call.
  const verifiedCerts = new Map<string, VerifiedCaller>();
  function verifyCaller(raw: Buffer, presented: readonly Uint8Array[]): VerifiedCaller {
    const source = bundleSource();
    const now = deps.now();
    const key = raw.toString("base64");
    const hit = verifiedCerts.get(key);
    if (hit && hit.source === source && now.getTime() >= hit.validFrom && now.getTime() < hit.validUntil) return hit;
    // The agent's chain may need the server CA's intermediates (upstream authority), or, for an SVID
    // another server of the cluster signed, the intermediates the agent presented: the path is still
    // anchored at the bundle's roots, so presented certificates add no trust of their own.
    const chain = [new Uint8Array(raw), ...presented, ...deps.ca.intermediates()];
    try {
      const verified = verifyX509Svid(chain, source, { now });
      const certs = verified.verifiedChain;
      const caller: VerifiedCaller = {
        id: verified.id,
        serial: canonicalSerialHex((certs[0] as X509Certificate).serialNumber),
        source,
        validFrom: Math.max(...certs.map((c) => Date.parse(c.validFrom))),
        validUntil: Math.min(...certs.map((c) => Date.parse(c.validTo))),
      };
      if (verifiedCerts.size >= MAX_VERIFIED_CERTS) verifiedCerts.clear();
      verifiedCerts.set(key, caller);
      return caller;
    } catch (e) {
      verifiedCerts.delete(key);
      throw new SigilError("ERR_PERMISSION_DENIED", `agent api: client certificate is not a valid SVID of ${deps.trustDomain.name}: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Verifies the caller's TLS client certificate and its agent record. */
  async function authenticate(call: { getAuthContext(): { sslPeerCertificate?: { raw?: Buffer } } | null; readonly metadata: Metadata }): Promise<AuthenticatedAgent> {
    const raw = call.getAuthContext()?.sslPeerCertificate?.raw;
    if (!raw || raw.length === 0) throw new SigilError("ERR_PERMISSION_DENIED", "agent api: no client certificate: the call needs the agent's X509-SVID");
    const intermediates = presentedIntermediates(call.metadata, "agent api");
    const { id, serial, validUntil } = verifyCaller(raw, intermediates);
    // An agent record outside the agent namespace predates its confinement (a join token's chosen ID): renewing it would mint that ID.
    if (!isAgentId(id)) throw new SigilError("ERR_PERMISSION_DENIED", `agent api: ${id} is not under spiffe://${deps.trustDomain.name}${AGENT_PATH_PREFIX}, where agent IDs lie; evict it and attest the node again`);
    let record = await deps.agents.get(id.toString());
    // Another serial than the copy's current one: a renewal (through any server) the copy may predate. It is
    // decided on the stored record, so a stale copy can neither refuse a renewed SVID nor make an old one current.
    if (record !== undefined && !record.banned && serial !== record.certSerial) record = await deps.agents.reload(id.toString());
    if (!record) throw new SigilError("ERR_AGENT_NOT_ATTESTED", `agent api: ${id} is not an attested agent`);
    if (record.banned) throw new SigilError("ERR_PERMISSION_DENIED", `agent api: agent ${id} is banned`);
    if (serial !== record.certSerial) {
      if (serial === record.newCertSerial) {
        // First use of a renewed SVID: it becomes the current one.
        const promoted = await deps.datastore.updateAgent(id.toString(), { certSerial: serial, certNotAfter: record.newCertNotAfter ?? record.certNotAfter, newCertSerial: null, newCertNotAfter: null }, ["certSerial", "certNotAfter", "newCertSerial", "newCertNotAfter"]);
        return { id, record: promoted, validUntil };
      }
      throw new SigilError("ERR_PERMISSION_DENIED", `agent api: ${id} presented an SVID (serial ${serial}) that is not its current one`);
    }
    return { id, record, validUntil };
  }

  /** The agent's entries, once the index holds every change delivered before the call (this server's own writes included). */
  const authorized = async (agent: AuthenticatedAgent): Promise<RegistrationEntry[]> => {
    await deps.indexSettled?.();
    return authorizedEntries(deps.index, agent.id.toString(), agent.record, deps.now());
  };

  const auditOpts = { log, auditEnabled: deps.auditEnabled };
  const auditLog = (method: string, caller: string, code: number, details: Record<string, unknown> = {}, message?: string): void =>
    auditCall(auditOpts, method, caller, code, details, message);
  const unary = createUnaryWrapper({ log, auditEnabled: deps.auditEnabled, name: "agent api" });

  const charge = rateLimitCharger(deps.metrics);

  return {
    attestAgent(call: ServerDuplexStream<AttestAgentRequest, AttestAgentResponse>): void {
      const queue: AttestAgentRequest[] = [];
      let waiter: ((m: AttestAgentRequest | undefined) => void) | undefined;
      let ended = false;
      call.on("data", (m: AttestAgentRequest) => {
        if (waiter) {
          const w = waiter;
          waiter = undefined;
          w(m);
        } else queue.push(m);
      });
      call.on("end", () => {
        ended = true;
        waiter?.(undefined);
      });
      call.on("error", () => {
        ended = true;
        waiter?.(undefined);
      });
      const next = (): Promise<AttestAgentRequest | undefined> => {
        const m = queue.shift();
        if (m || ended) return Promise.resolve(m);
        return new Promise((resolve) => {
          waiter = resolve;
          setTimeout(() => {
            if (waiter === resolve) {
              waiter = undefined;
              resolve(undefined);
            }
          }, CHALLENGE_TIMEOUT_MS).unref();
        });
      };
      (async () => {
        const source = sourceAddress(call.getPeer());
        charge("attestation", deps.rateLimits.attestation, source, 1, (n) => `attest: rate limit: more than ${n} node attestation attempt${n === 1 ? "" : "s"} per second from ${source}`);
        const first = await next();
        if (!first || first.step.case !== "params") throw new SigilError("ERR_INVALID_ARGUMENT", "attest: the first message must carry attestation params");
        const params = first.step.value;
        const attested = await deps.attestation.attest({ type: params.data?.type ?? "", payload: params.data?.payload ?? new Uint8Array(), csr: params.csr }, async (challenge) => {
          call.write(create(AttestAgentResponseSchema, { step: { case: "challenge", value: challenge } }));
          const answer = await next();
          if (!answer || answer.step.case !== "challengeResponse") throw new SigilError("ERR_PERMISSION_DENIED", "attest: no answer to the challenge");
          return answer.step.value;
        }, { abandoned: () => call.cancelled || deadlinePassed(call.getDeadline()) });
        const { agentId, svid: issued, attestationType } = attested;
        call.write(
          create(AttestAgentResponseSchema, {
            step: {
              case: "result",
              value: {
                svid: create(X509SVIDSchema, { spiffeId: agentId, certChain: [...issued.chain], expiresAt: BigInt(Math.floor(issued.notAfter.getTime() / 1000)) }),
                bundle: [...deps.ca.bundle().x509Authorities],
                selectors: attested.selectors.map(wireSelector),
              },
            },
          }),
        );
        auditLog("AttestAgent", agentId, 0, { attestation_type: attestationType, serial: issued.serial });
        log.info({ agent_id: agentId, attestation_type: attestationType, serial: issued.serial }, "agent attested");
        call.end();
      })().catch((e: unknown) => {
        const err = toServiceError(e);
        auditLog("AttestAgent", "unattested", err.code, {}, err.details);
        if (err.code === status.INTERNAL) log.error({ err: e }, "agent api: AttestAgent failed");
        call.emit("error", err);
      });
    },

    renewAgent: unary<RenewAgentRequest, RenewAgentResponse>("RenewAgent", async (req, call) => {
      const agent = await authenticate(call);
      charge("x509_signing", deps.rateLimits.x509Signing, agent.id.toString(), 1, (n) => `renew agent: rate limit: agent ${agent.id} asked for more than ${n} X509-SVIDs per second`);
      const issued = await deps.attestation.renew(agent.id, req.csr);
      return {
        res: create(RenewAgentResponseSchema, {
          svid: { spiffeId: agent.id.toString(), certChain: [...issued.chain], expiresAt: BigInt(Math.floor(issued.notAfter.getTime() / 1000)) },
        }),
        caller: agent.id.toString(),
        details: { serial: issued.serial },
      };
    }),

    syncAuthorized: unary<SyncAuthorizedRequest, SyncAuthorizedResponse>("SyncAuthorized", async (req, call) => {
      const agent = await authenticate(call);
      charge("sync", deps.rateLimits.sync, agent.id.toString(), 1, (n) => `sync authorized: rate limit: agent ${agent.id} synced more than ${n} time${n === 1 ? "" : "s"} per second`);
      // Not awaited: recording never fails or delays a sync (the promise never rejects); bad reports throw here.
      void deps.deliveries?.report(agent.id.toString(), req.deliveries);
      const entries = await authorized(agent);
      const own = await deps.bundles.get(deps.trustDomain.name);
      const federatedNames = [...new Set(entries.flatMap((e) => e.federatesWith))].sort();
      const federated = (await Promise.all(federatedNames.map((td) => deps.bundles.get(td)))).filter((b) => b !== undefined);
      const h = createHash("sha256");
      for (const e of [...entries].sort((a, b) => (a.id < b.id ? -1 : 1))) h.update(`${e.id}@${e.revision};`);
      // The write time too: a federated bundle without spiffe_sequence (stored as 0), or one set by hand
      // with an unchanged sequence, changes its content without changing its sequence.
      let bundlesKey = "";
      for (const b of [own, ...federated]) if (b) bundlesKey += `${b.trustDomain}#${b.sequence}@${b.updatedAt.getTime()};`;
      h.update(bundlesKey);
      // A taint changes nothing the agent syncs but what it must replace: the revision covers it, so an
      // agent holding the last one is never answered not_modified across a taint change.
      const taint = canonicalTaint(deps.taintedAuthorities?.());
      h.update(taint.key);
      const revision = h.digest("base64url");
      const tainted = { taintedX509Authorities: taint.x509, taintedJwtKeys: taint.jwt };
      const agentId = agent.id.toString();
      if (req.knownRevision === revision) {
        deps.syncHistory.remember(agentId, revision, entries, bundlesKey);
        return { res: create(SyncAuthorizedResponseSchema, { notModified: true, revision }), caller: agentId };
      }
      const delta = req.acceptDelta ? deps.syncHistory.delta(agentId, req.knownRevision, entries, bundlesKey) : undefined;
      deps.syncHistory.remember(agentId, revision, entries, bundlesKey);
      if (delta) {
        return {
          res: create(SyncAuthorizedResponseSchema, {
            revision,
            delta: true,
            entries: delta.changed.map(wireEntry),
            removedEntryIds: [...delta.removedIds],
            bundles: delta.bundlesChanged ? [own, ...federated].filter((b) => b !== undefined).map(wireBundle) : [],
            ...tainted,
          }),
          caller: agentId,
          details: { entries: entries.length, changed: delta.changed.length, removed: delta.removedIds.length },
        };
      }
      return {
        res: create(SyncAuthorizedResponseSchema, {
          revision,
          entries: entries.map(wireEntry),
          bundles: [own, ...federated].filter((b) => b !== undefined).map(wireBundle),
          ...tainted,
        }),
        caller: agent.id.toString(),
        details: { entries: entries.length },
      };
    }),

    batchNewX509SVID: unary<BatchNewX509SVIDRequest, BatchNewX509SVIDResponse>("BatchNewX509SVID", async (req, call) => {
      const agent = await authenticate(call);
      if (req.params.length === 0) throw new SigilError("ERR_INVALID_ARGUMENT", "batch new x509 svid: params is empty");
      if (req.params.length > MAX_BATCH_SIZE) throw new SigilError("ERR_INVALID_ARGUMENT", `batch new x509 svid: ${req.params.length} params is more than the maximum ${MAX_BATCH_SIZE}`);
      // One SVID per entry per call: repeats would only multiply issuance (and the log) past the entry count.
      const firstIndex = new Map<string, number>();
      req.params.forEach((p, i) => {
        const seen = firstIndex.get(p.entryId);
        if (seen !== undefined) throw new SigilError("ERR_INVALID_ARGUMENT", `batch new x509 svid: params[${i}] names entry ${JSON.stringify(p.entryId)} again (first at params[${seen}]); ask for each entry once`);
        firstIndex.set(p.entryId, i);
      });
      // Every requested SVID counts, signed or not, so the log cannot outgrow the limit.
      charge("x509_signing", deps.rateLimits.x509Signing, agent.id.toString(), req.params.length, (n) => `batch new x509 svid: rate limit: agent ${agent.id} asked for more than ${n} X509-SVIDs per second`);
      const byId = new Map((await authorized(agent)).map((e) => [e.id, e]));
      const agentId = agent.id.toString();
      // Checked one by one; the ones that pass are signed as one batch.
      const checked = req.params.map((p, i): EntryX509Request | SigilError => {
        try {
          const entry = byId.get(p.entryId);
          if (!entry) throw new SigilError("ERR_PERMISSION_DENIED", `params[${i}]: entry ${JSON.stringify(p.entryId)} is not authorized for agent ${agent.id}`);
          let key;
          if (p.key.case === "csr") key = parseCsr(p.key.value, ALLOWED_KEY_TYPES);
          else if (p.key.case === "publicKey") key = parseSubjectPublicKeyInfo(p.key.value, ALLOWED_KEY_TYPES);
          else throw new SigilError("ERR_INVALID_ARGUMENT", `params[${i}]: a csr or public_key is required`);
          return { entry, req: deps.issuer.entryX509Request(entry, key.publicKeyDer) };
        } catch (e) {
          if (e instanceof SigilError) return e;
          log.error({ err: e }, "agent api: BatchNewX509SVID param failed");
          return new SigilError("ERR_INTERNAL", `params[${i}]: internal error`, { cause: e });
        }
      });
      const accepted = checked.filter((c): c is EntryX509Request => !(c instanceof SigilError));
      // Recorded before it resolves: an SVID that is not in the log is never handed out.
      const issued = await deps.issuer.entryX509Svids(agentId, accepted);
      let signed = 0;
      let next = 0;
      const results = checked.map((c, i) => {
        const outcome = c instanceof SigilError ? c : (issued[next++] as IssuedX509 | SigilError);
        if (outcome instanceof SigilError) {
          const s = wireStatus(outcome);
          if (!outcome.message.startsWith(`params[${i}]`)) s.message = `params[${i}]: ${s.message}`;
          return { status: s };
        }
        const entry = (c as EntryX509Request).entry;
        signed++;
        return {
          status: wireStatus(),
          svid: { spiffeId: entry.spiffeId, certChain: [...outcome.chain], expiresAt: BigInt(Math.floor(outcome.notAfter.getTime() / 1000)) },
        };
      });
      return { res: create(BatchNewX509SVIDResponseSchema, { results }), caller: agent.id.toString(), details: { requested: req.params.length, signed } };
    }),

    watchChanges(call: ServerWritableStream<WatchChangesRequest, WatchChangesResponse>): void {
      let unwatch: (() => void) | undefined;
      let done = false;
      const finish = (): void => {
        done = true;
        unwatch?.();
      };
      call.on("cancelled", finish);
      call.on("error", finish);
      call.on("close", finish);
      (async () => {
        const agent = await authenticate(call);
        if (done) return;
        const agentId = agent.id.toString();
        charge("watch_changes", deps.rateLimits.watchChanges, agentId, 1, (n) => `watch changes: rate limit: agent ${agent.id} opened more than ${n} change stream${n === 1 ? "" : "s"} per second`);
        // The stream ends when the SVID it was opened with expires: a new one must present a valid SVID.
        unwatch = deps.notifier.watch(agentId, agent.record, new Date(agent.validUntil), {
          send: (digest) => {
            if (!done) call.write(create(WatchChangesResponseSchema, { revision: digest }));
          },
          end: (reason) => {
            if (done) return;
            finish();
            if (reason) call.emit("error", toServiceError(reason));
            else call.end();
          },
        });
        auditLog("WatchChanges", agentId, 0);
      })().catch((e: unknown) => {
        const err = toServiceError(e);
        auditLog("WatchChanges", "unauthenticated", err.code, {}, err.details);
        if (err.code === status.INTERNAL) log.error({ err: e }, "agent api: WatchChanges failed");
        done = true;
        call.emit("error", err);
      });
    },

    newJWTSVID: unary<NewJWTSVIDRequest, NewJWTSVIDResponse>("NewJWTSVID", async (req, call) => {
      const agent = await authenticate(call);
      const audienceBad = mintAudienceProblem(req.audience);
      if (audienceBad) throw new SigilError("ERR_INVALID_ARGUMENT", `new jwt svid: ${audienceBad.field} ${audienceBad.message}`);
      charge("jwt_signing", deps.rateLimits.jwtSigning, agent.id.toString(), 1, (n) => `new jwt svid: rate limit: agent ${agent.id} asked for more than ${n} JWT-SVIDs per second`);
      const entry = (await authorized(agent)).find((e) => e.id === req.entryId);
      if (!entry) throw new SigilError("ERR_PERMISSION_DENIED", `new jwt svid: entry ${JSON.stringify(req.entryId)} is not authorized for agent ${agent.id}`);
      const jwt = await deps.issuer.entryJwtSvid(agent.id.toString(), entry, req.audience);
      return {
        res: create(NewJWTSVIDResponseSchema, {
          spiffeId: entry.spiffeId,
          token: jwt.token,
          expiresAt: BigInt(Math.floor(jwt.expiresAt.getTime() / 1000)),
          issuedAt: BigInt(Math.floor(jwt.issuedAt.getTime() / 1000)),
        }),
        caller: agent.id.toString(),
        details: { entry_id: entry.id, key_id: jwt.keyId },
      };
    }),
  };
}

/**
 * Whether a call's deadline has passed on this server's clock. A busy server
 * learns of the client's cancel only when it reads the stream again; the
 * deadline it was told at the start needs no reading.
 */
export function deadlinePassed(deadline: Date | number): boolean {
  const t = deadline instanceof Date ? deadline.getTime() : deadline;
  return Number.isFinite(t) && t <= Date.now();
}
