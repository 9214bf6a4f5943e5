/**
 * Pick-up reporting on the agent: the first time each SVID is handed to a
 * workload is recorded once, bounded, sent with the next sync and forgotten
 * only when that sync succeeds; the Workload API records what it sends and
 * nothing for bundle-only streams.
 */
import { createHash, X509Certificate } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { AgentCache } from "../../../../agent/cache/agent-cache.js";
import { DeliveryTracker, type PendingDelivery } from "../../../../agent/cache/deliveries.js";
import type { CachedX509Svid } from "../../../../agent/cache/types.js";
import type { ServerClient, SyncResult } from "../../../../agent/sync/server-client.js";
import { SyncLoop } from "../../../../agent/sync/sync-loop.js";
import { ManualClock } from "../../../../common/clock.js";
import { Metrics } from "../../../../common/metrics.js";
import { SigilError } from "../../../../spiffe/errors.js";
import { createWorkloadApiClient } from "../../../../spiffe/workloadapi/client.js";
import { FakeTrustDomain, FakeWorkloadCache, ownUidSelector, startTestAgentEndpoint, type TestAgentEndpoint } from "../../../fakes/fake-workload-cache.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const own = FakeTrustDomain.create("example.org");

const serialOf = (svid: CachedX509Svid): string => new X509Certificate(svid.chain[0] as Uint8Array).serialNumber.toLowerCase().replace(/^0+/, "");
const credentials = (pending: readonly PendingDelivery[]): string[] => pending.map((p) => ("serial" in p.credential ? p.credential.serial : `jwt:${p.credential.jwtSha256}`));

describe("delivery tracker", () => {
  it("records each SVID once, at its first delivery", () => {
    const clock = new ManualClock(T0);
    const tracker = new DeliveryTracker({ clock });
    const a = own.issueX509Svid("spiffe://example.org/a");
    const b = own.issueX509Svid("spiffe://example.org/b");
    tracker.x509([a]);
    clock.advance(5_000);
    tracker.x509([a, b]);
    tracker.jwt("t.o.k");
    tracker.jwt("t.o.k");
    const pending = tracker.pending();
    expect(credentials(pending)).toEqual([serialOf(a), serialOf(b), `jwt:${createHash("sha256").update("t.o.k").digest("hex")}`]);
    expect(pending.map((p) => p.deliveredAt.getTime() - T0.getTime())).toEqual([0, 5_000, 5_000]);
  });

  it("keeps deliveries until acknowledged, never reports an acknowledged one again, and takes at most the asked number", () => {
    const tracker = new DeliveryTracker({ clock: new ManualClock(T0) });
    const svids = [1, 2, 3].map((i) => own.issueX509Svid(`spiffe://example.org/${i}`));
    tracker.x509(svids);
    const first = tracker.pending(2);
    expect(credentials(first)).toEqual(svids.slice(0, 2).map(serialOf));
    expect(tracker.pending(2)).toEqual(first);
    tracker.acknowledge(first);
    tracker.x509(svids);
    expect(credentials(tracker.pending())).toEqual([serialOf(svids[2] as CachedX509Svid)]);
  });

  it("bounds what waits for the server and counts what it drops", async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    const tracker = new DeliveryTracker({ clock: new ManualClock(T0), maxPending: 2, metrics });
    for (let i = 0; i < 5; i++) tracker.jwt(`token-${i}`);
    expect(tracker.pendingCount).toBe(2);
    expect(tracker.dropped).toBe(3);
    const text = await metrics.registry.metrics();
    expect(text).toContain("sigil_agent_deliveries_pending 2");
    expect(text).toContain("sigil_agent_deliveries_dropped_total 3");
    tracker.acknowledge(tracker.pending());
    expect(tracker.dropped).toBe(0);
    // Dropped ones were not remembered: delivered again, they are recorded.
    tracker.jwt("token-4");
    expect(tracker.pendingCount).toBe(1);
  });
});

describe("delivery reports in the sync loop", () => {
  it("sends pending deliveries with the sync and forgets them only when it succeeds", async () => {
    const clock = new ManualClock(T0);
    const tracker = new DeliveryTracker({ clock });
    tracker.jwt("a");
    tracker.jwt("b");
    const sent: number[] = [];
    let fail = true;
    const unused = (): never => {
      throw new Error("not used");
    };
    const client: ServerClient = {
      attest: unused,
      renew: unused,
      newJwtSvid: unused,
      batchNewX509Svid: unused,
      setIdentity: () => undefined,
      setTrustBundle: () => undefined,
      close: () => undefined,
      async sync(_revision, _delta, deliveries = []): Promise<SyncResult> {
        sent.push(deliveries.length);
        if (fail) throw new SigilError("ERR_UNAVAILABLE", "sync: server away for the test");
        return { notModified: true, revision: "", entries: [], bundles: [] };
      },
    };
    const cache = new AgentCache({ trustDomain: own.trustDomain, clock, mintJwtSvid: () => Promise.reject(new Error("not used")) });
    const loop = new SyncLoop({ client, cache, clock, intervalMs: 5000, deliveries: tracker });
    expect((await loop.syncNow()).ok).toBe(false);
    expect(tracker.pendingCount).toBe(2);
    fail = false;
    expect((await loop.syncNow()).ok).toBe(true);
    expect(tracker.pendingCount).toBe(0);
    await loop.syncNow();
    expect(sent).toEqual([2, 2, 0]);
  });
});

describe("Workload API deliveries", () => {
  let ep: TestAgentEndpoint | undefined;
  afterEach(async () => {
    await ep?.close();
    ep = undefined;
  });

  it("records the X509-SVIDs and JWT-SVIDs it sends, not one it leaves out, and nothing for a bundle stream", async () => {
    const cache = new FakeWorkloadCache({ trustDomain: own });
    const web = cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ownUidSelector()] });
    // An identity whose certificate names another ID than its entry is never sent, so never delivered.
    const stale = { entry: { ...web.entry, id: "stale", spiffeId: "spiffe://example.org/b2", createdAt: new Date(web.entry.createdAt.getTime() + 1) }, svid: own.issueX509Svid("spiffe://example.org/a") };
    const identitiesFor = cache.identitiesFor.bind(cache);
    cache.identitiesFor = (selectors) => [...identitiesFor(selectors), stale];
    const tracker = new DeliveryTracker({ clock: new ManualClock(T0) });
    ep = await startTestAgentEndpoint({ cache, deliveries: tracker });
    const client = createWorkloadApiClient({ address: ep.address });
    try {
      await client.fetchX509Bundles();
      expect(tracker.pendingCount).toBe(0);
      expect((await client.fetchX509Context()).svids.map((x) => x.id.toString())).toEqual(["spiffe://example.org/web"]);
      const jwt = await client.fetchJwtSvid({ audience: "db", spiffeId: "spiffe://example.org/web" });
      expect(credentials(tracker.pending())).toEqual([serialOf(web.svid), `jwt:${createHash("sha256").update(jwt.token).digest("hex")}`]);
    } finally {
      client.close();
    }
  });
});
