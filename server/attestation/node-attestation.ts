/**
 * Node attestation on the server: a NodeAttestor plugin vouches for a node,
 * and the node's agent gets its SVID (`spiffe://<td>/spire/agent/…`, the ID
 * the attestor decided) and its agent record. Also the renewal of that SVID.
 *
 * The rules, in the order they apply: the attestor the request names must be
 * enabled; the CSR is checked before the attestor runs (a single-use join
 * token is not spent on a request that fails anyway); a banned agent is
 * refused; an agent already on record attests again only when its attestor
 * allows re-attestation. The agent record names the new SVID's serial before
 * the SVID is recorded and handed out.
 *
 * A join token the attestor checked is spent only with the agent record: in
 * the transaction that creates it (or, for an agent already on record, right
 * before its update). An attestation that fails before then (the CA refusing
 * to sign, a datastore error or timeout) leaves the token for the agent's
 * retry; one that fails after the agent record was created (the issuance
 * record's write, or the agent gone by the time its SVID is recorded) removes
 * that record and puts the token back, so the retry works then too. Of two attestations racing with one token, exactly one
 * creates an agent and the other is denied as a used token (both had their
 * SVIDs signed; the loser's is neither recorded nor returned).
 */
import { createHash } from "node:crypto";
import { formatSelector, type Selector } from "../../common/selector.js";
import { joinTokenRefusal } from "../../plugins/nodeattestor/join_token/server.js";
import type { ChallengeFn, ServerNodeAttestor } from "../../plugins/nodeattestor/types.js";
import { parseCsr } from "../../spiffe/csr.js";
import { SigilError } from "../../spiffe/errors.js";
import type { SpiffeId } from "../../spiffe/id.js";
import type { IssuedX509 } from "../ca/manager.js";
import type { Datastore } from "../datastore/index.js";
import type { ConsumedJoinToken } from "../datastore/join-token.js";
import { ALLOWED_KEY_TYPES, type Issuer } from "../issuance/issuer.js";

/** Dependencies of {@link NodeAttestation}. */
export interface NodeAttestationDeps {
  /** The enabled server NodeAttestor plugins, by name. */
  readonly attestors: ReadonlyMap<string, ServerNodeAttestor>;
  readonly datastore: Pick<Datastore, "getAgent" | "createAgent" | "updateAgent" | "deleteAgent" | "consumeJoinToken" | "peekJoinToken" | "createJoinToken">;
  readonly issuer: Pick<Issuer, "agentSvid">;
  /** TTL of agent SVIDs. */
  readonly agentTtlMs: number;
}

/** What an agent sends to attest: the attestor's name and payload, and a CSR for its SVID. */
export interface AttestationParams {
  readonly type: string;
  readonly payload: Uint8Array;
  readonly csr: Uint8Array;
}

/** An attested node: its agent's ID, selectors and SVID. */
export interface AttestedNode {
  readonly agentId: string;
  /** The NodeAttestor plugin that vouched for it. */
  readonly attestationType: string;
  readonly selectors: readonly Selector[];
  readonly svid: IssuedX509;
}

/** Attests nodes and renews agent SVIDs; see the module comment. */
export class NodeAttestation {
  readonly #d: NodeAttestationDeps;

  constructor(deps: NodeAttestationDeps) {
    this.#d = deps;
  }

