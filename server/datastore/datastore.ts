/**
 * The `Datastore` contract: everything the server persists. Every method is
 * async so that network database drivers (PostgreSQL, MySQL) can implement the
 * same interface; the SQLite driver resolves without real waiting.
 *
 * Errors are `SigilError`s with messages starting `datastore: `:
 * `ERR_INVALID_ARGUMENT` (validation; nothing was written), `ERR_NOT_FOUND`,
 * `ERR_ALREADY_EXISTS`, `ERR_PERMISSION_DENIED` (expired join token),
 * `ERR_UNAVAILABLE` (closed; SQLite: the database stayed locked past the busy
 * timeout; PostgreSQL/MySQL: unreachable, a statement past its timeout, or a
 * transaction still conflicting after its retries), `ERR_INTERNAL` (anything
 * else from the database).
 */
import type { AgentChanges, AgentField, AgentFilter, AgentInput, AttestedAgent, ListAgentsRequest } from "./agent.js";
import type { BundleDeleteMode, BundleInput, SetBundleOptions, StoredBundle } from "./bundle.js";
import type { CaJournalInput, CaJournalRecord, CaKeyKind } from "./ca-journal.js";
import type { ChangeEvent, ChangeListener } from "./change-event.js";
import type { FederationRelationship, FederationRelationshipInput, FederationRelationshipWriteOptions } from "./federation-relationship.js";
import type {
  BatchItemResult,
  EntryChanges,
  EntryField,
  EntryFilter,
  EntryInput,
  ListEntriesRequest,
  RegistrationEntry,
} from "./entry.js";
import type { IssuanceInput, IssuanceInventory, IssuanceInventoryRequest, IssuanceRecord, ListIssuancesRequest } from "./issuance.js";
import type { ConsumedJoinToken, JoinTokenInput } from "./join-token.js";
import type { TlogCheckpointRecord, TlogEntryInput, TlogKeyRecord, TlogStoredEntry, WitnessCheckpointRecord } from "./tlog.js";
import type { Page } from "./page.js";

/** The server's persistent store. See the module comment for the error contract. */
export interface Datastore {
  // ── Registration entries ─────────────────────────────────────────────

  /**
   * Creates an entry (revision 0) and its `create` event.
   *
   * @throws `ERR_ALREADY_EXISTS` when the ID is taken, or an entry with the same
   * SPIFFE ID, parent ID and selector set exists (the message names its ID).
   */
  createEntry(input: EntryInput): Promise<RegistrationEntry>;

  /**
   * Creates several entries in one transaction. Each item succeeds or fails on
   * its own (a failed item writes nothing); the successful ones commit.
   * Results are in input order.
   */
  createEntries(inputs: readonly EntryInput[]): Promise<Array<BatchItemResult<RegistrationEntry>>>;

  /** The entry with this ID, or `undefined`. */
  getEntry(id: string): Promise<RegistrationEntry | undefined>;

  /**
   * Changes the fields named in `mask` to their values in `changes` (a masked
   * optional field absent from `changes` is reset to its zero value);
   * increments the revision and appends an `update` event. `mask` defaults to
   * the fields present in `changes`.
   *
   * @throws `ERR_NOT_FOUND`; `ERR_ALREADY_EXISTS` as for create;
   * `ERR_INVALID_ARGUMENT` for an empty mask or invalid values.
   */
  updateEntry(id: string, changes: EntryChanges, mask?: readonly EntryField[]): Promise<RegistrationEntry>;

  /** Deletes an entry, returning it, and appends a `delete` event. @throws `ERR_NOT_FOUND`. */
  deleteEntry(id: string): Promise<RegistrationEntry>;

  /** Lists entries in creation order, filtered and paginated. */
  listEntries(request?: ListEntriesRequest): Promise<Page<RegistrationEntry>>;

  /** Number of entries matching the filter. */
  countEntries(filter?: EntryFilter): Promise<number>;

  /** Deletes entries whose `expiresAt` is before `before` (each with its event); returns how many. */
  pruneEntries(before: Date): Promise<number>;

  // ── Attested agents ──────────────────────────────────────────────────

  /**
   * Records an attested agent and its `create` event. With `input.joinToken`,
   * first spends that token in the same transaction, on the transaction's
   * clock, as {@link Datastore.consumeJoinToken} would: the agent exists if
   * and only if the token was spent, so of concurrent creates spending one
   * token (whatever their agent IDs) exactly one succeeds, and a create that
   * fails leaves the token usable.
   *
   * @throws `ERR_ALREADY_EXISTS`; with a token, `ERR_NOT_FOUND` "join token
   * not found or already used" and `ERR_PERMISSION_DENIED` "join token
   * expired" (no agent is created)
   */
  createAgent(input: AgentInput): Promise<AttestedAgent>;

  /** The agent with this SPIFFE ID, or `undefined`. */
  getAgent(spiffeId: string): Promise<AttestedAgent | undefined>;

  /** Lists agents in creation order, filtered and paginated. */
  listAgents(request?: ListAgentsRequest): Promise<Page<AttestedAgent>>;

  /** Number of agents matching the filter. */
  countAgents(filter?: AgentFilter): Promise<number>;

