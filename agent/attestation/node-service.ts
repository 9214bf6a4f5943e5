/**
 * The agent's own identity as a service (`node-attestation`): at start, the
 * stored agent SVID is used while valid, else the node attestor attests the
 * agent to the server (waiting out the server's rate-limit hints). From then
 * on the sync loop keeps the SVID current (renewal, attestation again after
 * an eviction when the attestor can).
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { Service } from "../../common/service.js";
import type { AgentNodeAttestor } from "../../plugins/nodeattestor/types.js";
import { SigilError } from "../../spiffe/errors.js";
import type { TrustDomain } from "../../spiffe/id.js";
import type { AgentStateStore, LoadedAgentState } from "../storage/agent-state-store.js";
import { retryOnPushback } from "../sync/pushback.js";
import type { GrpcServerClient } from "../sync/server-client.js";
import { NodeIdentity } from "./node.js";

/** Dependencies of the {@link NodeAttestationService}. */
export interface NodeAttestationDeps {
  /** The configured node attestor; without one the agent can only run from a stored SVID. */
  readonly attestor: AgentNodeAttestor | undefined;
  /** The state store service: the stored SVID to start from, and where a new one is persisted. */
  readonly state: { readonly store: AgentStateStore; readonly loaded: LoadedAgentState };
  /** The server connection service, started before this one. */
  readonly server: { readonly client: GrpcServerClient };
  readonly trustDomain: TrustDomain;
  readonly clock: Clock;
  /** `agent.rotation_fraction`, `agent.rotation_jitter`. */
  readonly rotationFraction: number;
  readonly rotationJitter: number;
  /** Uniform random numbers in [0, 1]. */
  readonly random: () => number;
  /** Waits between attestation attempts the server rate-limited (default: a timer). */
  readonly sleep?: ((ms: number) => Promise<void>) | undefined;
  readonly log: Logger;
}

/** The `node-attestation` service; see the module comment. */
export class NodeAttestationService implements Service {
  readonly name = "node-attestation";
  readonly #d: NodeAttestationDeps;
  #identity: NodeIdentity | undefined;

  constructor(deps: NodeAttestationDeps) {
    this.#d = deps;
  }

  /** The agent's identity, once started. */
  get identity(): NodeIdentity {
    if (this.#identity === undefined) throw new SigilError("ERR_UNAVAILABLE", "node attestation: not started");
    return this.#identity;
  }

  /**
   * @throws SigilError when there is no usable stored SVID and attestation fails
   *   (no join token, a used one, the server unreachable)
   */
  async start(): Promise<void> {
    const { state, trustDomain, log } = this.#d;
    const client = this.#d.server.client;
    const storedBundle = state.loaded.bundle !== undefined;
    const identity = new NodeIdentity({
      client,
      clock: this.#d.clock,
      attestor: this.#d.attestor,
      store: state.store,
      log,
      rotationFraction: this.#d.rotationFraction,
      rotationJitter: this.#d.rotationJitter,
      random: this.#d.random,
      onAttested: (bundle) => {
        client.setTrustBundle(bundle);
        // Persisted at once, so a restart before the first sync still trusts the server.
        if (!storedBundle) state.store.saveBundle({ trustDomain, x509Authorities: bundle, jwtAuthorities: new Map() });
      },
    });
    await retryOnPushback(() => identity.start(state.loaded.svid), {
      what: "node attestation",
      random: this.#d.random,
      log,
      ...(this.#d.sleep ? { sleep: this.#d.sleep } : {}),
    });
    this.#identity = identity;
  }

  /** The identity has no timer of its own: the sync loop drives renewal. */
  stop(): void {}
}
