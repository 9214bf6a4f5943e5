/**
 * The change feed: every write to entries, agents and bundles appends an
 * event in the same transaction, so a follower (the in-memory entry index, or another server
 * sharing the database) can apply changes instead of rescanning.
 */

/** The kind of object an event is about. */
export type ChangeKind = "entry" | "agent" | "bundle";

/** What happened to the object. */
export type ChangeOp = "create" | "update" | "delete";

/** One committed change. */
export interface ChangeEvent {
  /** Strictly increasing in commit order. */
  readonly eventId: number;
  readonly kind: ChangeKind;
  /** Entry ID, agent SPIFFE ID, or a bundle's trust-domain name. */
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
