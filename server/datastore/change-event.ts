/**
 * The change feed: every write to entries and agents appends an event in the
 * same transaction, so a follower (the in-memory entry index, or another server
 * sharing the database) can apply changes instead of rescanning.
 */

/** The kind of object an event is about. */
export type ChangeKind = "entry" | "agent";

/** What happened to the object. */
export type ChangeOp = "create" | "update" | "delete";

/** One committed change. */
export interface ChangeEvent {
  /** Strictly increasing in commit order. */
  readonly eventId: number;
  readonly kind: ChangeKind;
  /** Entry ID or agent SPIFFE ID. */
  readonly objectId: string;
  readonly op: ChangeOp;
  readonly at: Date;
}

/**
 * Called once per event, in event order, after the transaction that wrote it
 * committed. Only writes made through the same `Datastore` instance are seen;
 * followers of writes by other processes poll `listEvents`.
 */
export type ChangeListener = (event: ChangeEvent) => void;
