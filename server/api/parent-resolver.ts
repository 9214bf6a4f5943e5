/**
 * The datastore-backed {@link ParentResolver} the admin API validates entries
 * with. A parent ID is known when it is:
 *
 * 1. an attested agent (`getAgent`);
 * 2. the SPIFFE ID of an entry (a node alias, or a nested workload);
 * 3. the agent ID an unused, unexpired join token will give: the operator's
 *    chosen ID or `spiffe://<td>/spire/agent/join_token/<token>`. This is what
 *    lets an operator register workloads for a node before it attests;
 * 4. an ID a configured NodeAttestor says it gives agents
 *    (`ServerNodeAttestor.issuesAgentId`: `k8s_psat` for
 *    `/spire/agent/k8s_psat/<configured cluster>/<node UID>`), so the
 *    registration controller can parent a pod's entry to its node's agent
 *    before that agent has attested.
 *
 * The datastore stores join tokens as hashes and has no query by agent ID, so
 * case 3 is answered from the tokens this server process created
 * ({@link DatastoreParentResolver.rememberJoinToken}). Tokens created by another
 * server sharing the database, or before a restart, are not seen; such an
 * entry is refused with NOT_FOUND until the agent attests.
 */
import type { Datastore } from "../datastore/index.js";
import type { ParentResolver } from "../registration/entry-validation.js";

/** Dependencies of {@link DatastoreParentResolver}. */
export interface ParentResolverDeps {
  readonly datastore: Pick<Datastore, "getAgent" | "listEntries" | "hasPendingJoinTokenFor">;
  readonly now: () => Date;
  /** Whether a configured NodeAttestor gives agents this ID (case 4); omitted: none does. */
  readonly issuesAgentId?: ((id: string) => boolean) | undefined;
}

/** Most pending join tokens remembered; beyond it the soonest-expiring ones are forgotten. */
export const MAX_REMEMBERED_JOIN_TOKENS = 100_000;

/** A {@link ParentResolver} over the datastore plus the join tokens this process issued. */
export class DatastoreParentResolver implements ParentResolver {
  readonly #deps: ParentResolverDeps;
  /** Agent ID → latest expiry of a pending token that yields it. */
  readonly #pendingTokenAgents = new Map<string, number>();

  constructor(deps: ParentResolverDeps) {
    this.#deps = deps;
  }

  /**
   * Records that a join token yielding `agentId` is usable until `expiresAt`.
   * Call it after the token is stored. Pass the agent ID, never the token.
   */
  rememberJoinToken(agentId: string, expiresAt: Date): void {
    const prev = this.#pendingTokenAgents.get(agentId) ?? 0;
    this.#pendingTokenAgents.set(agentId, Math.max(prev, expiresAt.getTime()));
    if (this.#pendingTokenAgents.size > MAX_REMEMBERED_JOIN_TOKENS) this.#prune(true);
  }

  /** {@inheritDoc ParentResolver.parentExists} */
  async parentExists(id: string): Promise<boolean> {
    if (this.#pendingToken(id)) return true;
    if (this.#deps.issuesAgentId?.(id) === true) return true;
    if ((await this.#deps.datastore.getAgent(id)) !== undefined) return true;
    if (await this.#deps.datastore.hasPendingJoinTokenFor(id, this.#deps.now())) return true;
    const page = await this.#deps.datastore.listEntries({ filter: { spiffeId: id }, pageSize: 1 });
    return page.items.length > 0;
  }

  #pendingToken(id: string): boolean {
    const expiry = this.#pendingTokenAgents.get(id);
    if (expiry === undefined) return false;
    if (expiry > this.#deps.now().getTime()) return true;
    this.#pendingTokenAgents.delete(id);
    return false;
  }

  /** Drops expired tokens; with `overflow`, also the soonest-expiring ones down to the limit. */
  #prune(overflow: boolean): void {
    const now = this.#deps.now().getTime();
    for (const [id, expiry] of this.#pendingTokenAgents) if (expiry <= now) this.#pendingTokenAgents.delete(id);
    if (!overflow || this.#pendingTokenAgents.size <= MAX_REMEMBERED_JOIN_TOKENS) return;
    const byExpiry = [...this.#pendingTokenAgents].sort((a, b) => a[1] - b[1]);
    for (const [id] of byExpiry.slice(0, this.#pendingTokenAgents.size - MAX_REMEMBERED_JOIN_TOKENS)) this.#pendingTokenAgents.delete(id);
  }
}

/** Creates the admin API's parent resolver. */
export function createParentResolver(deps: ParentResolverDeps): DatastoreParentResolver {
  return new DatastoreParentResolver(deps);
}
