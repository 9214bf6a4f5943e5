/**
 * Join tokens: single-use, expiring bearer credentials for the `join_token`
 * node attestor.
 */

/** What a caller gives to create a join token. */
export interface JoinTokenInput {
  /** 1–256 of `A-Z a-z 0-9 . _ -` (the token becomes a SPIFFE ID path segment). */
  readonly token: string;
  /** The token is usable while the clock is strictly before this time. */
  readonly expiresAt: Date;
  /** Operator-chosen agent ID; the attestor derives one from the token when absent. */
  readonly agentId?: string;
}

/** What consuming (or peeking at) a token yields. */
export interface ConsumedJoinToken {
  readonly expiresAt: Date;
  readonly agentId?: string;
}