  /**
   * Changes the masked fields (as {@link Datastore.updateEntry}) and appends an
   * `update` event. @throws `ERR_NOT_FOUND`.
   */
  updateAgent(spiffeId: string, changes: AgentChanges, mask?: readonly AgentField[]): Promise<AttestedAgent>;

  /**
   * Bans an agent: sets `banned`, clears both serial numbers (so no SVID of
   * it renews) and appends an `update` event. @throws `ERR_NOT_FOUND`.
   */
  banAgent(spiffeId: string): Promise<AttestedAgent>;

  /** Deletes (evicts) an agent, returning it, and appends a `delete` event. @throws `ERR_NOT_FOUND`. */
  deleteAgent(spiffeId: string): Promise<AttestedAgent>;

  // ── Join tokens ──────────────────────────────────────────────────────

  /** Stores a join token. @throws `ERR_ALREADY_EXISTS`. */
  createJoinToken(input: JoinTokenInput): Promise<void>;

  /**
   * Deletes and returns the token in one atomic step: of any number of
   * concurrent calls, in this process or others sharing the database, exactly
   * one succeeds. `now` defaults to the datastore's clock.
   *
   * @throws `ERR_NOT_FOUND` "join token not found or already used";
   * `ERR_PERMISSION_DENIED` "join token expired" (an expired token stays until
   * pruned, so it keeps reporting as expired).
   */
  consumeJoinToken(token: string, now?: Date): Promise<ConsumedJoinToken>;

  /**
   * What {@link Datastore.consumeJoinToken} would return or throw, without
   * spending the token (a read: a later spend may still find it used or
   * expired). `now` defaults to the datastore's clock.
   */
  peekJoinToken(token: string, now?: Date): Promise<ConsumedJoinToken>;

  /**
   * True when an unexpired join token would give an agent this SPIFFE ID
   * (its chosen agent ID, or the default `…/spire/agent/join_token/<token>`),
   * so entries can name the agent before it attests.
   */
  hasPendingJoinTokenFor(agentId: string, now?: Date): Promise<boolean>;

  /** Deletes tokens that expired at or before `now`; returns how many. */
  pruneJoinTokens(now: Date): Promise<number>;

  // ── Bundles ──────────────────────────────────────────────────────────

  /** The bundle of this trust domain (bare name), or `undefined`. */
  getBundle(trustDomain: string): Promise<StoredBundle | undefined>;

  /** Every stored bundle, by trust-domain name. */
  listBundles(): Promise<StoredBundle[]>;

  /**
   * Creates or replaces a bundle document atomically.
   *
   * @throws `ERR_INVALID_ARGUMENT` when `expectedSequence` is given and does
   * not match the stored one (the message names both).
   */
  setBundle(input: BundleInput, options?: SetBundleOptions): Promise<StoredBundle>;

  /**
   * Deletes a bundle. With mode `restrict` (default), refuses with
   * `ERR_INVALID_ARGUMENT` while entries federate with the trust domain.
   * @throws `ERR_NOT_FOUND`.
   */
  deleteBundle(trustDomain: string, mode?: BundleDeleteMode): Promise<void>;

  // ── Federation relationships ─────────────────────────────────────────

  /**
   * Creates a relationship (and its initial bundle, when given, in the same
   * transaction). @throws `ERR_ALREADY_EXISTS`; `ERR_INVALID_ARGUMENT`.
   */
  createFederationRelationship(input: FederationRelationshipInput, options?: FederationRelationshipWriteOptions): Promise<FederationRelationship>;

  /**
   * Replaces a relationship's endpoint URL, profile, endpoint ID and source
   * (and stores the initial bundle, when given). @throws `ERR_NOT_FOUND`.
   */
  updateFederationRelationship(input: FederationRelationshipInput, options?: FederationRelationshipWriteOptions): Promise<FederationRelationship>;

  /** Creates or replaces a relationship (the config file's, applied at start). */
  putFederationRelationship(input: FederationRelationshipInput, options?: FederationRelationshipWriteOptions): Promise<FederationRelationship>;

  /** The relationship with this trust domain (bare name), or `undefined`. */
  getFederationRelationship(trustDomain: string): Promise<FederationRelationship | undefined>;

  /** Every relationship, by trust-domain name. */
  listFederationRelationships(): Promise<FederationRelationship[]>;

  /**
   * Ends a relationship: deletes it and the trust domain's stored bundle in one
   * transaction (FED-26). `mode` as for {@link Datastore.deleteBundle}:
   * `restrict` (default) refuses with `ERR_FAILED_PRECONDITION` while entries
   * federate with the trust domain; `dissociate` removes it from them.
   * Returns the deleted relationship. @throws `ERR_NOT_FOUND`.
   */
  deleteFederationRelationship(trustDomain: string, mode?: BundleDeleteMode): Promise<FederationRelationship>;

  // ── CA journal ───────────────────────────────────────────────────────

  /** Creates or replaces the record of the slot (`kind`, `slotId`). */
  upsertCaJournal(input: CaJournalInput): Promise<CaJournalRecord>;

