/**
 * A few attestation slots per uid, so that one user's Workload API calls
 * cannot take the agent's attention from everyone else's.
 *
 * Attesting a caller can cost a lot (with `discover_workload_path`, reading
 * and hashing its whole binary), and every attestation shares the agent's one
 * event loop and its few I/O threads. A user that keeps many calls in flight,
 * each from a large binary it keeps changing, would otherwise make every
 * other user's attestation miss its timeout. With slots, each uid runs at most
 * `perUid` attestations at a time; its further calls wait their turn (holding
 * nothing but a place in line) and give up after the attestation timeout.
 */

/** Attestations one uid may run at a time. */
export const DEFAULT_ATTESTATIONS_PER_UID = 32;

/** Hands out attestation slots per uid. */
export interface UidSlots {
  /**
   * Resolves with a release function once `uid` has a free slot (at once when
   * it has), in the order callers asked.
   *
   * @returns undefined when no slot came free within `timeoutMs`.
   */
  acquire(uid: number, timeoutMs: number): Promise<(() => void) | undefined>;
}

interface UidState {
  running: number;
  /** Callers waiting for a slot, oldest first. */
  readonly waiting: Set<() => void>;
}

/**
 * Creates slots for up to `perUid` concurrent attestations per uid.
 *
 * @example
 * ```ts
 * const slots = createUidSlots();
 * const release = await slots.acquire(peer.uid, 5_000);
 * if (release === undefined) throw new WorkloadAttestationError("attestation_failed");
 * try { … } finally { release(); }
 * ```
 */
export function createUidSlots(perUid: number = DEFAULT_ATTESTATIONS_PER_UID): UidSlots {
  const byUid = new Map<number, UidState>();

  function releaser(uid: number, state: UidState): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      state.running -= 1;
      const next = state.waiting.values().next();
      if (!next.done) {
        state.waiting.delete(next.value);
        next.value();
      } else if (state.running === 0) {
        byUid.delete(uid);
      }
    };
  }

  return {
    acquire(uid, timeoutMs) {
      let state = byUid.get(uid);
      if (state === undefined) byUid.set(uid, (state = { running: 0, waiting: new Set() }));
      const s = state;
      if (s.running < perUid) {
        s.running += 1;
        return Promise.resolve(releaser(uid, s));
      }
      return new Promise((resolve) => {
        const take = (): void => {
          clearTimeout(timer);
          s.running += 1;
          resolve(releaser(uid, s));
        };
        const timer = setTimeout(() => {
          s.waiting.delete(take);
          resolve(undefined);
        }, timeoutMs);
        s.waiting.add(take);
      });
    },
  };
}
