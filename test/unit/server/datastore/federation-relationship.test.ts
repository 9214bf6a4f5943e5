import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { parseSelector } from "../../../../common/selector.js";
import { type Datastore } from "../../../../server/datastore/index.js";
import { datastoreEngines, closeTempDatastore, openTempDatastore, type TempDatastore, rejection } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const DOC = (n: number) => JSON.stringify({ keys: [], spiffe_sequence: n });
const WEB = { trustDomain: "td-b.test", bundleEndpointUrl: "https://b.example:8443/bundle", profile: "https_web" } as const;
const SPIFFE = { trustDomain: "td-c.test", bundleEndpointUrl: "https://127.0.0.1:8443/", profile: "https_spiffe", endpointSpiffeId: "spiffe://td-c.test/spire/server" } as const;

const engines = await datastoreEngines();

let dir: string;
let clock: ManualClock;
let ds: Datastore;
let reopen: TempDatastore["reopen"];

describe.each(engines)("datastore on %s", (engine) => {
  beforeEach(async () => {
    ({ dir, clock, ds, reopen } = await openTempDatastore("federation", T0, engine));
  });

  afterEach(() => closeTempDatastore(ds, dir));

  describe("federation relationships", () => {
    it("create, get, list, update; a relationship and its initial bundle persist across a restart", async () => {
      const web = await ds.createFederationRelationship(WEB);
      expect(web).toEqual({ ...WEB, source: "api", createdAt: T0, updatedAt: T0 });
      await ds.createFederationRelationship(SPIFFE, { initialBundle: { document: DOC(3), sequence: 3n } });
      expect((await ds.getBundle("td-c.test"))?.sequence).toBe("3");
      await rejection(ds.createFederationRelationship(WEB), "ERR_ALREADY_EXISTS", "datastore: a federation relationship with td-b.test already exists");
      clock.advance(1000);
      const updated = await ds.updateFederationRelationship({ ...SPIFFE, trustDomain: "td-b.test", endpointSpiffeId: "spiffe://td-b.test/bep" });
      expect(updated).toMatchObject({ profile: "https_spiffe", endpointSpiffeId: "spiffe://td-b.test/bep", createdAt: T0, updatedAt: new Date(T0.getTime() + 1000) });
      await rejection(ds.updateFederationRelationship({ ...WEB, trustDomain: "td-x.test" }), "ERR_NOT_FOUND");

      await ds.close();
      ds = await reopen();
      expect((await ds.listFederationRelationships()).map((r) => [r.trustDomain, r.profile, r.endpointSpiffeId])).toEqual([
        ["td-b.test", "https_spiffe", "spiffe://td-b.test/bep"],
        ["td-c.test", "https_spiffe", "spiffe://td-c.test/spire/server"],
      ]);
      expect((await ds.getBundle("td-c.test"))?.document).toBe(DOC(3));
    });

    it("put (the config's upsert) keeps a held bundle when the initial bundle is onlyIfAbsent", async () => {
      await ds.putFederationRelationship({ ...WEB, source: "config" }, { initialBundle: { document: DOC(1), sequence: 1n, onlyIfAbsent: true } });
      expect((await ds.getBundle("td-b.test"))?.sequence).toBe("1");
      await ds.setBundle({ trustDomain: "td-b.test", document: DOC(5), sequence: 5n });
      const again = await ds.putFederationRelationship({ ...WEB, source: "config" }, { initialBundle: { document: DOC(1), sequence: 1n, onlyIfAbsent: true } });
      expect(again.source).toBe("config");
      expect((await ds.getBundle("td-b.test"))?.sequence).toBe("5");
    });

    it("FED-11 FED-20: refuses http, userinfo, an unknown profile, and a missing or misplaced endpoint ID", async () => {
      await rejection(ds.createFederationRelationship({ ...WEB, bundleEndpointUrl: "http://b.example/" }), "ERR_INVALID_ARGUMENT", "datastore: federation relationship bundleEndpointUrl must use https");
      await rejection(ds.createFederationRelationship({ ...WEB, bundleEndpointUrl: "https://u:p@b.example/" }), "ERR_INVALID_ARGUMENT", "datastore: federation relationship bundleEndpointUrl must not contain userinfo");
      await rejection(ds.createFederationRelationship({ ...WEB, profile: "https_foo" as never }), "ERR_INVALID_ARGUMENT", "datastore: federation relationship profile");
      await rejection(ds.createFederationRelationship({ ...SPIFFE, endpointSpiffeId: undefined as never }), "ERR_INVALID_ARGUMENT", "datastore: federation relationship endpointSpiffeId is required");
      await rejection(ds.createFederationRelationship({ ...WEB, endpointSpiffeId: "spiffe://td-b.test/x" }), "ERR_INVALID_ARGUMENT", "datastore: federation relationship endpointSpiffeId is only for https_spiffe");
      await rejection(ds.createFederationRelationship({ ...WEB, trustDomain: "Not A TD" }), "ERR_INVALID_ARGUMENT", "datastore: federation relationship trustDomain");
      expect(await ds.listFederationRelationships()).toEqual([]);
    });

    it("FED-26: delete removes the relationship and its bundle; restrict refuses while entries federate, dissociate updates them", async () => {
      await ds.createFederationRelationship(WEB, { initialBundle: { document: DOC(1), sequence: 1n } });
      const entry = await ds.createEntry({
        spiffeId: "spiffe://td-a.test/w",
        parentId: "spiffe://td-a.test/spire/agent/x",
        selectors: [parseSelector("unix:uid:1")],
        federatesWith: ["td-b.test"],
      });
      await rejection(ds.deleteFederationRelationship("td-b.test"), "ERR_FAILED_PRECONDITION", "datastore: bundle for td-b.test is still federated with by 1 entries");
      expect(await ds.getFederationRelationship("td-b.test")).toBeDefined();
      expect(await ds.getBundle("td-b.test")).toBeDefined();
      const gone = await ds.deleteFederationRelationship("td-b.test", "dissociate");
      expect(gone.trustDomain).toBe("td-b.test");
      expect(await ds.getFederationRelationship("td-b.test")).toBeUndefined();
      expect(await ds.getBundle("td-b.test")).toBeUndefined();
      const after = await ds.getEntry(entry.id);
      expect(after?.federatesWith).toEqual([]);
      expect(after?.revision).toBe(1);
      await rejection(ds.deleteFederationRelationship("td-b.test"), "ERR_NOT_FOUND");
      // A relationship whose bundle was never fetched deletes too.
      await ds.createFederationRelationship(SPIFFE);
      await ds.deleteFederationRelationship("td-c.test");
      expect(await ds.listFederationRelationships()).toEqual([]);
    });

    it("setBundle with relationshipUpdatedAt stores only while that relationship exists unchanged", async () => {
      const rel = await ds.createFederationRelationship(WEB);
      const fetched = { expectedSequence: null, relationshipUpdatedAt: rel.updatedAt };
      expect((await ds.setBundle({ trustDomain: WEB.trustDomain, document: DOC(1), sequence: "1" }, fetched)).sequence).toBe("1");
      clock.advance(1000);
      await ds.updateFederationRelationship({ ...WEB, bundleEndpointUrl: "https://b2.example/bundle" });
      const edited = { expectedSequence: "1", relationshipUpdatedAt: rel.updatedAt };
      await rejection(
        ds.setBundle({ trustDomain: WEB.trustDomain, document: DOC(2), sequence: "2" }, edited),
        "ERR_FAILED_PRECONDITION",
        "datastore: the federation relationship with td-b.test was deleted or changed since its bundle was fetched; bundle not stored",
      );
      const current = (await ds.getFederationRelationship(WEB.trustDomain))!;
      await ds.deleteFederationRelationship(WEB.trustDomain);
      await rejection(ds.setBundle({ trustDomain: WEB.trustDomain, document: DOC(3), sequence: "3" }, { expectedSequence: null, relationshipUpdatedAt: current.updatedAt }), "ERR_FAILED_PRECONDITION");
      expect(await ds.getBundle(WEB.trustDomain)).toBeUndefined();
    });
  });
});
