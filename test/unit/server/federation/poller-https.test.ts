/**
 * The federation poller against local HTTPS bundle endpoints, through the real
 * bundle endpoint client: polling on its own at the refresh hint (FED-3), and
 * an `https_spiffe` endpoint followed through a root rotation (FED-23).
 */
import { once } from "node:events";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { systemClock } from "../../../../common/clock.js";
import { parseSpiffeBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import type { Datastore } from "../../../../server/datastore/index.js";
import { FederationPoller } from "../../../../server/federation/poller.js";
import { closeTempDatastore, openTempDatastore } from "../../../support/datastore.js";
import { makeTestCa } from "../../../support/federation-bundles.js";
import { createServingPki } from "../../../support/serving-cert.js";
import { requireTool } from "../../../support/tools.js";

const haveOpenssl = requireTool("openssl", ["version"], "the https_web endpoint's certificate");
const OWN = parseTrustDomain("td-a.test");

let dir: string;
let ds: Datastore;
let poller: FederationPoller | undefined;
let server: Server | undefined;

async function serve(tls: { cert: string; key: string }, handler: () => string): Promise<{ url: string; hits: () => number }> {
  let hits = 0;
  server = createServer(tls, (_req, res) => {
    hits++;
    res.writeHead(200, { "content-type": "application/json" }).end(handler());
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return { url: `https://127.0.0.1:${(server.address() as AddressInfo).port}/`, hits: () => hits };
}

function newPoller(trustedCas?: string): FederationPoller {
  const ownCa = makeTestCa("td-a.test");
  poller = new FederationPoller({
    trustDomain: OWN,
    datastore: { datastore: ds },
    ownBundle: () => parseSpiffeBundle(ownCa.bundleJson(1n), OWN).bundle,
    config: { federates_with: {}, min_refresh_interval: 1_000, max_refresh_interval: 3_600_000 },
    clock: systemClock,
    metrics: new Metrics({ defaultMetrics: false }),
    log: createLogger({ level: "error", format: "json", destination: { write: () => undefined } }),
    ...(trustedCas !== undefined ? { trustedCas } : {}),
  });
  return poller;
}

beforeEach(async () => {
  ({ dir, ds } = await openTempDatastore("poller-https", new Date()));
});

afterEach(async () => {
  await poller?.stop();
  poller = undefined;
  if (server) await new Promise((r) => server?.close(r));
  server = undefined;
  await closeTempDatastore(ds, dir);
});

describe("the federation poller over HTTPS", () => {
  it.skipIf(!haveOpenssl)("FED-3: polls an https_web endpoint on its own at the refresh hint (bounded below by min_refresh_interval)", async () => {
    const pki = createServingPki();
    const caB = makeTestCa("td-b.test");
    let seq = 1n;
    const ep = await serve({ cert: pki.certPem, key: pki.keyPem }, () => caB.bundleJson(seq++, 1));
    const p = newPoller(pki.caPem);
    await p.start();
    await ds.createFederationRelationship({ trustDomain: "td-b.test", bundleEndpointUrl: ep.url, profile: "https_web" });
    p.relationshipChanged("td-b.test");
    // No refreshNow: the poller's own schedule fetches again and again, each time a higher sequence.
    for (let i = 0; i < 400 && ep.hits() < 3; i++) await new Promise((r) => setTimeout(r, 25));
    expect(ep.hits()).toBeGreaterThanOrEqual(3);
    for (let i = 0; i < 200 && p.status("td-b.test")?.lastResult !== "updated"; i++) await new Promise((r) => setTimeout(r, 25));
    expect(BigInt((await ds.getBundle("td-b.test"))?.sequence ?? "0")).toBeGreaterThanOrEqual(2n);
    expect(p.status("td-b.test")?.lastError).toBeUndefined();
  }, 30_000);

  it("FED-23: an https_spiffe endpoint keeps being authenticated after its trust domain rotates its root", async () => {
    const oldRoot = makeTestCa("td-b.test");
    const newRoot = makeTestCa("td-b.test");
    const id = "spiffe://td-b.test/spire/server";
    let body = oldRoot.bundleJson(2n, 3600, [newRoot.certDer]);
    const oldSvid = oldRoot.issueSvid(id);
    const ep = await serve({ cert: oldSvid.certPem, key: oldSvid.keyPem }, () => body);
    const p = newPoller();
    await p.start();
    await ds.createFederationRelationship(
      { trustDomain: "td-b.test", bundleEndpointUrl: ep.url, profile: "https_spiffe", endpointSpiffeId: id },
      { initialBundle: { document: oldRoot.bundleJson(1n), sequence: 1n } },
    );
    // The new root is published first (sequence 2), signed for with the old one.
    expect(await p.refreshNow("td-b.test")).toMatchObject({ lastResult: "updated", sequence: "2" });
    // Then the endpoint switches to an SVID of the new root and drops the old one.
    const newSvid = newRoot.issueSvid(id);
    server?.setSecureContext({ cert: newSvid.certPem, key: newSvid.keyPem });
    body = newRoot.bundleJson(3n, 3600);
    expect(await p.refreshNow("td-b.test")).toMatchObject({ lastResult: "updated", sequence: "3" });
    // A server presenting another SPIFFE ID is refused and the held bundle kept.
    const other = newRoot.issueSvid("spiffe://td-b.test/someone-else");
    server?.setSecureContext({ cert: other.certPem, key: other.keyPem });
    body = newRoot.bundleJson(4n, 3600);
    await expect(p.refreshNow("td-b.test")).rejects.toMatchObject({ code: "ERR_UNAVAILABLE" });
    expect((await ds.getBundle("td-b.test"))?.sequence).toBe("3");
  }, 30_000);
});
