/**
 * Registration entry records as the datastore stores and returns them
 * (SPIRE reference §5), and the shapes used to create, update and list them.
 */
import type { Selector } from "../../common/selector.js";
import type { SigilError } from "../../spiffe/errors.js";
import type { PageRequest } from "./page.js";
import type { FederatesWithFilter, SelectorFilter } from "./set-filter.js";

/** A stored registration entry. Returned objects are fresh copies the caller may keep. */
export interface RegistrationEntry {
  /** Unique, URL-safe ID: generated, or chosen by the operator at creation. */
  readonly id: string;
  /** The identity issued, canonical `spiffe://` form. */
  readonly spiffeId: string;
  /** Who may obtain it: an agent ID, a node-alias ID, or the server's ID for node aliases. */
  readonly parentId: string;
  /** Never empty; canonical order (type, then value), no duplicates. */
  readonly selectors: readonly Selector[];
  /** X509-SVID TTL in seconds; 0 means the server default. */
  readonly x509SvidTtl: number;
  /** JWT-SVID TTL in seconds; 0 means the server default. */
  readonly jwtSvidTtl: number;
  /** DNS SANs in the order given (the first may become the CN), without duplicates. */
  readonly dnsNames: readonly string[];
  /** Bare names of foreign trust domains whose bundles go with the SVID, sorted. */
  readonly federatesWith: readonly string[];
  /** Holder may call admin APIs. */
  readonly admin: boolean;
  /** Holder is a downstream server. */
  readonly downstream: boolean;
  /** Operator label returned through the Workload API; `""` when none. */
  readonly hint: string;
  /** When the entry is to be pruned; `null` for never. Data management, not a security control. */
  readonly expiresAt: Date | null;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  /** 0 at creation, incremented by every update. */
  readonly revision: number;
}

/** What a caller gives to create an entry. Omitted optional fields take their zero value. */
export interface EntryInput {
  /** Operator-chosen ID (1–255 of `A-Z a-z 0-9 . _ ~ -`); generated when omitted. */
  readonly id?: string;
  readonly spiffeId: string;
  readonly parentId: string;
  /** At least one. Duplicates are dropped. */
  readonly selectors: readonly Selector[];
  readonly x509SvidTtl?: number;
  readonly jwtSvidTtl?: number;
  readonly dnsNames?: readonly string[];
  /** Bare trust-domain names; each must have a stored bundle. */
  readonly federatesWith?: readonly string[];
  readonly admin?: boolean;
  readonly downstream?: boolean;
  readonly hint?: string;
  readonly expiresAt?: Date | null;
}

/** Entry fields an update may change (every {@link EntryInput} field but `id`). */
export type EntryField =
  | "spiffeId"
  | "parentId"
  | "selectors"
  | "x509SvidTtl"
  | "jwtSvidTtl"
  | "dnsNames"
  | "federatesWith"
  | "admin"
  | "downstream"
  | "hint"
  | "expiresAt";

/** Every {@link EntryField}, in declaration order. */
export const ENTRY_FIELDS: readonly EntryField[] = [
  "spiffeId",
  "parentId",
  "selectors",
  "x509SvidTtl",
  "jwtSvidTtl",
  "dnsNames",
  "federatesWith",
  "admin",
  "downstream",
  "hint",
  "expiresAt",
];

/** New values for an update; which of them apply is decided by the field mask. */
export type EntryChanges = Partial<Omit<EntryInput, "id">>;

/** Entry list filter; every given condition must hold. */
export interface EntryFilter {
  readonly spiffeId?: string;
  readonly parentId?: string;
  readonly selectors?: SelectorFilter;
  readonly federatesWith?: FederatesWithFilter;
  readonly hint?: string;
  readonly downstream?: boolean;
}

/** Arguments of `Datastore.listEntries`. */
export interface ListEntriesRequest extends PageRequest {
  readonly filter?: EntryFilter;
}

/** One item's outcome in a batch create: the entry, or the error that refused it. */
export type BatchItemResult<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly error: SigilError };