  /** Journal records, by kind then slot; only `kind` when given. */
  listCaJournal(kind?: CaKeyKind): Promise<CaJournalRecord[]>;

  // ── Issuance log ─────────────────────────────────────────────────────

  /**
   * Appends issuance records, all in one transaction: either every record is
   * stored or (on any invalid record or database error) none is. Every record
   * is validated before the write lock is taken; an invalid one fails the call
   * with `ERR_INVALID_ARGUMENT` naming its index. At most
   * 10,000 records (`MAX_ISSUANCE_BATCH`) per call; an empty batch is a no-op.
   * Writes no change events.
   *
   * `logEntries` are appended to the transparency log in the same
   * transaction, at the next contiguous indices (several servers on one
   * database take them in commit order); records may be empty to append
   * entries alone (authority events). Resolves to the log index the first of
   * `logEntries` was given (the rest follow it), or undefined when none were:
   * the log service hashes its own entries without reading them back.
   */
  recordIssuances(records: readonly IssuanceInput[], logEntries?: readonly TlogEntryInput[]): Promise<number | undefined>;

  /**
   * What still chains to one CA key (the inventory of `sigil-server inventory`):
   * its live credentials counted by agent and SPIFFE ID, and the first
   * `limit` of them; see {@link IssuanceInventory} for "live". Uses the
   * `issuance_contexts (ca_key_id)` and `issuances (context_id, not_after)` indexes.
   */
  issuanceInventory(request: IssuanceInventoryRequest): Promise<IssuanceInventory>;

  /**
   * Lists issuance records, newest (most recently recorded) first, filtered
   * and paginated.
   */
  listIssuances(request?: ListIssuancesRequest): Promise<Page<IssuanceRecord>>;

  /** Deletes records whose `notAfter` is before `expiredBefore`; returns how many. */
  pruneIssuances(expiredBefore: Date): Promise<number>;

  // ── Transparency log ─────────────────────────────────────────────────

  /** Number of log entries stored (the next index). */
  tlogSize(): Promise<number>;

  /** Entries `[start, end)` in index order (at most 10,000; fewer when the log is shorter). */
  readTlogEntries(start: number, end: number): Promise<Uint8Array[]>;

  /** The first entry stored under `lookupKey`, or undefined. */
  findTlogEntry(lookupKey: string): Promise<TlogStoredEntry | undefined>;

  /** Stores a checkpoint a server signed. */
  putTlogCheckpoint(checkpoint: TlogCheckpointRecord): Promise<void>;

  /** The largest checkpoint `serverId` stored, or undefined. */
  latestTlogCheckpoint(serverId: string): Promise<TlogCheckpointRecord | undefined>;

  /** Creates or replaces the record of a server's log key (`serverId`, `keyId`). */
  putTlogKey(key: TlogKeyRecord): Promise<void>;

  /** Every server's log keys, oldest first. */
  listTlogKeys(): Promise<TlogKeyRecord[]>;

  /** The latest checkpoint of log `origin` this server cosigned as a witness, or undefined. */
  latestWitnessCheckpoint(origin: string): Promise<WitnessCheckpointRecord | undefined>;

  /**
   * Stores `next` as the latest witnessed checkpoint of its origin, only if
   * the stored one is still `previous` (same size and root; undefined: none
   * stored): the check and the write are one atomic step, so two concurrent
   * submissions can never roll the witness back. Returns false, storing
   * nothing, when the stored state is not `previous`.
   */
  advanceWitnessCheckpoint(next: WitnessCheckpointRecord, previous: { readonly treeSize: number; readonly rootHash: Uint8Array } | undefined): Promise<boolean>;

  // ── Change feed ──────────────────────────────────────────────────────

  /** Up to `limit` (1 … 10,000) events with `eventId > afterEventId`, in order. */
  listEvents(afterEventId: number, limit: number): Promise<ChangeEvent[]>;

  /**
   * The highest event ID written so far (0 when none). A follower reads this
   * before its initial full listing, then applies events after it: replays
   * are idempotent (create/update = upsert the current object).
   */
  lastEventId(): Promise<number>;

  /** Deletes events older than `before`; returns how many. */
  pruneEvents(before: Date): Promise<number>;

  /**
   * Registers a listener for changes committed through this instance; returns
   * the function that unregisters it. A listener that throws does not affect
   * the write or other listeners (the error goes to `onListenerError`).
   */
  subscribe(listener: ChangeListener): () => void;

  /**
   * Engines that can announce commits (PostgreSQL: `LISTEN`/`NOTIFY` on a
   * dedicated connection) call `wake` soon after any server commits a
   * change, with the event ID when known; the cross-server change feed then
   * reads at once instead of waiting for its next poll. Reconnects on its own
   * (waking once after a reconnect). Resolves to the function that stops
   * listening, or `undefined` when the engine cannot announce commits
   * (MySQL, SQLite; the method may also be absent): poll instead.
   */
  watchEvents?(wake: (eventId: number | undefined) => void): Promise<(() => Promise<void>) | undefined>;

  /** Closes the database. Later calls fail with `ERR_UNAVAILABLE`. Idempotent. */
  close(): Promise<void>;
}
