/**
 * Workload attestation: who is the process behind a Workload API call? Every
 * configured attestor runs concurrently on the caller's pid, under one
 * timeout; their selectors are unioned. The caller's uid and gid are those it
 * connected with (SO_PEERCRED); whatever the attestors read from /proc is
 * believed only because, afterwards, {@link verifyPeer} finds the caller
 * still the process that connected and /proc/<pid> still owned by that
 * uid/gid. A caller that exited (its pid may now name someone else) or that
 * exec'd a setuid binary after connecting is refused, and a stream re-checks
 * its caller before every message it sends ({@link AttestedCaller.recheck}).
 * Each uid runs only a few attestations at a time (`uid-slots.ts`), so one
 * user's calls cannot take the agent's attention from everyone else's.
 *
 * Failures are explicit, never a partial selector set: an attestor that
 * throws or does not answer in time fails the call with Unavailable
 * (`workload attestation failed`, SPIRE's code and message, so clients retry),
 * a vanished caller fails it with Unauthenticated (`could not verify
 * existence of the original caller`, as SPIRE), and a caller that now acts as
 * another user with PermissionDenied; the log says which and why.
 */
import type { Logger } from "../../common/log.js";
import { normalizeSelectors, type Selector } from "../../common/selector.js";
import { SigilError } from "../../spiffe/errors.js";
import type { WorkloadAttestor } from "../../plugins/workloadattestor/types.js";
import { verifyPeer, type PeerCredentials } from "../endpoints/peer.js";
import { createUidSlots, DEFAULT_ATTESTATIONS_PER_UID } from "./uid-slots.js";

/** Why attestation refused a caller. */
export type WorkloadAttestationFailure =
  /** An attestor failed or timed out (gRPC Unavailable). */
  | "attestation_failed"
  /** The caller's process is gone or its pid was reused (gRPC Unauthenticated). */
  | "caller_gone"
  /** The caller now acts as another user than it connected as: a setuid exec (gRPC PermissionDenied). */
  | "caller_changed"
  /** The call did not come through a connection with known peer credentials (gRPC Internal). */
  | "caller_unknown";

/** Message sent to the caller for each failure, as SPIRE words them. */
export const WORKLOAD_ATTESTATION_MESSAGES: Readonly<Record<WorkloadAttestationFailure, string>> = {
  attestation_failed: "workload attestation failed",
  caller_gone: "could not verify existence of the original caller",
  caller_changed: "caller changed credentials after connecting",
  caller_unknown: "caller peer credentials are not available",
};

/**
 * A refused attestation. `reason` picks the gRPC status at the Workload API
 * boundary (see {@link WorkloadAttestationFailure}); the code is
 * `ERR_UNAVAILABLE` for all of them, and the message is the one the caller sees.
 */
export class WorkloadAttestationError extends SigilError {
  readonly reason: WorkloadAttestationFailure;

  constructor(reason: WorkloadAttestationFailure, options?: { readonly cause?: unknown }) {
    super(reason === "caller_unknown" ? "ERR_INTERNAL" : "ERR_UNAVAILABLE", WORKLOAD_ATTESTATION_MESSAGES[reason], options);
    this.name = "WorkloadAttestationError";
    this.reason = reason;
  }
}

/** Options of {@link attestWorkload}. */
export interface AttestWorkloadOptions {
  /** How long all attestors together may take. */
  readonly timeoutMs: number;
  readonly log: Logger;
}

/** Default {@link AttestWorkloadOptions.timeoutMs}: generous, since k8s-style attestors poll. */
export const DEFAULT_WORKLOAD_ATTESTATION_TIMEOUT_MS = 30_000;

/**
 * Attests the process behind `peer`: runs every attestor on its pid
 * concurrently and returns the union of their selectors, sorted and without
 * duplicates.
 *
 * @example
 * ```ts
 * const selectors = await attestWorkload(peerCredentials(socket), [unix], { timeoutMs: 5_000, log });
 * ```
 * @throws WorkloadAttestationError `attestation_failed` (an attestor failed or
 *   the timeout passed; the log says which) or `caller_gone` (pid-reuse guard).
 */
