/**
 * Server half of the `join_token` node attestor. A join token is the one bearer
 * credential Sigil accepts: single-use and expiring. The attestor only checks
 * it (a read) and names it in its result; node attestation spends it in the
 * transaction that creates the agent record, so an attestation that fails
 * after this check (signing, a datastore error) leaves the token usable, and
 * of two agents racing with one token exactly one gets a record.
 *
 * The agent's ID is the operator-chosen ID stored with the token, or
 * `spiffe://<td>/spire/agent/join_token/<token>` as in SPIRE.
 */
import { AGENT_PATH_PREFIX, agentSpiffeId, isAgentId } from "../../../common/reserved-ids.js";
import { isSigilError, SigilError } from "../../../spiffe/errors.js";
import { parseSpiffeId, type TrustDomain } from "../../../spiffe/id.js";
import type { NodeAttestationResult, ServerNodeAttestor } from "../types.js";

/** The plugin name. */
export const JOIN_TOKEN_ATTESTOR = "join_token";

/** Longest token accepted; tokens become a path segment of the agent ID. */
export const MAX_JOIN_TOKEN_LENGTH = 256;
const TOKEN_RE = /^[A-Za-z0-9._-]+$/;

/** What the plugin needs from the datastore. */
export interface JoinTokenStore {
  /**
   * Returns the token without spending it; throws ERR_NOT_FOUND when unknown
   * or already used and ERR_PERMISSION_DENIED (expired) when expired.
   */
  peekJoinToken(token: string): Promise<{ readonly agentId?: string | undefined }>;
}

/**
 * A datastore refusal of a join token (ERR_NOT_FOUND: unknown or used;
 * ERR_PERMISSION_DENIED: expired), whether checking or spending it, as the
 * denied attestation the agent is told about (`join_token: …`); any other
 * error unchanged.
 */
export function joinTokenRefusal(e: unknown): unknown {
  // Any refusal of the credential is a denied attestation, whatever the store's reason.
  if (isSigilError(e) && (e.code === "ERR_NOT_FOUND" || e.code === "ERR_PERMISSION_DENIED")) {
    return new SigilError("ERR_PERMISSION_DENIED", `join_token: ${e.message.replace(/^datastore: /, "")}`, { cause: e });
  }
  return e;
}

/** Checks a join token's syntax (it becomes a SPIFFE ID path segment). */
export function checkJoinTokenSyntax(token: string): void {
  if (token.length === 0) throw new SigilError("ERR_INVALID_ARGUMENT", "join_token: token is empty");
  if (token.length > MAX_JOIN_TOKEN_LENGTH) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `join_token: token is longer than ${MAX_JOIN_TOKEN_LENGTH} characters`);
  }
  if (!TOKEN_RE.test(token)) {
    throw new SigilError("ERR_INVALID_ARGUMENT", "join_token: token may contain only A-Z a-z 0-9 . _ -");
  }
}

/** The default agent ID for a token. */
export function joinTokenAgentId(td: TrustDomain, token: string): string {
  return agentSpiffeId(td, `join_token/${token}`).toString();
}

/** Creates the server half. */
export function createJoinTokenServerAttestor(deps: { trustDomain: TrustDomain; store: JoinTokenStore }): ServerNodeAttestor {
  return {
    name: JOIN_TOKEN_ATTESTOR,
    async attest(payload: Uint8Array): Promise<NodeAttestationResult> {
      const token = Buffer.from(payload).toString("utf8");
      checkJoinTokenSyntax(token);
      let record: { readonly agentId?: string | undefined };
      try {
        record = await deps.store.peekJoinToken(token);
      } catch (e) {
        throw joinTokenRefusal(e);
      }
      const agentId = parseSpiffeId(record.agentId ?? joinTokenAgentId(deps.trustDomain, token));
      if (!agentId.memberOf(deps.trustDomain)) {
        throw new SigilError("ERR_PERMISSION_DENIED", `join_token: agent ID ${agentId} is not in trust domain ${deps.trustDomain.name}`);
      }
      // A token chosen before agent IDs were confined to the agent namespace must not mint a workload's ID.
      if (!isAgentId(agentId)) throw new SigilError("ERR_PERMISSION_DENIED", `join_token: agent ID ${agentId} is not under ${AGENT_PATH_PREFIX}`);
      return { agentId, selectors: [], canReattest: false, joinToken: token };
    },
  };
}
