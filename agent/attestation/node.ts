/**
 * The agent's own identity: node attestation on first start (or when the
 * stored SVID is lost or expired), renewal through RenewAgent once the
 * renewal point (fraction of lifetime, jittered) has passed, persistence in
 * `data_dir` after each change, and installing the SVID on the server
 * connection so the channel presents the new client certificate.
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { AgentNodeAttestor } from "../../plugins/nodeattestor/types.js";
import { isSigilError, SigilError } from "../../spiffe/errors.js";
import { renewAt } from "../rotation/renew-at.js";
import type { AgentStateStore } from "../storage/agent-state-store.js";
import type { AgentSvid } from "../storage/agent-svid.js";
import type { ServerClient } from "../sync/server-client.js";

/** Options of {@link NodeIdentity}. */
export interface NodeIdentityOptions {
  readonly client: ServerClient;
  readonly clock: Clock;
  /** The node attestor; without one the agent can only run from a stored SVID. */
  readonly attestor?: AgentNodeAttestor | undefined;
  /** Where the SVID is persisted; omitted in tests that keep it in memory. */
  readonly store?: AgentStateStore | undefined;
  readonly log?: Logger | undefined;
  /** Fraction of the lifetime after which the agent SVID is renewed (default 0.5). */
  readonly rotationFraction?: number;
  /** Jitter of the renewal point (default 0.1). */
  readonly rotationJitter?: number;
  /** Uniform random numbers in [0, 1] (default `Math.random`). */
  readonly random?: () => number;
  /** Called with the attestation bundle (own trust domain's X.509 roots) after each attestation. */
  readonly onAttested?: (bundle: readonly Uint8Array[]) => void;
}

/** The agent's SVID lifecycle. */
export class NodeIdentity {
  readonly #o: NodeIdentityOptions;
  #svid: AgentSvid | undefined;
  #renewAt = new Date(0);

  constructor(options: NodeIdentityOptions) {
    this.#o = options;
  }

  /** The current agent SVID, once started. */
  current(): AgentSvid | undefined {
    return this.#svid;
  }

  /** When the current SVID will be renewed. */
  get renewAt(): Date {
    return this.#renewAt;
  }

  /**
   * Starts from a stored SVID when it is still valid, else attests.
   *
   * @throws SigilError when attestation is needed and fails (see {@link NodeIdentity.attest})
   */
  async start(stored: AgentSvid | undefined): Promise<AgentSvid> {
    if (stored && stored.notAfter.getTime() > this.#o.clock.now().getTime()) {
      this.#install(stored, false);
      this.#o.log?.info({ agent_id: stored.spiffeId, expires_at: stored.notAfter.toISOString() }, "node attestation: using the stored agent SVID");
      return stored;
    }
    return this.attest();
  }

  /**
   * Attests the node and installs the resulting SVID.
   *
   * @throws SigilError `ERR_INVALID_ARGUMENT` without an attestor (no join token
   *   configured); `ERR_PERMISSION_DENIED` naming the fix when the server refuses
   *   (a used join token needs a new one); `ERR_UNAVAILABLE` when the server cannot be reached
   */
  async attest(): Promise<AgentSvid> {
    const attestor = this.#o.attestor;
    if (!attestor) {
      throw new SigilError(
        "ERR_INVALID_ARGUMENT",
        `node attestation: no valid agent SVID is stored${this.#o.store ? ` in ${this.#o.store.dataDir}` : ""} and no join token is configured; generate one with \`sigil-server token generate\` and set agent.join_token`,
      );
    }
    let result;
    try {
      result = await this.#o.client.attest(attestor);
    } catch (e) {
      throw explainAttestationFailure(attestor.name, e);
    }
    this.#install(result.svid, true);
    this.#o.onAttested?.(result.bundle);
    this.#o.log?.info({ agent_id: result.svid.spiffeId, attestation_type: attestor.name, expires_at: result.svid.notAfter.toISOString() }, "node attestation: agent attested");
    return result.svid;
  }

  /**
   * Keeps the SVID current: renews it through RenewAgent once its renewal
   * point has passed, and re-attests when it has expired (the server no
   * longer accepts it). Returns what it did.
   *
   * @throws SigilError when renewal or re-attestation fails; the current SVID stays installed
   */
  async maintain(): Promise<"none" | "renewed" | "reattested"> {
    const svid = this.#svid;
    const now = this.#o.clock.now().getTime();
    if (!svid || svid.notAfter.getTime() <= now) {
      if (svid) this.#o.log?.warn({ agent_id: svid.spiffeId, expired_at: svid.notAfter.toISOString() }, "node attestation: the agent SVID has expired; attesting again");
      await this.attest();
      return "reattested";
    }
    if (now < this.#renewAt.getTime()) return "none";
    await this.renew();
    return "renewed";
  }

  /**
   * Moves the renewal point to `at` when that is sooner (the SVID's chain runs
   * through a tainted authority); the next {@link NodeIdentity.maintain} at or
   * after `at` renews it. A renewal installs its own renewal point.
   */
  renewBy(at: Date): void {
    if (at.getTime() < this.#renewAt.getTime()) this.#renewAt = at;
  }

  /**
   * Renews the SVID now through RenewAgent.
   *
   * @throws SigilError from the server call
   */
  async renew(): Promise<AgentSvid> {
    const renewed = await this.#o.client.renew();
    this.#install(renewed, true);
    this.#o.log?.info({ agent_id: renewed.spiffeId, expires_at: renewed.notAfter.toISOString() }, "node attestation: agent SVID renewed");
    return renewed;
  }

  #install(svid: AgentSvid, persist: boolean): void {
    this.#o.client.setIdentity(svid);
    this.#svid = svid;
    this.#renewAt = renewAt(svid.notBefore, svid.notAfter, this.#o.rotationFraction ?? 0.5, this.#o.rotationJitter ?? 0.1, (this.#o.random ?? Math.random)());
    if (persist && this.#o.store) {
      try {
        this.#o.store.saveSvid(svid);
      } catch (e) {
        // The SVID works without the file; only a restart would need to attest again.
        this.#o.log?.error({ err: e }, "node attestation: cannot persist the agent SVID; a restart will need a new join token");
      }
    }
  }
}

/**
 * The error an operator can act on when attestation fails: a refused join
 * token says that it is single-use and how to get a new one.
 */
export function explainAttestationFailure(attestorName: string, e: unknown): SigilError {
  if (!isSigilError(e)) return new SigilError("ERR_INTERNAL", `node attestation: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  if (e.code === "ERR_PERMISSION_DENIED" && attestorName === "join_token") {
    return new SigilError(
      "ERR_PERMISSION_DENIED",
      `node attestation: the server refused the join token (${e.message}); a join token works once and expires, so a new one is needed: generate it with \`sigil-server token generate\`, set agent.join_token, and restart the agent (if this node was attested before, evict it first with \`sigil-server agent evict\`)`,
      { cause: e },
    );
  }
  if (e.code === "ERR_UNAVAILABLE") return new SigilError("ERR_UNAVAILABLE", `node attestation: the server cannot be reached: ${e.message}`, { cause: e });
  return new SigilError(e.code, `node attestation: ${e.message}`, { cause: e });
}
