/**
 * Honouring server retry hints ("pushback"). A rate-limited server answers
 * ResourceExhausted and says how long to wait (read by `retryAfterMsOf`: the
 * `grpc-retry-pushback-ms` trailer, or `retry after <n>ms` in the status
 * text). The agent then calls that API again no sooner than the hint, plus
 * jitter so agents told the same thing do not come back in lockstep.
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import { retryAfterMsOf } from "../../common/rpc/status.js";
import { SigilError } from "../../spiffe/errors.js";
import { MAX_SYNC_BACKOFF_MS } from "../rotation/backoff.js";

/** The longest wait a hint can impose: a bad hint must not park the agent for hours. */
export const MAX_RETRY_HINT_MS = MAX_SYNC_BACKOFF_MS;

/** Jitter added on top of a hint, as a fraction of it (0.2: up to 20% longer, never shorter). */
export const PUSHBACK_JITTER = 0.2;

/**
 * How long to wait for a hint: at least the hint (capped at
 * {@link MAX_RETRY_HINT_MS}), plus up to {@link PUSHBACK_JITTER} of it. Pure.
 *
 * @param random uniform in [0, 1]
 */
export function pushbackDelayMs(hintMs: number, random: number): number {
  const base = Math.ceil(Math.min(Math.max(0, hintMs), MAX_RETRY_HINT_MS));
  return base + Math.round(base * PUSHBACK_JITTER * Math.min(1, Math.max(0, random)));
}

/** Options of {@link ServerPushback}. */
export interface ServerPushbackOptions {
  readonly clock: Clock;
  /** Uniform random numbers in [0, 1] (default `Math.random`). */
  readonly random?: () => number;
  /** What is held back, for messages (`sync`, `NewJWTSVID`). */
  readonly what: string;
}

/**
 * Remembers until when the server asked one kind of call to wait, on an
 * injected clock: {@link ServerPushback.run} refuses locally until then
 * instead of calling the server again.
 */
export class ServerPushback {
  readonly #o: ServerPushbackOptions;
  #untilMs = 0;

  constructor(options: ServerPushbackOptions) {
    this.#o = options;
  }

  /** Until when calls wait; undefined when they need not. */
  get until(): Date | undefined {
    return this.remainingMs() > 0 ? new Date(this.#untilMs) : undefined;
  }

  /** Milliseconds left to wait (0 when calls may go ahead). */
  remainingMs(): number {
    return Math.max(0, this.#untilMs - this.#o.clock.now().getTime());
  }

  /** The error for a call held back now, or undefined when calls may go ahead. */
  waiting(): SigilError | undefined {
    const ms = this.remainingMs();
    if (ms === 0) return undefined;
    return new SigilError("ERR_RESOURCE_EXHAUSTED", `${this.#o.what}: the server is rate limiting this agent; waiting until ${new Date(this.#untilMs).toISOString()} as it asked`, { retryAfterMs: ms });
  }

  /**
   * Records the hint an error carries (along its `cause` chain); returns the
   * jittered wait it imposes, or undefined when it carries none.
   */
  note(error: unknown): number | undefined {
    const hint = retryAfterMsOf(error);
    return hint === undefined ? undefined : this.noteHint(hint);
  }

  /** Records a hint in milliseconds; returns the jittered wait. A later deadline never moves earlier. */
  noteHint(hintMs: number): number {
    const wait = pushbackDelayMs(hintMs, (this.#o.random ?? Math.random)());
    this.#untilMs = Math.max(this.#untilMs, this.#o.clock.now().getTime() + wait);
    return wait;
  }

  /**
   * Runs `call` unless the server asked to wait; records the hint of a failure.
   *
   * @throws SigilError `ERR_RESOURCE_EXHAUSTED` with `retryAfterMs` while
   *   waiting (the server is not called) and when `call` failed with a hint
   *   (its error as `cause`); else what `call` throws
   */
  async run<T>(call: () => Promise<T>): Promise<T> {
    const waiting = this.waiting();
    if (waiting) throw waiting;
    try {
      return await call();
    } catch (e) {
      if (this.note(e) === undefined) throw e;
      const ms = this.remainingMs();
      throw new SigilError("ERR_RESOURCE_EXHAUSTED", `${this.#o.what}: the server is rate limiting this agent; retry after ${ms}ms`, { cause: e, retryAfterMs: ms });
    }
  }
}

/** Options of {@link retryOnPushback}. */
export interface RetryOnPushbackOptions {
  /** Waits `ms` (default: a timer). */
  readonly sleep?: (ms: number) => Promise<void>;
  /** Uniform random numbers in [0, 1] (default `Math.random`). */
  readonly random?: () => number;
  readonly log?: Logger | undefined;
  /** What is retried, for the log (`node attestation`). */
  readonly what: string;
}

const timerSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs `call`, and again after the server's hint (jittered) for as long as it
 * fails with one: a rate limit passes, so the agent waits instead of giving
 * up (or hammering). Any failure without a hint is thrown at once.
 */
export async function retryOnPushback<T>(call: () => Promise<T>, options: RetryOnPushbackOptions): Promise<T> {
  const sleep = options.sleep ?? timerSleep;
  for (;;) {
    try {
      return await call();
    } catch (e) {
      const hint = retryAfterMsOf(e);
      if (hint === undefined) throw e;
      const wait = pushbackDelayMs(hint, (options.random ?? Math.random)());
      options.log?.warn({ err: e, retry_after_ms: hint, next_attempt_ms: wait }, `${options.what}: the server is rate limiting this agent; trying again in ${wait} ms`);
      await sleep(wait);
    }
  }
}
