/**
 * Injected time. Code that needs "now" takes a {@link Clock} instead of calling
 * `Date.now()`, so tests can move time by hand instead of sleeping.
 */

/** A source of the current time. */
export interface Clock {
  /** The current time. Each call returns a fresh `Date` the caller may keep. */
  now(): Date;
}

/** The real wall clock. */
export const systemClock: Clock = {
  now: () => new Date(),
};

/**
 * A clock that only moves when told to; for tests.
 *
 * @example
 * ```ts
 * const clock = new ManualClock(new Date("2030-01-01T00:00:00Z"));
 * clock.advance(60_000); // one minute later
 * ```
 */
export class ManualClock implements Clock {
  #ms: number;

  /** @param start the initial time (default: the Unix epoch). */
  constructor(start: Date = new Date(0)) {
    this.#ms = start.getTime();
  }

  /** The current (manual) time. */
  now(): Date {
    return new Date(this.#ms);
  }

  /** Sets the time. Moving backwards is allowed: tests of clock skew need it. */
  set(t: Date): void {
    this.#ms = t.getTime();
  }

  /** Moves the time forward (or backward, when negative) by `ms` milliseconds. */
  advance(ms: number): void {
    this.#ms += ms;
  }
}