export async function attestWorkload(peer: PeerCredentials, attestors: readonly WorkloadAttestor[], options: AttestWorkloadOptions): Promise<Selector[]> {
  const { log, timeoutMs } = options;
  const controller = new AbortController();
  const pending = new Set(attestors.map((a) => a.name));
  const collected: Selector[] = [];
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new SigilError("ERR_UNAVAILABLE", `timed out after ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    await Promise.race([
      Promise.all(
        attestors.map(async (a) => {
          let selectors: Selector[];
          try {
            selectors = await a.attest(peer, controller.signal);
          } catch (e) {
            log.error(
              { pid: peer.pid, caller_uid: peer.uid, plugin: a.name, err: e },
              `Workload attestor "${a.name}" failed; the call is refused`,
            );
            throw new WorkloadAttestationError("attestation_failed", { cause: e });
          }
          pending.delete(a.name);
          collected.push(...selectors);
        }),
      ),
      timeout,
    ]);
  } catch (e) {
    controller.abort();
    // An attestor that could not read the caller usually failed because the caller exited or exec'd: say so.
    checkCaller(peer, log);
    if (e instanceof WorkloadAttestationError) throw e;
    log.error(
      { pid: peer.pid, caller_uid: peer.uid, timeout_ms: timeoutMs, pending_plugins: [...pending], partial_selectors: normalizeSelectors(collected).map(String) },
      "Timed out collecting workload selectors; the call is refused",
    );
    throw new WorkloadAttestationError("attestation_failed", { cause: e });
  } finally {
    clearTimeout(timer);
  }
  // Checked after attestation: the selectors must describe the process that connected, acting as it connected.
  checkCaller(peer, log);
  return normalizeSelectors(collected);
}

/**
 * Throws unless the caller is still the process that connected, owned by the
 * uid/gid it connected with (see {@link verifyPeer}); logs why.
 *
 * @throws WorkloadAttestationError `caller_gone` or `caller_changed`.
 */
export function checkCaller(peer: PeerCredentials, log: Logger): void {
  const change = verifyPeer(peer);
  if (change === undefined) return;
  if (change.kind === "gone") {
    log.warn({ pid: peer.pid, caller_uid: peer.uid, reason: change.detail }, "Caller exited (or its pid was reused); the call is refused");
    throw new WorkloadAttestationError("caller_gone");
  }
  log.warn(
    { pid: peer.pid, caller_uid: peer.uid, caller_gid: peer.gid, reason: change.detail },
    "Caller changed credentials after connecting; refused",
  );
  throw new WorkloadAttestationError("caller_changed");
}

/** An attested caller. */
export interface AttestedCaller {
  /** Its selectors, sorted and without duplicates. */
  readonly selectors: readonly Selector[];
  /**
   * Throws a WorkloadAttestationError (`caller_gone`, `caller_changed`) when
   * the caller has since exited or exec'd into another owner. Streams call it
   * before every message they send.
   */
  recheck(): void;
}

/** Options of {@link createCallerAttester}. */
export interface CallerAttesterOptions extends AttestWorkloadOptions {
  /** Finds the peer credentials of a call from its `call.getPeer()` string (the endpoint's PeerTracker `lookup`). */
  readonly resolvePeer: (callPeer: string) => PeerCredentials | undefined;
  readonly attestors: readonly WorkloadAttestor[];
  /**
   * Attestations one uid may run at a time; its further calls wait (up to
   * `timeoutMs`). Default {@link DEFAULT_ATTESTATIONS_PER_UID}.
   */
  readonly attestationsPerUid?: number;
}

/**
 * The `attest(callPeer)` function a Workload API handler takes: resolves the
 * call's peer credentials and attests them.
 *
 * @example
 * ```ts
 * const peers = createPeerTracker();
 * const attest = createCallerAttester({ resolvePeer: (p) => peers.lookup(p), attestors: [unix], timeoutMs: 30_000, log });
 * const handler = createWorkloadApiHandler({ cache, attest, trustDomain, log, metrics });
 * await startWorkloadEndpoint({ socketPath, handler, peers, log });
 * ```
 */
export function createCallerAttester(options: CallerAttesterOptions): (callPeer: string) => Promise<AttestedCaller> {
  const slots = createUidSlots(options.attestationsPerUid);
  return async (callPeer) => {
    const peer = options.resolvePeer(callPeer);
    if (peer === undefined) {
      options.log.error({ peer: callPeer }, "Workload API call without peer credentials; the call is refused");
      throw new WorkloadAttestationError("caller_unknown");
    }
    // One user's calls wait for that user's own earlier attestations, never for everyone's.
    const release = await slots.acquire(peer.uid, options.timeoutMs);
    if (release === undefined) {
      options.log.debug({ pid: peer.pid, caller_uid: peer.uid, timeout_ms: options.timeoutMs }, "Caller's uid had no free attestation slot in time; the call is refused");
      throw new WorkloadAttestationError("attestation_failed", { cause: new SigilError("ERR_UNAVAILABLE", `no attestation slot for uid ${peer.uid} within ${options.timeoutMs} ms`) });
    }
    try {
      const selectors = await attestWorkload(peer, options.attestors, options);
      return { selectors, recheck: () => checkCaller(peer, options.log) };
    } finally {
      release();
    }
  };
}
