/**
 * The WorkloadAttestor plugin type: given the pid of a process calling the
 * Workload API, state facts about it as selectors (`unix:uid:1000`,
 * `k8s:ns:prod`). The agent runs every configured attestor for each call and
 * matches the union of their selectors against registration entries.
 */
import type { Logger } from "../../common/log.js";
import type { Selector } from "../../common/selector.js";

/**
 * The caller as the kernel recorded it when it connected (SO_PEERCRED).
 * Attestors take uid and gid from here, never from /proc: what /proc says
 * about a pid can change after the connection (a setuid exec), these cannot.
 */
export interface WorkloadCaller {
  readonly pid: number;
  /** Effective uid at connect time. */
  readonly uid: number;
  /** Effective gid at connect time. */
  readonly gid: number;
}

/** A workload attestor plugin. */
export interface WorkloadAttestor {
  /** Plugin name; also the type of every selector it returns (`unix`). */
  readonly name: string;
  /**
   * Selectors describing the calling process. Rejects (with a SigilError
   * naming the plugin) when the process cannot be inspected; the agent then
   * refuses the call rather than match on a partial selector set. Whatever is
   * read from /proc is trusted only because the agent checks afterwards that
   * the caller is still the process that connected, acting as the same user.
   * `signal` aborts work the agent no longer waits for (attestation timeout).
   */
  attest(caller: WorkloadCaller, signal?: AbortSignal): Promise<Selector[]>;
}

/** What the agent hands a workload attestor plugin when it creates it. */
export interface WorkloadAttestorDeps {
  /** The plugin's logger (warnings about selectors it had to omit). */
  readonly log: Logger;
}
