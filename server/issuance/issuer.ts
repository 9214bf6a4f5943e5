/**
 * Issuance: signing an SVID and committing its issuance record, the one path
 * every credential the server signs for someone else takes (the agent API's
 * entry SVIDs and agents' own SVIDs, the admin API's mints). A credential is
 * returned only once its record is committed, and counted
 * (`sigil_x509_svids_signed_total`, `sigil_jwt_svids_signed_total`) then.
 *
 * For a registration entry, the SPIFFE ID, TTL and DNS names come from the
 * entry, never from the caller: only the public key is the caller's.
 *
 * @example
 * ```ts
 * const issuer = new Issuer({ ca, datastore, metrics, now: () => clock.now(), defaultX509TtlMs, defaultJwtTtlMs });
 * const req = issuer.entryX509Request(entry, publicKeyDer);       // throws for an entry in /spire
 * const [svid] = await issuer.entryX509Svids(agentId, [{ entry, req }]);
 * const minted = await issuer.mintJwtSvid({ spiffeId, audience: ["api"], ttlMs }, "admin:local");
 * ```
 */
import type { Metrics } from "../../common/metrics.js";
import { isReservedId, RESERVED_PATH } from "../../common/reserved-ids.js";
import { isSigilError, SigilError } from "../../spiffe/errors.js";
import { parseSpiffeId, type SpiffeId } from "../../spiffe/id.js";
import type { KeyType } from "../../spiffe/signer.js";
import type { CaManager, DownstreamX509CaRequest, IssuedJwt, IssuedX509, JwtSvidRequest, X509SvidRequest } from "../ca/manager.js";
import type { Datastore, IssuanceInput, RegistrationEntry, TlogEntryInput } from "../datastore/index.js";
import { audienceProblem, MAX_LOG_AUDIENCE_BYTES, MAX_LOG_AUDIENCES, type AudienceProblem } from "../../spiffe/tlog/sigil-entry.js";
import type { LoggedCredential } from "../tlog/entry.js";
import type { IssuanceLogSink } from "../tlog/log-service.js";
import { jwtIssuanceRecord, x509IssuanceRecord } from "./records.js";

/** Key types the server accepts for agent and workload keys. */
export const ALLOWED_KEY_TYPES: readonly KeyType[] = ["ec-p256", "ec-p384", "rsa-2048", "rsa-4096"];
/** Most audiences one JWT-SVID may carry: what its transparency-log entry holds. */
export const MAX_AUDIENCES = MAX_LOG_AUDIENCES;
/** Longest audience (UTF-8 bytes) of a JWT-SVID: what its transparency-log entry holds. */
export const MAX_AUDIENCE_BYTES = MAX_LOG_AUDIENCE_BYTES;

/**
 * How a JWT-SVID's audiences break what minting accepts: none, an empty one,
 * more than {@link MAX_AUDIENCES}, one over {@link MAX_AUDIENCE_BYTES} bytes,
 * or a control character (C0, C1, DEL) in one. The field names the audience
 * by index; undefined when the list is accepted. Every minting path (agent
 * API, admin mint) checks with it.
 */
export function mintAudienceProblem(audience: readonly string[]): AudienceProblem | undefined {
  if (audience.length === 0) return { field: "audience", message: "at least one audience is required" };
  const empty = audience.findIndex((a) => a.length === 0);
  if (empty >= 0) return { field: `audience[${empty}]`, message: "is empty" };
  return audienceProblem(audience);
}

/** Dependencies of the {@link Issuer}. */
export interface IssuerDeps {
  readonly ca: Pick<CaManager, "signX509Svid" | "signX509SvidBatch" | "signJwtSvid" | "signDownstreamX509Ca">;
  readonly datastore: Pick<Datastore, "recordIssuances">;
  /** Signed counters and the issuance-log write time, when given. */
  readonly metrics?: Metrics | undefined;
  /** When records say a credential was issued. */
  readonly now: () => Date;
  /** TTL of an entry's X509-SVIDs when the entry sets none. */
  readonly defaultX509TtlMs: number;
  /** TTL of an entry's JWT-SVIDs when the entry sets none. */
  readonly defaultJwtTtlMs: number;
  /** The transparency log, when on: each credential's log entry is committed with its record. */
  readonly transparencyLog?: IssuanceLogSink | undefined;
}

/** An entry's X509-SVID request that passed the caller's checks. */
export interface EntryX509Request {
  readonly entry: RegistrationEntry;
  readonly req: X509SvidRequest;
}

