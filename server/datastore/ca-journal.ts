/**
 * The CA key journal (SPIRE reference §1.4): the state of each key slot of
 * each CA key family, kept in the datastore so a restarted (or stateless)
 * server finds its prepared, active and old keys. Several servers sharing one
 * database each keep their own slots, keyed by server instance name
 * (`serverId`); every server reads the others' records to publish the union
 * of their authorities in the trust bundle.
 */

/** Key family: the X.509 CA or the JWT signing key. */
export type CaKeyKind = "x509" | "jwt";

/**
 * A slot's state: `prepared` (published, not yet signing) → `active` (signing) → `old`.
 * An operator can mark a key `tainted` (still published, never signs again; agents replace
 * what it signed) and then `revoked` (taken out of the bundle everywhere); see docs/incident-response.md.
 */
export type CaSlotStatus = "prepared" | "active" | "old" | "tainted" | "revoked";

/** One slot's journal record. */
export interface CaJournalRecord {
  /** The server instance the slot belongs to (`server.server_id`); empty for records written before servers had names. */
  readonly serverId: string;
  readonly kind: CaKeyKind;
  /** Slot name, e.g. `A` or `B`. */
  readonly slotId: string;
  /** The key manager's ID of the key in the slot. */
  readonly keyId: string;
  readonly status: CaSlotStatus;
  /** SubjectPublicKeyInfo, DER. */
  readonly publicKeyDer: Uint8Array;
  /** The CA certificate (DER); present for `x509` slots only. */
  readonly certDer?: Uint8Array;
  /** Certificates sent after a leaf (this CA and upstream intermediates), DER; empty for `jwt`. */
  readonly chainDers: readonly Uint8Array[];
  /** Roots the CA chains to (itself when self-signed), DER; empty for `jwt`. */
  readonly rootDers: readonly Uint8Array[];
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** When this key was first recorded in the slot (kept across status changes of the same key). */
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

/**
 * What a caller gives to record a slot's state. `certDer` is required for
 * `x509` and refused for `jwt`; omitted chains and roots are empty.
 */
export interface CaJournalInput {
  /** The owning server instance: 0-64 characters of A-Z a-z 0-9 . _ - (default empty). Slots are per (serverId, kind, slotId). */
  readonly serverId?: string | undefined;
  readonly kind: CaKeyKind;
  readonly slotId: string;
  readonly keyId: string;
  readonly status: CaSlotStatus;
  readonly publicKeyDer: Uint8Array;
  readonly certDer?: Uint8Array | null | undefined;
  readonly chainDers?: readonly Uint8Array[] | undefined;
  readonly rootDers?: readonly Uint8Array[] | undefined;
  readonly notBefore: Date;
  readonly notAfter: Date;
}
