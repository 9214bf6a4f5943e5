/**
 * When the agent renews an SVID (its own or a workload's): after a fraction of
 * the lifetime (default half, SPIRE's rule), moved by a random jitter so that
 * many agents and SVIDs issued together do not renew in lockstep. Pure
 * functions: the caller passes the random number and the time.
 */
import { SigilError } from "../../spiffe/errors.js";

function invalid(message: string): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `rotation: ${message}`);
}

function checkFraction(name: string, v: number, lo: number, hi: number, hiInclusive: boolean): void {
  if (!Number.isFinite(v) || v < lo || (hiInclusive ? v > hi : v >= hi)) {
    throw invalid(`${name} ${v} is outside [${lo}, ${hi}${hiInclusive ? "]" : ")"}`);
  }
}

/**
 * The renewal point of an SVID valid from `notBefore` to `notAfter`:
 * `notBefore + fraction × lifetime`, moved by up to `±jitterFraction` of that
 * offset (`random` 0 gives the earliest, 0.5 the exact point, 1 the latest),
 * and never outside the validity period. A lifetime of zero or less gives
 * `notBefore` (renew at once).
 *
 * @param fraction share of the lifetime after which to renew, in (0, 1)
 * @param jitterFraction spread of the renewal point, in [0, 1)
 * @param random a uniform random number in [0, 1], e.g. `Math.random()`
 * @throws SigilError `ERR_INVALID_ARGUMENT` (`rotation: fraction 1 is outside …`)
 *
 * @example
 * ```ts
 * renewAt(issued, expires, 0.5, 0.1, Math.random()); // between 45% and 55% of the lifetime
 * ```
 */
export function renewAt(notBefore: Date, notAfter: Date, fraction: number, jitterFraction: number, random: number): Date {
  if (!Number.isFinite(fraction) || fraction <= 0 || fraction >= 1) throw invalid(`fraction ${fraction} is outside (0, 1)`);
  checkFraction("jitter fraction", jitterFraction, 0, 1, false);
  checkFraction("random", random, 0, 1, true);
  const start = notBefore.getTime();
  const lifetime = notAfter.getTime() - start;
  if (!(lifetime > 0)) return new Date(start);
  const offset = fraction * lifetime;
  const jittered = offset + offset * jitterFraction * (2 * random - 1);
  return new Date(start + Math.min(lifetime, Math.max(0, Math.round(jittered))));
}

/**
 * True once at least `fraction` of the lifetime from `notBefore` to
 * `notAfter` has passed at `now` (no jitter), or the SVID has expired. The JWT
 * cache uses it with 0.5: a token is reused while more than half its lifetime
 * remains.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` for a fraction outside (0, 1)
 */
export function shouldRenew(now: Date, notBefore: Date, notAfter: Date, fraction: number): boolean {
  if (!Number.isFinite(fraction) || fraction <= 0 || fraction >= 1) throw invalid(`fraction ${fraction} is outside (0, 1)`);
  const t = now.getTime();
  if (t >= notAfter.getTime()) return true;
  const lifetime = notAfter.getTime() - notBefore.getTime();
  if (!(lifetime > 0)) return true;
  return t >= notBefore.getTime() + fraction * lifetime;
}
