import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import type { ManualClock } from "../../../../common/clock.js";
import { parseSpiffeBundle, type SpiffeBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import type { Datastore } from "../../../../server/datastore/index.js";
import {
  compareFetched,
  DEFAULT_REFRESH_INTERVAL_MS,
  FederationPoller,
  refreshIntervalMs,
  type FetchBundleFn,
} from "../../../../server/federation/poller.js";
import type { EndpointProfile } from "../../../../spiffe/federation/bundle-endpoint-client.js";
import { closeTempDatastore, openTempDatastore } from "../../../support/datastore.js";
import { makeTestCa, type TestCa } from "../../../support/federation-bundles.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const OWN = parseTrustDomain("td-a.test");
const URL_B = "https://127.0.0.1:1/b";

/** A fake bundle endpoint client: serves `documents[url]` (or throws `errors[url]`) and records each call. */
class FakeEndpoints {
  readonly documents = new Map<string, string>();
  readonly errors = new Map<string, string>();
  readonly calls: Array<{ url: string; profile: EndpointProfile }> = [];
  readonly fetch: FetchBundleFn = async (o) => {
    this.calls.push({ url: o.url, profile: o.profile });
    const err = this.errors.get(o.url);
    if (err !== undefined) throw new Error(err);
    const doc = this.documents.get(o.url);
    if (doc === undefined) throw new Error("connection refused");
    const parsed = parseSpiffeBundle(doc, o.trustDomain);
    return { bundle: parsed.bundle, document: doc, warnings: parsed.warnings, finalUrl: o.url };
  };
}

let dir: string;
let ds: Datastore;
let clock: ManualClock;
let logs: string[];
let metrics: Metrics;
let endpoints: FakeEndpoints;
let poller: FederationPoller | undefined;
let caA: TestCa;
let caB: TestCa;

function newPoller(config?: ConstructorParameters<typeof FederationPoller>[0]["config"]): FederationPoller {
  poller = new FederationPoller({
    trustDomain: OWN,
    datastore: { datastore: ds },
    ownBundle: () => parseSpiffeBundle(caA.bundleJson(1n), OWN).bundle,
    ...(config ? { config } : {}),
    clock,
    metrics,
    log: createLogger({ level: "debug", format: "json", destination: { write: (l: string) => void logs.push(l) } }),
    fetchBundle: endpoints.fetch,
  });
  return poller;
}

async function failure(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(isSigilError(e, "ERR_UNAVAILABLE"), String(e)).toBe(true);
    return (e as Error).message;
  }
  throw new Error("expected the refresh to fail");
}

beforeEach(async () => {
  ({ dir, ds, clock } = await openTempDatastore("poller", T0));
  logs = [];
  metrics = new Metrics({ defaultMetrics: false });
  endpoints = new FakeEndpoints();
  caA = makeTestCa("td-a.test");
  caB = makeTestCa("td-b.test");
});

afterEach(async () => {
  await poller?.stop();
  poller = undefined;
  await closeTempDatastore(ds, dir);
});

