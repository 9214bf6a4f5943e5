import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { parseSelector } from "../../../../common/selector.js";
import type { Datastore } from "../../../../server/datastore/index.js";
import { datastoreEngines, closeTempDatastore, openTempDatastore, rejection } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const DOC = (n: number) => JSON.stringify({ keys: [], spiffe_sequence: n });

const engines = await datastoreEngines();

let dir: string;
let clock: ManualClock;
let ds: Datastore;

describe.each(engines)("datastore on %s", (engine) => {
  beforeEach(async () => {
    ({ dir, clock, ds } = await openTempDatastore("bundles", T0, engine));
  });

  afterEach(() => closeTempDatastore(ds, dir));

  describe("bundles", () => {
    it("set, get, replace and list; the document is stored byte for byte", async () => {
      const doc = '{ "keys": [ ],\n  "spiffe_refresh_hint": 300 }';
      const b = await ds.setBundle({ trustDomain: "example.org", document: doc, sequence: "1" });
      expect(b).toEqual({ trustDomain: "example.org", document: doc, sequence: "1", createdAt: T0, updatedAt: T0 });
      expect(await ds.getBundle("example.org")).toEqual(b);
      clock.advance(1000);
      const b2 = await ds.setBundle({ trustDomain: "example.org", document: DOC(2), sequence: 2n });
      expect(b2).toMatchObject({ sequence: "2", document: DOC(2), createdAt: T0, updatedAt: new Date(T0.getTime() + 1000) });
      await ds.setBundle({ trustDomain: "a-partner.org", document: DOC(1), sequence: "1" });
      expect((await ds.listBundles()).map((x) => x.trustDomain)).toEqual(["a-partner.org", "example.org"]);
      expect(await ds.getBundle("missing.org")).toBeUndefined();
    });

    it("keeps 64-bit sequence numbers exact", async () => {
      const max = "18446744073709551615";
      await ds.setBundle({ trustDomain: "example.org", document: DOC(0), sequence: max });
      expect((await ds.getBundle("example.org"))?.sequence).toBe(max);
      expect(BigInt((await ds.getBundle("example.org"))?.sequence ?? "0")).toBe(2n ** 64n - 1n);
      await rejection(ds.setBundle({ trustDomain: "example.org", document: DOC(0), sequence: "18446744073709551616" }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.setBundle({ trustDomain: "example.org", document: DOC(0), sequence: "-1" }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.setBundle({ trustDomain: "example.org", document: DOC(0), sequence: "01" }), "ERR_INVALID_ARGUMENT");
    });

    it("compare-and-set on the sequence", async () => {
      await ds.setBundle({ trustDomain: "example.org", document: DOC(1), sequence: "1" }, { expectedSequence: null });
      const err = await rejection(ds.setBundle({ trustDomain: "example.org", document: DOC(1), sequence: "1" }, { expectedSequence: null }), "ERR_INVALID_ARGUMENT");
      expect(err.message).toMatch(/has sequence 1, expected no bundle/);
      const stale = await rejection(ds.setBundle({ trustDomain: "example.org", document: DOC(3), sequence: "3" }, { expectedSequence: "2" }), "ERR_INVALID_ARGUMENT");
      expect(stale.message).toMatch(/has sequence 1, expected sequence 2/);
      expect((await ds.getBundle("example.org"))?.document).toBe(DOC(1));
      await ds.setBundle({ trustDomain: "example.org", document: DOC(2), sequence: "2" }, { expectedSequence: 1n });
      expect((await ds.getBundle("example.org"))?.sequence).toBe("2");
      await rejection(ds.setBundle({ trustDomain: "new.org", document: DOC(1), sequence: "1" }, { expectedSequence: "1" }), "ERR_INVALID_ARGUMENT");
    });

    it.each([
      ["not JSON", "{keys:", /not JSON/],
      ["no keys array", '{"keys":{}}', /"keys" array/],
      ["an array", "[]", /"keys" array/],
    ])("refuses a document that is %s", async (_n, document, msg) => {
      expect((await rejection(ds.setBundle({ trustDomain: "example.org", document, sequence: "1" }), "ERR_INVALID_ARGUMENT")).message).toMatch(msg);
      expect(await ds.listBundles()).toEqual([]);
    });

    it("refuses a trust domain given as a URI", async () => {
      await rejection(ds.setBundle({ trustDomain: "spiffe://example.org", document: DOC(1), sequence: "1" }), "ERR_INVALID_ARGUMENT");
    });

    it("delete: restrict refuses while entries federate with it; dissociate updates them", async () => {
      await ds.setBundle({ trustDomain: "partner.org", document: DOC(1), sequence: "1" });
      await ds.setBundle({ trustDomain: "other.org", document: DOC(1), sequence: "1" });
      const e = await ds.createEntry({
        spiffeId: "spiffe://example.org/web",
        parentId: "spiffe://example.org/agent",
        selectors: [parseSelector("unix:uid:1")],
        federatesWith: ["partner.org", "other.org"],
      });
      const err = await rejection(ds.deleteBundle("partner.org"), "ERR_FAILED_PRECONDITION");
      expect(err.message).toContain(e.id);
      expect(await ds.getBundle("partner.org")).toBeDefined();
      const before = await ds.lastEventId();
      await ds.deleteBundle("partner.org", "dissociate");
      expect(await ds.getBundle("partner.org")).toBeUndefined();
      expect(await ds.getEntry(e.id)).toMatchObject({ federatesWith: ["other.org"], revision: 1 });
      expect(await ds.listEvents(before, 10)).toMatchObject([
        { kind: "entry", objectId: e.id, op: "update" },
        { kind: "bundle", objectId: "partner.org", op: "delete" },
      ]);
      expect(await ds.countEntries({ federatesWith: { trustDomains: ["other.org"], match: "exact" } })).toBe(1);
      await rejection(ds.deleteBundle("partner.org"), "ERR_NOT_FOUND");
    });
  });

  describe("bundle change events", () => {
    const summary = (events: readonly { kind: string; op: string; objectId: string }[]): string[] => events.map((e) => `${e.kind}:${e.op}:${e.objectId}`);
    const relationship = { trustDomain: "partner.org", bundleEndpointUrl: "https://partner.org/bundle", profile: "https_web" } as const;

    it("every bundle write appends one event in its transaction, heard by subscribers at commit; a refused write appends none", async () => {
      const heard: string[] = [];
      const unsubscribe = ds.subscribe((e) => heard.push(`${e.kind}:${e.op}:${e.objectId}`));
      const start = await ds.lastEventId();
      await ds.setBundle({ trustDomain: "example.org", document: DOC(1), sequence: "1" });
      await ds.setBundle({ trustDomain: "example.org", document: DOC(2), sequence: "2" }, { expectedSequence: "1" });
      await rejection(ds.setBundle({ trustDomain: "example.org", document: DOC(3), sequence: "3" }, { expectedSequence: "1" }), "ERR_INVALID_ARGUMENT");
      await ds.createFederationRelationship(relationship, { initialBundle: { document: DOC(1), sequence: 1n } });
      await ds.updateFederationRelationship(relationship, { initialBundle: { document: DOC(2), sequence: 2n } });
      // An initial bundle kept because one is stored writes nothing.
      await ds.putFederationRelationship(relationship, { initialBundle: { document: DOC(9), sequence: 9n, onlyIfAbsent: true } });
      await ds.deleteFederationRelationship("partner.org");
      await ds.deleteBundle("example.org");
      unsubscribe();
      const expected = [
        "bundle:create:example.org",
        "bundle:update:example.org",
        "bundle:create:partner.org",
        "bundle:update:partner.org",
        "bundle:delete:partner.org",
        "bundle:delete:example.org",
      ];
      expect(summary(await ds.listEvents(start, 100))).toEqual(expected);
      expect(heard).toEqual(expected);
    });
  });

  describe("CA journal", () => {
    const bytes = (...b: number[]) => new Uint8Array(b);
    const x509 = (slotId: string, keyId: string, status: "prepared" | "active" | "old") => ({
      kind: "x509" as const,
      slotId,
      keyId,
      status,
      publicKeyDer: bytes(0x30, 1, 2),
      certDer: bytes(0x30, 3, 4),
      chainDers: [bytes(0x30, 3, 4)],
      rootDers: [bytes(0x30, 9)],
      notBefore: T0,
      notAfter: new Date(T0.getTime() + 86_400_000),
    });

    it("upserts by (kind, slot) and lists by kind then slot, with bytes intact", async () => {
      await ds.upsertCaJournal(x509("B", "key-b", "prepared"));
      const a = await ds.upsertCaJournal(x509("A", "key-a", "active"));
      const jwt = await ds.upsertCaJournal({
        kind: "jwt",
        slotId: "A",
        keyId: "jwt-a",
        status: "active",
        publicKeyDer: bytes(0x30, 7),
        notBefore: T0,
        notAfter: new Date(T0.getTime() + 3_600_000),
      });
      expect(a).toEqual({ ...x509("A", "key-a", "active"), serverId: "", createdAt: T0, updatedAt: T0 });
      expect(jwt).toEqual({
        serverId: "",
        kind: "jwt",
        slotId: "A",
        keyId: "jwt-a",
        status: "active",
        publicKeyDer: bytes(0x30, 7),
        chainDers: [],
        rootDers: [],
        notBefore: T0,
        notAfter: new Date(T0.getTime() + 3_600_000),
        createdAt: T0,
        updatedAt: T0,
      });
      expect((await ds.listCaJournal()).map((r) => `${r.kind}/${r.slotId}`)).toEqual(["jwt/A", "x509/A", "x509/B"]);
      expect((await ds.listCaJournal("x509")).map((r) => r.keyId)).toEqual(["key-a", "key-b"]);
    });

    it("a status change keeps createdAt; a new key in the slot resets it", async () => {
      await ds.upsertCaJournal(x509("A", "key-1", "prepared"));
      clock.advance(1000);
      const activated = await ds.upsertCaJournal(x509("A", "key-1", "active"));
      expect(activated).toMatchObject({ status: "active", createdAt: T0, updatedAt: new Date(T0.getTime() + 1000) });
      clock.advance(1000);
      const replaced = await ds.upsertCaJournal(x509("A", "key-2", "prepared"));
      expect(replaced).toMatchObject({ keyId: "key-2", createdAt: new Date(T0.getTime() + 2000) });
      expect(await ds.listCaJournal()).toHaveLength(1);
    });

    it("keeps each server's slots apart: (serverId, kind, slot) is the key; every server's records are listed", async () => {
      await ds.upsertCaJournal({ ...x509("A", "s1-key", "active"), serverId: "server-1" });
      await ds.upsertCaJournal({ ...x509("A", "s2-key", "active"), serverId: "server-2" });
      await ds.upsertCaJournal({ ...x509("A", "s1-next", "prepared"), serverId: "server-1" });
      expect((await ds.listCaJournal()).map((r) => `${r.serverId}/${r.kind}/${r.slotId}/${r.keyId}`)).toEqual(["server-1/x509/A/s1-next", "server-2/x509/A/s2-key"]);
      await rejection(ds.upsertCaJournal({ ...x509("A", "k", "active"), serverId: "bad id" }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.upsertCaJournal({ ...x509("A", "k", "active"), serverId: "x".repeat(65) }), "ERR_INVALID_ARGUMENT");
    });

    it("refuses inconsistent records", async () => {
      const { certDer: _c, ...noCert } = x509("A", "k", "active");
      await rejection(ds.upsertCaJournal(noCert), "ERR_INVALID_ARGUMENT");
      await rejection(ds.upsertCaJournal({ ...x509("A", "k", "active"), kind: "jwt" }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.upsertCaJournal({ ...x509("A", "k", "active"), status: "compromised" as never }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.upsertCaJournal({ ...x509("A", "k", "active"), notAfter: T0 }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.upsertCaJournal({ ...x509("A", "k", "active"), publicKeyDer: new Uint8Array() }), "ERR_INVALID_ARGUMENT");
      expect(await ds.listCaJournal()).toEqual([]);
    });
  });
});
