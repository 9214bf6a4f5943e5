/**
 * When to prepare and activate the next CA key: pure functions of the current
 * authority's validity window, so they can be table-tested without a clock.
 *
 * Like SPIRE: the next authority is prepared (and published in the bundle) once
 * less than min(lifetime/2, 30d) remains, and becomes active once less than
 * min(lifetime/6, 7d) remains. With a 24h CA that is T+12h and T+20h.
 */

const DAY_MS = 24 * 60 * 60 * 1000;

/** What the rotator should do for a slot pair now. */
export type RotationAction = "none" | "prepare" | "activate";

/** Instant after which the successor must be prepared. */
export function prepareAt(notBefore: Date, notAfter: Date): Date {
  const lifetime = notAfter.getTime() - notBefore.getTime();
  return new Date(notAfter.getTime() - Math.min(lifetime / 2, 30 * DAY_MS));
}

/** Instant after which the successor must become active. */
export function activateAt(notBefore: Date, notAfter: Date): Date {
  const lifetime = notAfter.getTime() - notBefore.getTime();
  return new Date(notAfter.getTime() - Math.min(lifetime / 6, 7 * DAY_MS));
}

/**
 * The rotation step due at `now` for an active authority valid over
 * [notBefore, notAfter], given whether a successor is already prepared.
 */
export function rotationAction(notBefore: Date, notAfter: Date, now: Date, successorPrepared: boolean): RotationAction {
  const t = now.getTime();
  if (t >= activateAt(notBefore, notAfter).getTime()) return successorPrepared ? "activate" : "prepare";
  if (t >= prepareAt(notBefore, notAfter).getTime() && !successorPrepared) return "prepare";
  return "none";
}

/**
 * Longest SVID TTL that stays useful across rotations: min(caTtl/6, 7d)
 * (4h for the 24h default). Longer defaults are warned about at start.
 */
export function maxUsefulSvidTtlMs(caTtlMs: number): number {
  return Math.min(caTtlMs / 6, 7 * DAY_MS);
}
