/**
 * The agent's `data_dir` as a service (`state-store`): at start, what a
 * previous run left (a valid agent SVID and key, the own trust bundle) is read
 * once; unusable files are logged and ignored. The services started after it
 * take the store and what was loaded from here.
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { Service } from "../../common/service.js";
import { SigilError } from "../../spiffe/errors.js";
import type { TrustDomain } from "../../spiffe/id.js";
import { AgentStateStore, type LoadedAgentState } from "./agent-state-store.js";

/** Dependencies of the {@link StateStoreService}. */
export interface StateStoreServiceDeps {
  /** `agent.data_dir`. */
  readonly dataDir: string;
  readonly trustDomain: TrustDomain;
  readonly clock: Clock;
  readonly log: Logger;
}

/** The `state-store` service; see the module comment. */
export class StateStoreService implements Service {
  readonly name = "state-store";
  /** The persisted state; written to by node attestation and the sync loop. */
  readonly store: AgentStateStore;
  readonly #d: StateStoreServiceDeps;
  #loaded: LoadedAgentState | undefined;

  constructor(deps: StateStoreServiceDeps) {
    this.#d = deps;
    this.store = new AgentStateStore(deps.dataDir);
  }

  /** What was found in `data_dir` at start. */
  get loaded(): LoadedAgentState {
    if (this.#loaded === undefined) throw new SigilError("ERR_UNAVAILABLE", "storage: not loaded yet");
    return this.#loaded;
  }

  /** @throws SigilError `ERR_PERMISSION_DENIED` when `data_dir` is not safe */
  start(): void {
    const loaded = this.store.load({ trustDomain: this.#d.trustDomain, now: this.#d.clock.now() });
    for (const reason of loaded.discarded) this.#d.log.warn({ data_dir: this.store.dataDir }, `storage: discarded ${reason}`);
    this.#loaded = loaded;
  }

  /** Every write is complete when it returns: nothing to flush. */
  stop(): void {}
}
