/**
 * The agent's real {@link AgentCache}, filled the way a sync round fills it
 * (entries, own bundle, one X509-SVID per entry, marked synced), for endpoint
 * tests whose requirement lives in the cache itself: which entries match a
 * caller's selectors, and in which order (WAPI-3, WAPI-15, WAPI-39).
 * FakeWorkloadCache re-implements both, so a test against it cannot notice
 * when the product gets them wrong.
 */
import { AgentCache } from "../../agent/cache/agent-cache.js";
import type { CachedEntry } from "../../agent/cache/types.js";
import { systemClock } from "../../common/clock.js";
import { parseSelector } from "../../common/selector.js";
import type { FakeIdentityInit, FakeTrustDomain } from "../fakes/fake-workload-cache.js";

/**
 * An AgentCache of `own`'s trust domain holding `identities`, given to it in
 * this order (a test of ordering should list them in an order the answer must
 * not follow). Defaults as FakeWorkloadCache: entry IDs `entry-<n>`, creation
 * times increasing with position. SVIDs and JWT-SVIDs are signed by `own`.
 */
export function syncedAgentCache(own: FakeTrustDomain, identities: readonly FakeIdentityInit[]): AgentCache {
  const entries: CachedEntry[] = identities.map((init, i) => ({
    id: init.entryId ?? `entry-${i + 1}`,
    spiffeId: init.spiffeId,
    selectors: init.selectors.map(parseSelector),
    federatesWith: [...(init.federatesWith ?? [])],
    hint: init.hint ?? "",
    createdAt: init.createdAt ?? new Date(Date.UTC(2030, 0, 1) + (i + 1) * 1000),
    revision: 1,
    jwtSvidTtlSeconds: 300,
  }));
  const cache = new AgentCache({
    trustDomain: own.trustDomain,
    clock: systemClock,
    mintJwtSvid: async (entryId, audience) => {
      const entry = entries.find((e) => e.id === entryId);
      if (entry === undefined) throw new Error(`syncedAgentCache: no entry ${entryId}`);
      const issuedAt = new Date();
      return { spiffeId: entry.spiffeId, token: own.signJwt(entry.spiffeId, audience), issuedAt, expiresAt: new Date(issuedAt.getTime() + 300_000) };
    },
  });
  const svids = new Map(entries.map((e) => {
    const svid = own.issueX509Svid(e.spiffeId);
    return [e.id, { svid, entryRevision: e.revision, renewAt: svid.notAfter }] as const;
  }));
  cache.update({ entries, bundles: [own.bundle()], svids, synced: true });
  return cache;
}
