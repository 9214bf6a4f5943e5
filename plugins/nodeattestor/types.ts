/**
 * The NodeAttestor plugin type, in two halves: the agent half produces
 * attestation data (and answers challenges); the server half verifies it and
 * decides the agent's SPIFFE ID and node selectors.
 */
import type { Selector } from "../../common/selector.js";
import type { SpiffeId, TrustDomain } from "../../spiffe/id.js";
import type { JoinTokenStore } from "./join_token/server.js";

/** Asks the agent a challenge and returns its answer (TPM credential activation, …). */
export type ChallengeFn = (challenge: Uint8Array) => Promise<Uint8Array>;

/** The server half's verdict on a node. */
export interface NodeAttestationResult {
  /** The agent's SPIFFE ID. */
  readonly agentId: SpiffeId;
  /** Selectors describing the node, matched against node-alias entries. */
  readonly selectors: readonly Selector[];
  /**
   * Whether the same node may attest again under the same ID (e.g. with a new
   * token from the same TPM). Join tokens cannot: each is single-use.
   */
  readonly canReattest: boolean;
  /**
   * The join token this attestation spends (`join_token`), checked but not
   * yet spent: node attestation spends it in the transaction that creates
   * the agent record, so an attestation that fails before then leaves it
   * usable. Omitted when the attestation spends nothing.
   */
  readonly joinToken?: string | undefined;
}

/** Server half of a node attestor. */
export interface ServerNodeAttestor {
  /** Plugin name; matches the agent half's `name` and AttestationData.type. */
  readonly name: string;
  /**
   * Verifies the attestation payload. Throws a SigilError
   * (ERR_PERMISSION_DENIED / ERR_INVALID_ARGUMENT) naming why it is refused.
   */
  attest(payload: Uint8Array, challenge: ChallengeFn): Promise<NodeAttestationResult>;
  /**
   * Whether this attestor gives agents IDs of this form, so that entries may
   * name such an agent as their parent before it has attested (`k8s_psat`:
   * `spiffe://<td>/spire/agent/k8s_psat/<a configured cluster>/<node UID>`,
   * which the registration controller uses for a pod's node). Omitted means
   * no ID is vouched for in advance.
   */
  issuesAgentId?(id: SpiffeId): boolean;
}

/** Agent half of a node attestor. */
export interface AgentNodeAttestor {
  readonly name: string;
  /** The attestation payload to send (read fresh on every attestation). */
  payload(): Promise<Uint8Array>;
  /** Answers a server challenge; attestors without challenges omit it. */
  answer?(challenge: Uint8Array): Promise<Uint8Array>;
  /**
   * Whether {@link AgentNodeAttestor.payload} can produce evidence the server
   * would accept now, without operator input. An evicted agent attests again
   * on its own only when this is true (a projected service account token or a
   * TPM can always prove the node again; a single-use join token only while it
   * has not been sent). Omitted means false.
   */
  canReattest?(): boolean;
  /**
   * What an operator must do for the node to attest again when
   * {@link AgentNodeAttestor.canReattest} is false, e.g. `a new join token is
   * needed: …`. Shown in logs, on `/ready` and by `sigil-agent healthcheck`.
   */
  readonly reattestRemedy?: string;
}

/** What the server hands the server half of a node attestor. */
export interface ServerNodeAttestorDeps {
  readonly trustDomain: TrustDomain;
  /** The datastore, for attestors that keep state there (join tokens). */
  readonly store: JoinTokenStore;
}

/** What the agent hands the agent half of a node attestor. */
export interface AgentNodeAttestorDeps {
  /** `agent.join_token` (or `--join-token`), when given. */
  readonly joinToken: string | undefined;
}
