/**
 * The WorkloadAttestor plugin type: given the pid of a process calling the
 * Workload API, state facts about it as selectors (`unix:uid:1000`,
 * `k8s:ns:prod`). The agent runs every configured attestor for each call and
 * matches the union of their selectors against registration entries.
 */
import type { Selector } from "../../common/selector.js";

/** A workload attestor plugin. */
export interface WorkloadAttestor {
  /** Plugin name; also the type of every selector it returns (`unix`). */
  readonly name: string;
  /**
   * Selectors describing process `pid`. Rejects (with a SigilError naming the
   * plugin) when the process cannot be inspected; the agent then refuses the
   * call rather than match on a partial selector set. `signal` aborts work the
   * agent no longer waits for (attestation timeout).
   */
  attest(pid: number, signal?: AbortSignal): Promise<Selector[]>;
}