describe("schedule and ordering rules", () => {
  it("FED-3: the refresh hint clamped to the bounds; about 5 minutes without one", () => {
    expect(refreshIntervalMs(undefined, 30_000, 3_600_000)).toBe(DEFAULT_REFRESH_INTERVAL_MS);
    expect(refreshIntervalMs(0, 30_000, 3_600_000)).toBe(DEFAULT_REFRESH_INTERVAL_MS);
    expect(refreshIntervalMs(60, 30_000, 3_600_000)).toBe(60_000);
    expect(refreshIntervalMs(2, 30_000, 3_600_000)).toBe(30_000);
    expect(refreshIntervalMs(86_400, 30_000, 3_600_000)).toBe(3_600_000);
  });

  it("FED-4: a lower sequence is refused, an equal one is unchanged or refused by content, a missing one wins", () => {
    const td = parseTrustDomain("td-b.test");
    const held = { trustDomain: "td-b.test", document: caB.bundleJson(5n), sequence: "5", createdAt: T0, updatedAt: T0 };
    const b = (seq?: bigint, extra: Uint8Array[] = []): SpiffeBundle => parseSpiffeBundle(caB.bundleJson(seq, undefined, extra), td).bundle;
    expect(compareFetched(undefined, false, b(1n))).toBe("store");
    expect(compareFetched(held, false, b(6n))).toBe("store");
    expect(compareFetched(held, false, b(4n))).toEqual({ refused: expect.stringMatching(/sequence 4 is lower than the held bundle's 5/) });
    expect(compareFetched(held, false, b(5n))).toBe("unchanged");
    expect(compareFetched(held, false, b(5n, [caA.certDer]))).toEqual({ refused: expect.stringMatching(/unchanged but the bundle's content differs/) });
    expect(compareFetched(held, false, b(undefined))).toBe("store");
    // FED-5: a locally set bundle yields to any fetched one.
    expect(compareFetched(held, true, b(1n))).toBe("store");
  });
});

describe("the federation poller", () => {
  it("FED-4 FED-25 FED-29: keeps the highest sequence; a failed fetch keeps the last good bundle, records the error and retries at the next interval", async () => {
    const p = newPoller({ federates_with: {}, min_refresh_interval: 1_000, max_refresh_interval: 3_600_000 });
    await p.start();
    await ds.createFederationRelationship({ trustDomain: "td-b.test", bundleEndpointUrl: URL_B, profile: "https_web" });
    endpoints.documents.set(URL_B, caB.bundleJson(5n, 60));
    const ok = await p.refreshNow("td-b.test");
    expect(ok).toMatchObject({ lastResult: "updated", sequence: "5" });
    expect((await ds.getBundle("td-b.test"))?.sequence).toBe("5");
    expect(ok.nextRefresh!.getTime() - ok.lastAttempt!.getTime()).toBe(60_000);

    endpoints.documents.set(URL_B, caB.bundleJson(3n, 60));
    expect(await failure(p.refreshNow("td-b.test"))).toMatch(/^federation: fetching the bundle of td-b\.test failed: sequence 3 is lower than the held bundle's 5/);
    expect((await ds.getBundle("td-b.test"))?.sequence).toBe("5");

    endpoints.errors.set(URL_B, "connection refused");
    await failure(p.refreshNow("td-b.test"));
    const st = p.status("td-b.test");
    expect(st).toMatchObject({ lastResult: "error", lastError: "connection refused", sequence: "5" });
    // No tight loop: the retry waits the held bundle's interval.
    expect(st!.nextRefresh!.getTime() - st!.lastAttempt!.getTime()).toBe(60_000);
    expect(st!.lastSuccess).toEqual(ok.lastSuccess);
    expect((await ds.getBundle("td-b.test"))?.document).toBe(caB.bundleJson(5n, 60));

    endpoints.errors.delete(URL_B);
    endpoints.documents.set(URL_B, caB.bundleJson(5n, 60));
    expect(await p.refreshNow("td-b.test")).toMatchObject({ lastResult: "unchanged", sequence: "5" });
    expect(p.status("td-b.test")?.lastError).toBeUndefined();

    const text = await metrics.registry.metrics();
    expect(text).toMatch(/sigil_federation_fetch_total\{trust_domain="td-b.test",result="updated"\} [1-9]/);
    expect(text).toMatch(/sigil_federation_fetch_total\{trust_domain="td-b.test",result="error"\} 2/);
    expect(text).toMatch(/sigil_federation_last_success_timestamp_seconds\{trust_domain="td-b.test"\} \d+/);
    const fetched = logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => String(l.msg).startsWith("federation: "));
    expect(fetched.some((l) => l.msg === "federation: fetched bundle" && l.url === URL_B && l.trust_domain === "td-b.test" && l.sequence === "5")).toBe(true);
    expect(fetched.some((l) => String(l.msg).includes("failed") && l.url === URL_B && l.trust_domain === "td-b.test" && l.sequence === "5")).toBe(true);
  });

  it("FED-5: a bundle set through the admin API counts until the next poll overwrites it, whatever its sequence", async () => {
    const p = newPoller();
    await p.start();
    await ds.createFederationRelationship({ trustDomain: "td-b.test", bundleEndpointUrl: URL_B, profile: "https_web" });
    endpoints.documents.set(URL_B, caB.bundleJson(2n));
    await p.refreshNow("td-b.test");
    await ds.setBundle({ trustDomain: "td-b.test", document: caB.bundleJson(9n, undefined, [caA.certDer]), sequence: 9n });
    expect(await p.refreshNow("td-b.test")).toMatchObject({ lastResult: "updated", sequence: "2" });
    expect((await ds.getBundle("td-b.test"))?.document).toBe(caB.bundleJson(2n));
  });

  it("FED-23 FED-24: https_spiffe is authenticated with the latest bundle held for the endpoint ID's trust domain", async () => {
    const p = newPoller();
    await p.start();
    // Self-serving: the initial bundle first, then whatever was fetched last (a rotated root is followed).
    await ds.createFederationRelationship(
      { trustDomain: "td-b.test", bundleEndpointUrl: URL_B, profile: "https_spiffe", endpointSpiffeId: "spiffe://td-b.test/spire/server" },
      { initialBundle: { document: caB.bundleJson(1n), sequence: 1n } },
    );
    const rotated = makeTestCa("td-b.test");
    endpoints.documents.set(URL_B, caB.bundleJson(2n, undefined, [rotated.certDer]));
    await p.refreshNow("td-b.test");
    const first = endpoints.calls.at(-1)!.profile;
    expect(first.kind === "https_spiffe" && first.endpointSpiffeId.toString()).toBe("spiffe://td-b.test/spire/server");
    expect(first.kind === "https_spiffe" && first.bundle.authorityDers.length).toBe(1);
    await p.refreshNow("td-b.test");
    const second = endpoints.calls.at(-1)!.profile;
    expect(second.kind === "https_spiffe" && second.bundle.authorityDers.map((d) => Buffer.from(d).toString("hex"))).toEqual(
      [caB.certDer, rotated.certDer].map((d) => Buffer.from(d).toString("hex")),
    );

    // Not self-serving: td-c's endpoint presents an ID of td-b, so td-b's held bundle authenticates it.
    const URL_C = "https://127.0.0.1:1/c";
    await ds.createFederationRelationship({ trustDomain: "td-c.test", bundleEndpointUrl: URL_C, profile: "https_spiffe", endpointSpiffeId: "spiffe://td-b.test/bundles/c" });
    endpoints.documents.set(URL_C, makeTestCa("td-c.test").bundleJson(1n));
    await p.refreshNow("td-c.test");
    const third = endpoints.calls.at(-1)!.profile;
    expect(third.kind === "https_spiffe" && third.bundle.trustDomain.name).toBe("td-b.test");
    // An endpoint in the own trust domain is authenticated with the own bundle.
    await ds.updateFederationRelationship({ trustDomain: "td-c.test", bundleEndpointUrl: URL_C, profile: "https_spiffe", endpointSpiffeId: "spiffe://td-a.test/bundles/c" });
    await p.refreshNow("td-c.test");
    const fourth = endpoints.calls.at(-1)!.profile;
    expect(fourth.kind === "https_spiffe" && fourth.bundle.trustDomain.name).toBe("td-a.test");
    // Without any bundle of the endpoint's trust domain the fetch fails instead of trusting anything.
    await ds.updateFederationRelationship({ trustDomain: "td-c.test", bundleEndpointUrl: URL_C, profile: "https_spiffe", endpointSpiffeId: "spiffe://td-x.test/bundles/c" });
    expect(await failure(p.refreshNow("td-c.test"))).toMatch(/no bundle of td-x\.test is held to authenticate the endpoint/);
  });

  it("FED-26: a deleted relationship is no longer polled; refresh of an unknown one is NOT_FOUND", async () => {
    const p = newPoller();
    await p.start();
    await ds.createFederationRelationship({ trustDomain: "td-b.test", bundleEndpointUrl: URL_B, profile: "https_web" });
    endpoints.documents.set(URL_B, caB.bundleJson(1n));
    await p.refreshNow("td-b.test");
    await ds.deleteFederationRelationship("td-b.test");
    p.relationshipDeleted("td-b.test");
    expect(p.status("td-b.test")).toBeUndefined();
    await expect(p.refreshNow("td-b.test")).rejects.toMatchObject({ code: "ERR_NOT_FOUND" });
  });

  it("applies federates_with at start (source config, initial bundle only when none is held) and ends relationships removed from the config", async () => {
    const file = join(dir, "b.pem");
    writeFileSync(file, caB.certPem);
    const entry = {
      bundle_endpoint_url: URL_B,
      bundle_endpoint_profile: { https_spiffe: { endpoint_spiffe_id: "spiffe://td-b.test/spire/server" } },
      trust_domain_bundle_path: file,
      trust_domain_bundle_format: "pem" as const,
    };
    const p = newPoller({ federates_with: { "td-b.test": entry }, min_refresh_interval: 1_000, max_refresh_interval: 3_600_000 });
    await p.start();
    expect(await ds.getFederationRelationship("td-b.test")).toMatchObject({ source: "config", profile: "https_spiffe" });
    expect((await ds.getBundle("td-b.test"))?.sequence).toBe("0");
    await p.stop();

    // Self-serving https_spiffe without any bundle of its trust domain: the start fails naming the key.
    const noBundle = newPoller({
      federates_with: { "td-c.test": { ...entry, bundle_endpoint_profile: { https_spiffe: { endpoint_spiffe_id: "spiffe://td-c.test/s" } }, trust_domain_bundle_path: undefined as never } },
      min_refresh_interval: 1_000,
      max_refresh_interval: 3_600_000,
    });
    await expect(noBundle.start()).rejects.toThrow(/^federation\.federates_with\["td-c\.test"\]\.trust_domain_bundle_path: is required/);
    await noBundle.stop();
    await ds.deleteFederationRelationship("td-c.test");

    const later = newPoller({ federates_with: {}, min_refresh_interval: 1_000, max_refresh_interval: 3_600_000 });
    await later.start();
    expect(await ds.listFederationRelationships()).toEqual([]);
    expect(await ds.getBundle("td-b.test")).toBeUndefined();
  });
});
