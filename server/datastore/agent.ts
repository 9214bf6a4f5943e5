/**
 * Attested agent (node) records: which node attested, how, with which node
 * selectors, and which agent SVID serial numbers are current.
 */
import type { Selector } from "../../common/selector.js";
import type { PageRequest } from "./page.js";
import type { SelectorFilter } from "./set-filter.js";

/** A stored attested agent. */
export interface AttestedAgent {
  /** The agent's SPIFFE ID: the record's key. */
  readonly spiffeId: string;
  /** Node attestor that attested it, e.g. `join_token`. */
  readonly attestationType: string;
  /** Node selectors from attestation, canonical order; may be empty. */
  readonly selectors: readonly Selector[];
  /** Serial number of the agent's current SVID; `""` once banned. */
  readonly certSerial: string;
  readonly certNotAfter: Date;
  /** Serial of a renewed SVID the agent has not used yet (renewal in flight); `null` when none. */
  readonly newCertSerial: string | null;
  readonly newCertNotAfter: Date | null;
  /** Whether the node may attest again under the same ID. */
  readonly canReattest: boolean;
  /** A banned agent must not renew or re-attest until the record is deleted. */
  readonly banned: boolean;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

/** What a caller gives to record a newly attested agent. */
export interface AgentInput {
  readonly spiffeId: string;
  readonly attestationType: string;
  readonly selectors?: readonly Selector[];
  readonly certSerial: string;
  readonly certNotAfter: Date;
  readonly newCertSerial?: string | null;
  readonly newCertNotAfter?: Date | null;
  readonly canReattest?: boolean;
  /**
   * A join token to spend in the transaction that creates the record (the
   * attestation's credential): a token already used, unknown or expired
   * refuses the create, and a create that fails for any reason leaves it
   * unspent. Create only.
   */
  readonly joinToken?: string | undefined;
}

/** Agent fields an update may change. */
export type AgentField =
  | "attestationType"
  | "selectors"
  | "certSerial"
  | "certNotAfter"
  | "newCertSerial"
  | "newCertNotAfter"
  | "canReattest"
  | "banned";

/** Every {@link AgentField}. */
export const AGENT_FIELDS: readonly AgentField[] = [
  "attestationType",
  "selectors",
  "certSerial",
  "certNotAfter",
  "newCertSerial",
  "newCertNotAfter",
  "canReattest",
  "banned",
];

/** New values for an agent update; which of them apply is decided by the field mask. */
export type AgentChanges = Partial<Omit<AgentInput, "spiffeId" | "joinToken">> & { readonly banned?: boolean };

/** Agent list filter; every given condition must hold. */
export interface AgentFilter {
  readonly attestationType?: string;
  readonly banned?: boolean;
  readonly canReattest?: boolean;
  /** Only agents whose current SVID expires strictly before this time. */
  readonly expiresBefore?: Date;
  readonly selectors?: SelectorFilter;
}

/** Arguments of `Datastore.listAgents`. */
export interface ListAgentsRequest extends PageRequest {
  readonly filter?: AgentFilter;
}
