/**
 * The SPIFFE ID namespace Sigil keeps for itself, as SPIRE does
 * (`pkg/common/idutil`): `/spire` and every path under it belong to the server
 * (`/spire/server`) and the agents (`/spire/agent/…`). No registration entry or
 * admin-minted SVID may carry such an ID, so no workload can hold a credential
 * an agent would take for the server's, or the server for an agent's.
 */
import { SigilError } from "../spiffe/errors.js";
import { spiffeIdFromPath, type SpiffeId, type TrustDomain } from "../spiffe/id.js";

/** The reserved path: it and everything under it belong to the server and agents. Every other form below derives from it. */
export const RESERVED_PATH = "/spire";
/** Path of the server's own SPIFFE ID. */
export const SERVER_PATH = `${RESERVED_PATH}/server`;
/** What every agent ID's path starts with. */
export const AGENT_PATH_PREFIX = `${RESERVED_PATH}/agent/`;

/** The server's SPIFFE ID, `spiffe://<td>/spire/server`: the only ID an agent accepts as the server. */
export function serverSpiffeId(td: TrustDomain): SpiffeId {
  return spiffeIdFromPath(td, SERVER_PATH);
}

/**
 * An agent ID, `spiffe://<td>/spire/agent/<suffix>`, e.g. suffix `join_token/<token>`.
 *
 * @throws SigilError `ERR_SPIFFE_ID_INVALID` when the suffix does not make a valid path
 */
export function agentSpiffeId(td: TrustDomain, suffix: string): SpiffeId {
  return spiffeIdFromPath(td, AGENT_PATH_PREFIX + suffix);
}

/** True for `/spire` itself and every path under it (not for `/spirex` or `/a/spire`). */
export function isReservedId(id: SpiffeId): boolean {
  return id.path === RESERVED_PATH || id.path.startsWith(`${RESERVED_PATH}/`);
}

/** True for an ID under `/spire/agent/`. */
export function isAgentId(id: SpiffeId): boolean {
  return id.path.startsWith(AGENT_PATH_PREFIX);
}

/**
 * Refuses an ID of the reserved namespace as the identity of an entry or a minted SVID.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT`; callers put the field name in front
 */
export function checkNotReserved(id: SpiffeId): void {
  if (isReservedId(id)) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `${id} is in the reserved namespace ${RESERVED_PATH}, which belongs to the server and agents`);
  }
}

/**
 * Refuses an ID outside `/spire/agent/` as an agent's ID (a join token's chosen ID).
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT`; callers put the field name in front
 */
export function checkAgentId(id: SpiffeId): void {
  if (!isAgentId(id)) throw new SigilError("ERR_INVALID_ARGUMENT", `${id} is not an agent ID: agent IDs are under ${AGENT_PATH_PREFIX}`);
}