  /**
   * Runs the attestor `params.type` (which may send `challenge`s), then
   * creates or updates the agent record and issues the agent's SVID.
   *
   * `opts.abandoned` tells whether the caller has gone: checked right before
   * the agent record is written (and a join token spent).
   *
   * @throws SigilError `ERR_INVALID_ARGUMENT` for an unknown attestor or a bad CSR;
   *   `ERR_PERMISSION_DENIED` for a banned agent or one that may not attest again,
   *   or a join token found used or expired when spent (`join_token: …`);
   *   whatever the attestor refuses with
   */
  async attest(params: AttestationParams, challenge: ChallengeFn, opts: { abandoned?: () => boolean } = {}): Promise<AttestedNode> {
    const attestor = this.#d.attestors.get(params.type);
    if (!attestor) {
      throw new SigilError("ERR_INVALID_ARGUMENT", `attest: unknown node attestor ${JSON.stringify(params.type)} (enabled: ${[...this.#d.attestors.keys()].join(", ") || "none"})`);
    }
    const csr = parseCsr(params.csr, ALLOWED_KEY_TYPES);
    const result = await attestor.attest(params.payload, challenge);
    const agentId = result.agentId.toString();
    const existing = await this.#d.datastore.getAgent(agentId);
    if (existing?.banned) throw new SigilError("ERR_PERMISSION_DENIED", `attest: agent ${agentId} is banned`);
    if (existing && !existing.canReattest) {
      throw new SigilError("ERR_PERMISSION_DENIED", `attest: agent ${agentId} is already attested and its attestor does not allow re-attestation; evict it first`);
    }
    const origin = {
      requestedBy: `attestation:${attestor.name}`,
      selectors: result.selectors.map(formatSelector),
      // What the attestor judged, as the transparency log records it (challenge responses are not included).
      evidenceSha256: createHash("sha256").update(params.payload).digest("hex"),
    };
    const { joinToken } = result;
    // What it takes to put the token back should the issuance record fail after the agent record spent it.
    const held = joinToken !== undefined && !existing ? await spending(joinToken, this.#d.datastore.peekJoinToken(joinToken)) : undefined;
    let created = false;
    const issuing = this.#d.issuer.agentSvid(result.agentId, csr.publicKeyDer, this.#d.agentTtlMs, origin, async (issued) => {
      const record = {
        attestationType: attestor.name,
        selectors: result.selectors,
        certSerial: issued.serial,
        certNotAfter: issued.notAfter,
        newCertSerial: null,
        newCertNotAfter: null,
        canReattest: result.canReattest,
      };
      // An agent that stopped waiting (its deadline passed while the server was busy) would never get this SVID:
      // spending its single-use token now would leave it nothing to retry with.
      if (opts.abandoned?.() === true) throw new SigilError("ERR_UNAVAILABLE", `attest: agent ${agentId} stopped waiting for its attestation (deadline or cancel); nothing was spent, it may retry`);
      if (existing) {
        // With a token only for an operator-chosen ID of an agent attested before by an attestor allowing re-attestation.
        if (joinToken !== undefined) await spending(joinToken, this.#d.datastore.consumeJoinToken(joinToken));
        await this.#d.datastore.updateAgent(agentId, record, ["attestationType", "selectors", "certSerial", "certNotAfter", "newCertSerial", "newCertNotAfter", "canReattest"]);
      } else {
        await spending(joinToken, this.#d.datastore.createAgent({ spiffeId: agentId, ...record, joinToken }));
        created = true;
      }
    });
    let svid: IssuedX509;
    try {
      svid = await issuing;
      // Gone while the SVID was being recorded: it would never arrive, and the token is what the agent retries with.
      if (created && joinToken !== undefined && opts.abandoned?.() === true) {
        throw new SigilError("ERR_UNAVAILABLE", `attest: agent ${agentId} stopped waiting for its attestation (deadline or cancel); its SVID ${svid.serial} was recorded but not delivered, and its join token is left for its retry`);
      }
    } catch (e) {
      if (created && joinToken !== undefined && held !== undefined) await this.#restoreToken(agentId, joinToken, held, e);
      throw e;
    }
    return { agentId, attestationType: attestor.name, selectors: result.selectors, svid };
  }

  /**
   * Undoes a join-token attestation whose agent record was created but whose
   * SVID was not recorded, or will not be delivered (the agent has gone): the
   * record goes and the token comes back, as it was. If that fails too, `cause` is reported with why (the operator then
   * evicts the agent and makes a new token).
   */
  async #restoreToken(agentId: string, token: string, held: ConsumedJoinToken, cause: unknown): Promise<void> {
    try {
      await this.#d.datastore.deleteAgent(agentId);
      await this.#d.datastore.createJoinToken({ token, expiresAt: held.expiresAt, ...(held.agentId !== undefined ? { agentId: held.agentId } : {}) });
    } catch (undo) {
      if (cause instanceof Error) cause.message += `; the join token could not be put back (${(undo as Error).message}): evict ${agentId} and make a new token`;
    }
  }

  /**
   * Issues an attested agent a new SVID for the key in `csr`. The record keeps
   * the current serial and names the new one as its successor, which becomes
   * current when the agent first presents it.
   *
   * @throws SigilError `ERR_INVALID_ARGUMENT` for a bad CSR
   */
  async renew(agentId: SpiffeId, csr: Uint8Array): Promise<IssuedX509> {
    const key = parseCsr(csr, ALLOWED_KEY_TYPES);
    const id = agentId.toString();
    return this.#d.issuer.agentSvid(agentId, key.publicKeyDer, this.#d.agentTtlMs, { requestedBy: `agent:${id}` }, (issued) =>
      this.#d.datastore.updateAgent(id, { newCertSerial: issued.serial, newCertNotAfter: issued.notAfter }, ["newCertSerial", "newCertNotAfter"]),
    );
  }
}

/** Awaits `write`, which spends `joinToken` when given: the store's refusal of the token is reported as the attestor reports it. */
async function spending<T>(joinToken: string | undefined, write: Promise<T>): Promise<T> {
  try {
    return await write;
  } catch (e) {
    throw joinToken === undefined ? e : joinTokenRefusal(e);
  }
}