/** How an agent's own SVID came to be asked for. */
export interface AgentSvidOrigin {
  /** `attestation:<node attestor>` or `agent:<agent ID>` (a renewal). */
  readonly requestedBy: string;
  /** Canonical node selectors to record (attestation); default none. */
  readonly selectors?: readonly string[] | undefined;
  /** Hex SHA-256 of the attestation payload the agent sent (attestation), for its log entry. */
  readonly evidenceSha256?: string | undefined;
}

// Parsed SPIFFE IDs of entry records, so the signing path never re-parses them.
const parsedIds = new WeakMap<RegistrationEntry, SpiffeId>();
/**
 * The SPIFFE ID an entry's SVIDs carry. An entry in the reserved namespace
 * (only one stored before entries were checked for it) is never signed for:
 * its SVID would pass for the server's or an agent's.
 */
function entrySpiffeId(e: RegistrationEntry): SpiffeId {
  let id = parsedIds.get(e);
  if (!id) parsedIds.set(e, (id = parseSpiffeId(e.spiffeId)));
  if (isReservedId(id)) throw new SigilError("ERR_PERMISSION_DENIED", `agent api: entry ${JSON.stringify(e.id)} names ${e.spiffeId}, in the reserved namespace ${RESERVED_PATH}; no SVID is issued for it`);
  return id;
}

/** Signs SVIDs and commits their issuance records; see the module comment. */
export class Issuer {
  readonly #d: IssuerDeps;

  constructor(deps: IssuerDeps) {
    this.#d = deps;
  }

  /**
   * The request an entry's X509-SVID is signed from: ID, TTL and DNS names
   * from the entry, the key from the caller.
   *
   * @throws SigilError `ERR_PERMISSION_DENIED` for an entry in the reserved `/spire` namespace
   */
  entryX509Request(entry: RegistrationEntry, publicKeyDer: Uint8Array): X509SvidRequest {
    return {
      spiffeId: entrySpiffeId(entry),
      publicKeyDer,
      ttlMs: entry.x509SvidTtl > 0 ? entry.x509SvidTtl * 1000 : this.#d.defaultX509TtlMs,
      dnsNames: entry.dnsNames,
    };
  }

  /**
   * Signs entries' X509-SVIDs for `agentId` as one batch and records those
   * signed. Each result is the SVID or the error that refused its request, in
   * the order of `requests`; rejects only when the records cannot be committed.
   */
  async entryX509Svids(agentId: string, requests: readonly EntryX509Request[]): Promise<(IssuedX509 | SigilError)[]> {
    const issued = await this.#d.ca.signX509SvidBatch(requests.map((r) => r.req));
    const records: IssuanceInput[] = [];
    const logged: LoggedCredential[] = [];
    const issuedAt = this.#d.now();
    const origin = { requestedBy: `agent:${agentId}`, agentId };
    const tlog = this.#d.transparencyLog;
    issued.forEach((outcome, i) => {
      if (outcome instanceof SigilError) return;
      const { entry, req } = requests[i] as EntryX509Request;
      const record = x509IssuanceRecord("x509-svid", entry.spiffeId, outcome, origin, entry, issuedAt);
      records.push(record);
      if (tlog) logged.push({ record, certDer: outcome.chain[0], publicKeyDer: req.publicKeyDer, entryRevision: entry.revision });
    });
    await this.#commit(records, logged);
    this.#d.metrics?.x509SvidsSigned.inc(records.length);
    return issued;
  }

