/**
 * Retry policy of the Workload API watchers (WAPI-4, WEP-15..18), as pure
 * functions so the policy is table-tested without timers.
 */
import { status } from "@grpc/grpc-js";

/** Exponential backoff between failed stream attempts. */
export interface BackoffPolicy {
  /** Delay after the first failure in a row, in ms. */
  readonly initialDelayMs: number;
  /** Upper bound of the delay, in ms. */
  readonly maxDelayMs: number;
  /** Factor applied per further failure (≥ 1). */
  readonly multiplier: number;
}

/** Default policy: 1 s doubling to 30 s, like go-spiffe's. */
export const DEFAULT_BACKOFF: BackoffPolicy = Object.freeze({ initialDelayMs: 1000, maxDelayMs: 30_000, multiplier: 2 });

/**
 * Delay before the next attempt after `failures` consecutive failed attempts
 * (attempts that delivered no message). Zero failures means "the stream worked
 * and then ended": reconnect at once (WAPI-4).
 */
export function backoffDelay(policy: BackoffPolicy, failures: number): number {
  if (failures <= 0) return 0;
  const delay = policy.initialDelayMs * Math.pow(Math.max(1, policy.multiplier), failures - 1);
  return Math.min(policy.maxDelayMs, delay);
}

/** What a watcher does after its stream ended with a status. */
export type WatchAction = "retry" | "stop";

/**
 * InvalidArgument (WEP-15) and Unimplemented (WEP-18) are reported and never
 * retried; everything else, including Unavailable (WEP-16), PermissionDenied
 * (WEP-17) and a normal end of stream (WAPI-4), is retried.
 */
export function watchActionForStatus(code: status): WatchAction {
  return code === status.INVALID_ARGUMENT || code === status.UNIMPLEMENTED ? "stop" : "retry";
}