  /**
   * Signs an entry's JWT-SVID for `agentId` (ID and TTL from the entry) and records it.
   *
   * @throws SigilError `ERR_PERMISSION_DENIED` for an entry in the reserved `/spire` namespace
   */
  async entryJwtSvid(agentId: string, entry: RegistrationEntry, audience: readonly string[]): Promise<IssuedJwt> {
    const jwt = this.#d.ca.signJwtSvid({
      spiffeId: entrySpiffeId(entry),
      audience,
      ttlMs: entry.jwtSvidTtl > 0 ? entry.jwtSvidTtl * 1000 : this.#d.defaultJwtTtlMs,
    });
    const record = jwtIssuanceRecord(entry.spiffeId, jwt, audience, { requestedBy: `agent:${agentId}`, agentId }, entry);
    await this.#commit([record], [{ record, jwt: jwt.token, entryRevision: entry.revision }]);
    this.#d.metrics?.jwtSvidsSigned.inc();
    return jwt;
  }

  /**
   * Signs an agent's own X509-SVID and records it. `bind` stores the new
   * serial in the agent record in between: a credential the agent record
   * does not name is never recorded or returned.
   */
  async agentSvid(agentId: SpiffeId, publicKeyDer: Uint8Array, ttlMs: number, origin: AgentSvidOrigin, bind: (issued: IssuedX509) => Promise<unknown>): Promise<IssuedX509> {
    const issued = this.#d.ca.signX509Svid({ spiffeId: agentId, publicKeyDer, ttlMs });
    await bind(issued);
    const id = agentId.toString();
    const record = x509IssuanceRecord("agent-svid", id, issued, { requestedBy: origin.requestedBy, agentId: id, selectors: origin.selectors }, undefined, this.#d.now());
    await this.#commit([record], [{ record, certDer: issued.chain[0], publicKeyDer, evidenceSha256: origin.evidenceSha256 }]);
    this.#d.metrics?.x509SvidsSigned.inc();
    return issued;
  }

  /**
   * Signs an X509-SVID for no entry and no agent and records it as requested
   * by `requestedBy`: an admin mint (`x509-svid`), or a server's own SVID
   * (`server-svid`: the agent API's TLS identity, the bundle endpoint's),
   * whose record is an `x509-svid` one and whose log entry says `server-svid`.
   */
  async mintX509Svid(req: X509SvidRequest, requestedBy: string, logKind: "x509-svid" | "server-svid" = "x509-svid"): Promise<IssuedX509> {
    const issued = this.#d.ca.signX509Svid(req);
    const record = x509IssuanceRecord("x509-svid", req.spiffeId.toString(), issued, { requestedBy, agentId: null }, undefined, this.#d.now());
    await this.#commit([record], [{ record, kind: logKind, certDer: issued.chain[0], publicKeyDer: req.publicKeyDer }]);
    this.#d.metrics?.x509SvidsSigned.inc();
    return issued;
  }

  /**
   * Signs a downstream server's intermediate CA for the caller `callerId`,
   * whose registration entry `entry` is marked downstream, and records it: an
   * `x509-svid` record of the trust domain's ID (what the CA certificate
   * names) requested by `downstream:<caller>`, logged as a `downstream-ca` entry.
   */
  async downstreamX509Ca(callerId: string, entry: RegistrationEntry, req: DownstreamX509CaRequest): Promise<IssuedX509> {
    const issued = this.#d.ca.signDownstreamX509Ca(req);
    const caId = entrySpiffeId(entry).trustDomain.idString();
    const record = x509IssuanceRecord("x509-svid", caId, issued, { requestedBy: `downstream:${callerId}`, agentId: null }, entry, this.#d.now());
    // Not counted in sigil_x509_svids_signed_total: a CA certificate is not an SVID.
    await this.#commit([record], [{ record, kind: "downstream-ca", certDer: issued.chain[0], publicKeyDer: req.publicKeyDer, entryRevision: entry.revision }]);
    return issued;
  }

  /** Signs a JWT-SVID for no entry and no agent (an admin mint) and records it as requested by `requestedBy`. */
  async mintJwtSvid(req: JwtSvidRequest, requestedBy: string): Promise<IssuedJwt> {
    const jwt = this.#d.ca.signJwtSvid(req);
    const record = jwtIssuanceRecord(req.spiffeId.toString(), jwt, req.audience, { requestedBy, agentId: null }, undefined);
    await this.#commit([record], [{ record, jwt: jwt.token }]);
    this.#d.metrics?.jwtSvidsSigned.inc();
    return jwt;
  }

  /**
   * Commits records, with their transparency-log entries when the log is on,
   * in one transaction (timed when there are metrics); nothing leaves before
   * this resolves.
   */
  async #commit(records: IssuanceInput[], logged: readonly LoggedCredential[]): Promise<void> {
    const tlog = this.#d.transparencyLog;
    const entries = tlog && logged.length > 0 ? logEntries(tlog, logged) : undefined;
    const write = entries ? this.#d.datastore.recordIssuances(records, entries) : this.#d.datastore.recordIssuances(records);
    const firstIndex = await (this.#d.metrics ? this.#d.metrics.timeIssuanceLogWrite(write) : write);
    if (entries) tlog?.appended(entries.length, firstIndex === undefined ? undefined : { firstIndex, entries });
  }
}

/**
 * The log entries of credentials about to be returned. An entry the log
 * cannot hold is the request's fault, not the server's: an entry with many
 * long selectors (their number is not bounded) can pass the 64 KiB an entry
 * may have, so that is refused as `ERR_INVALID_ARGUMENT` naming the size.
 */
function logEntries(tlog: IssuanceLogSink, logged: readonly LoggedCredential[]): TlogEntryInput[] {
  try {
    return tlog.credentialEntries(logged);
  } catch (e) {
    if (isSigilError(e, "ERR_TLOG_MALFORMED")) throw new SigilError("ERR_INVALID_ARGUMENT", `issuance: the credential cannot be logged, so it is not issued: ${e.message}`, { cause: e });
    throw e;
  }
}
