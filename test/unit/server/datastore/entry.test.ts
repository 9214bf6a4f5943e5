import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { formatSelector, parseSelector } from "../../../../common/selector.js";
import type { Datastore, EntryInput, RegistrationEntry } from "../../../../server/datastore/index.js";
import type { ErrorCode } from "../../../../spiffe/errors.js";
import { datastoreEngines, closeTempDatastore, openTempDatastore, rejection as expectRejection } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const AGENT = "spiffe://example.org/spire/agent/join_token/t1";
const sels = (...s: string[]) => s.map(parseSelector);

const engines = await datastoreEngines();

let dir: string;
let clock: ManualClock;
let ds: Datastore;

describe.each(engines)("datastore on %s", (engine) => {
  beforeEach(async () => {
    ({ dir, clock, ds } = await openTempDatastore("entries", T0, engine));
  });

  afterEach(() => closeTempDatastore(ds, dir));

  const rejection = (p: Promise<unknown>, code: ErrorCode) => expectRejection(p, code, "datastore: ");

  function entry(path: string, selectors: string[] = ["unix:uid:1000"], extra: Partial<EntryInput> = {}): EntryInput {
    return { spiffeId: `spiffe://example.org${path}`, parentId: AGENT, selectors: sels(...selectors), ...extra };
  }

  async function bundle(td: string): Promise<void> {
    await ds.setBundle({ trustDomain: td, document: '{"keys":[]}', sequence: "1" });
  }

  const ids = (entries: readonly RegistrationEntry[]) => entries.map((e) => e.id);

  describe("registration entries: create and get", () => {
    it("stores every field and returns it normalised, with revision 0 and the clock's time", async () => {
      await bundle("partner.org");
      await bundle("other.org");
      const created = await ds.createEntry({
        spiffeId: "spiffe://example.org/web",
        parentId: AGENT,
        selectors: sels("unix:uid:1000", "k8s:ns:prod", "unix:uid:1000"),
        x509SvidTtl: 3600,
        jwtSvidTtl: 300,
        dnsNames: ["web.example.org", "*.web.example.org", "web.example.org"],
        federatesWith: ["partner.org", "other.org"],
        admin: true,
        downstream: true,
        hint: "external",
        expiresAt: new Date("2031-01-01T00:00:00Z"),
      });
      expect(created.id).toMatch(/^[A-Za-z0-9_-]{22}$/);
      expect(created).toMatchObject({
        spiffeId: "spiffe://example.org/web",
        parentId: AGENT,
        x509SvidTtl: 3600,
        jwtSvidTtl: 300,
        dnsNames: ["web.example.org", "*.web.example.org"],
        federatesWith: ["other.org", "partner.org"],
        admin: true,
        downstream: true,
        hint: "external",
        expiresAt: new Date("2031-01-01T00:00:00Z"),
        createdAt: T0,
        updatedAt: T0,
        revision: 0,
      });
      expect(created.selectors.map(formatSelector)).toEqual(["k8s:ns:prod", "unix:uid:1000"]);
      expect(await ds.getEntry(created.id)).toEqual(created);
    });

    it("fills omitted optional fields with their zero values", async () => {
      const e = await ds.createEntry(entry("/minimal"));
      expect(e).toMatchObject({ x509SvidTtl: 0, jwtSvidTtl: 0, dnsNames: [], federatesWith: [], admin: false, downstream: false, hint: "", expiresAt: null });
    });

    it("returns undefined for an unknown ID", async () => {
      expect(await ds.getEntry("nope")).toBeUndefined();
    });

    it("accepts an operator-chosen ID and refuses a taken one", async () => {
      const e = await ds.createEntry(entry("/a", ["unix:uid:1"], { id: "cluster1.web-01" }));
      expect(e.id).toBe("cluster1.web-01");
      const err = await rejection(ds.createEntry(entry("/b", ["unix:uid:2"], { id: "cluster1.web-01" })), "ERR_ALREADY_EXISTS");
      expect(err.message).toMatch(/entry cluster1\.web-01 already exists/);
    });

    it("refuses a second entry with the same SPIFFE ID, parent and selector set, naming the existing entry", async () => {
      const first = await ds.createEntry(entry("/web", ["unix:uid:1", "unix:gid:2"]));
      const err = await rejection(ds.createEntry(entry("/web", ["unix:gid:2", "unix:uid:1"], { hint: "other" })), "ERR_ALREADY_EXISTS");
      expect(err.message).toContain(first.id);
      // A different selector set, parent or SPIFFE ID is a different entry.
      await ds.createEntry(entry("/web", ["unix:uid:1"]));
      await ds.createEntry(entry("/web", ["unix:uid:1", "unix:gid:2", "unix:gid:3"]));
      await ds.createEntry({ ...entry("/web", ["unix:uid:1", "unix:gid:2"]), parentId: "spiffe://example.org/other-agent" });
      await ds.createEntry(entry("/web2", ["unix:uid:1", "unix:gid:2"]));
      expect(await ds.countEntries()).toBe(5);
    });

    it("refuses federatesWith naming a trust domain without a stored bundle", async () => {
      const err = await rejection(ds.createEntry(entry("/fed", ["unix:uid:1"], { federatesWith: ["partner.org"] })), "ERR_INVALID_ARGUMENT");
      expect(err.message).toMatch(/partner\.org, which has no stored bundle/);
      await bundle("partner.org");
      expect((await ds.createEntry(entry("/fed", ["unix:uid:1"], { federatesWith: ["partner.org"] }))).federatesWith).toEqual(["partner.org"]);
    });
  });

  describe("registration entries: batch create", () => {
    it("commits the valid items and reports each failure in input order", async () => {
      const existing = await ds.createEntry(entry("/existing", ["unix:uid:9"]));
      const results = await ds.createEntries([
        entry("/a", ["unix:uid:1"]),
        entry("/not a valid path%", ["unix:uid:2"]),
        entry("/existing", ["unix:uid:9"]),
        entry("/b", ["unix:uid:3"]),
        entry("/b", ["unix:uid:3"]),
        entry("/c", ["unix:uid:4"], { federatesWith: ["nobundle.org"] }),
      ]);
      expect(results.map((r) => (r.ok ? "ok" : r.error.code))).toEqual([
        "ok",
        "ERR_INVALID_ARGUMENT",
        "ERR_ALREADY_EXISTS",
        "ok",
        "ERR_ALREADY_EXISTS",
        "ERR_INVALID_ARGUMENT",
      ]);
      const r2 = results[2];
      expect(r2 !== undefined && !r2.ok && r2.error.message.includes(existing.id)).toBe(true);
      const r4 = results[4];
      const r3 = results[3];
      expect(r3?.ok && r4 !== undefined && !r4.ok && r4.error.message.includes(r3.value.id)).toBe(true);
      expect(await ds.countEntries()).toBe(3);
      // One create event per committed entry, nothing for the failed ones.
      const events = await ds.listEvents(0, 100);
      expect(events.map((e) => e.op)).toEqual(["create", "create", "create"]);
      expect(events.slice(1).map((e) => e.objectId)).toEqual(results.filter((r) => r.ok).map((r) => (r.ok ? r.value.id : "")));
    });

    it("an empty batch is fine", async () => {
      expect(await ds.createEntries([])).toEqual([]);
    });
  });

  describe("registration entries: update with field mask", () => {
    it("changes only the masked fields, bumps the revision and updatedAt, keeps createdAt", async () => {
      const e = await ds.createEntry(entry("/web", ["unix:uid:1"], { hint: "h1", x509SvidTtl: 60, dnsNames: ["a.example.org"] }));
      clock.advance(5000);
      const u = await ds.updateEntry(e.id, { hint: "h2", x509SvidTtl: 120, admin: true }, ["hint", "x509SvidTtl"]);
      expect(u).toMatchObject({ hint: "h2", x509SvidTtl: 120, admin: false, dnsNames: ["a.example.org"], revision: 1, createdAt: T0 });
      expect(u.updatedAt).toEqual(new Date(T0.getTime() + 5000));
      expect(await ds.getEntry(e.id)).toEqual(u);
      const u2 = await ds.updateEntry(e.id, { selectors: sels("unix:uid:2", "unix:gid:2") }, ["selectors"]);
      expect(u2.revision).toBe(2);
      expect(u2.selectors.map(formatSelector)).toEqual(["unix:gid:2", "unix:uid:2"]);
      expect(u2.hint).toBe("h2");
    });

    it("without a mask, changes the fields present in the changes", async () => {
      const e = await ds.createEntry(entry("/web", ["unix:uid:1"], { hint: "h1", jwtSvidTtl: 30 }));
      const u = await ds.updateEntry(e.id, { jwtSvidTtl: 90 });
      expect(u).toMatchObject({ jwtSvidTtl: 90, hint: "h1", revision: 1 });
    });

    it("a masked optional field absent from the changes is reset to its zero value", async () => {
      const e = await ds.createEntry(entry("/web", ["unix:uid:1"], { hint: "h1", dnsNames: ["x.example.org"], expiresAt: new Date("2031-01-01T00:00:00Z") }));
      const u = await ds.updateEntry(e.id, {}, ["hint", "dnsNames", "expiresAt"]);
      expect(u).toMatchObject({ hint: "", dnsNames: [], expiresAt: null });
    });

    it("refuses a masked required field without a value, an empty mask, an unknown field", async () => {
      const e = await ds.createEntry(entry("/web"));
      expect((await rejection(ds.updateEntry(e.id, {}, ["selectors"]), "ERR_INVALID_ARGUMENT")).message).toMatch(/masks selectors but gives no value/);
      expect((await rejection(ds.updateEntry(e.id, {}, []), "ERR_INVALID_ARGUMENT")).message).toMatch(/empty field mask/);
      expect((await rejection(ds.updateEntry(e.id, {}), "ERR_INVALID_ARGUMENT")).message).toMatch(/empty field mask/);
      await rejection(ds.updateEntry(e.id, { revision: 7 } as never), "ERR_INVALID_ARGUMENT");
      await rejection(ds.updateEntry(e.id, { hint: "x" }, ["bogus" as never]), "ERR_INVALID_ARGUMENT");
      expect((await ds.getEntry(e.id))?.revision).toBe(0);
    });

    it("refuses an update that would duplicate another entry, leaving both unchanged", async () => {
      const a = await ds.createEntry(entry("/web", ["unix:uid:1"]));
      const b = await ds.createEntry(entry("/web", ["unix:uid:2"], { hint: "b" }));
      const err = await rejection(ds.updateEntry(b.id, { selectors: sels("unix:uid:1"), hint: "changed" }, ["selectors", "hint"]), "ERR_ALREADY_EXISTS");
      expect(err.message).toContain(a.id);
      expect(await ds.getEntry(b.id)).toEqual(b);
      // Updating an entry to its own identity is not a conflict.
      expect((await ds.updateEntry(a.id, { selectors: sels("unix:uid:1") })).revision).toBe(1);
    });

    it("an unknown entry is ERR_NOT_FOUND", async () => {
      await rejection(ds.updateEntry("missing", { hint: "x" }), "ERR_NOT_FOUND");
    });
  });

  describe("registration entries: delete and prune", () => {
    it("delete returns the entry, removes it and its selectors", async () => {
      const e = await ds.createEntry(entry("/web", ["unix:uid:1", "k8s:ns:a"]));
      expect(await ds.deleteEntry(e.id)).toEqual(e);
      expect(await ds.getEntry(e.id)).toBeUndefined();
      expect(await ds.countEntries({ selectors: { selectors: sels("unix:uid:1"), match: "any" } })).toBe(0);
      await rejection(ds.deleteEntry(e.id), "ERR_NOT_FOUND");
      // The same identity can be created again.
      await ds.createEntry(entry("/web", ["unix:uid:1", "k8s:ns:a"]));
    });

    it("pruneEntries deletes the entries that expired before the given time", async () => {
      const keep = await ds.createEntry(entry("/keep", ["unix:uid:1"]));
      const later = await ds.createEntry(entry("/later", ["unix:uid:2"], { expiresAt: new Date("2030-06-01T00:00:00Z") }));
      const gone = await ds.createEntry(entry("/gone", ["unix:uid:3"], { expiresAt: new Date("2030-02-01T00:00:00Z") }));
      expect(await ds.pruneEntries(new Date("2030-03-01T00:00:00Z"))).toBe(1);
      expect(ids((await ds.listEntries()).items)).toEqual([keep.id, later.id]);
      const last = (await ds.listEvents(0, 100)).at(-1);
      expect(last).toMatchObject({ kind: "entry", objectId: gone.id, op: "delete" });
    });
  });

  describe("registration entries: list filters", () => {
    let all: Record<string, RegistrationEntry>;
    beforeEach(async () => {
      await bundle("a.org");
      await bundle("b.org");
      await bundle("c.org");
      all = {
        uid: await ds.createEntry(entry("/uid", ["unix:uid:1"])),
        uidGid: await ds.createEntry(entry("/uid-gid", ["unix:uid:1", "unix:gid:1"], { federatesWith: ["a.org"] })),
        uidGidNs: await ds.createEntry(entry("/uid-gid-ns", ["unix:uid:1", "unix:gid:1", "k8s:ns:prod"], { federatesWith: ["a.org", "b.org"] })),
        ns: await ds.createEntry(entry("/ns", ["k8s:ns:prod"], { hint: "internal", downstream: true })),
        other: await ds.createEntry({ ...entry("/uid", ["unix:uid:1"]), parentId: "spiffe://example.org/node-b", federatesWith: ["c.org"] }),
      };
    });
    const list = async (filter: Parameters<Datastore["listEntries"]>[0]) => ids((await ds.listEntries(filter)).items);
    const names = (...keys: string[]) => keys.map((k) => (all[k] as RegistrationEntry).id);

    it("by SPIFFE ID, parent ID, hint and downstream", async () => {
      expect(await list({ filter: { spiffeId: "spiffe://example.org/uid" } })).toEqual(names("uid", "other"));
      expect(await list({ filter: { parentId: "spiffe://example.org/node-b" } })).toEqual(names("other"));
      expect(await list({ filter: { spiffeId: "spiffe://example.org/uid", parentId: AGENT } })).toEqual(names("uid"));
      expect(await list({ filter: { hint: "internal" } })).toEqual(names("ns"));
      expect(await list({ filter: { downstream: true } })).toEqual(names("ns"));
      expect(await list({ filter: { downstream: false } })).toEqual(names("uid", "uidGid", "uidGidNs", "other"));
    });

    it("by selectors: exact, subset, superset, any", async () => {
      const f = (match: "exact" | "subset" | "superset" | "any", ...s: string[]) => list({ filter: { selectors: { selectors: sels(...s), match } } });
      expect(await f("exact", "unix:gid:1", "unix:uid:1")).toEqual(names("uidGid"));
      expect(await f("exact", "unix:uid:1")).toEqual(names("uid", "other"));
      // subset: the entries a workload with these selectors gets.
      expect(await f("subset", "unix:uid:1", "unix:gid:1")).toEqual(names("uid", "uidGid", "other"));
      expect(await f("subset", "unix:uid:1", "unix:gid:1", "k8s:ns:prod", "k8s:sa:web")).toEqual(names("uid", "uidGid", "uidGidNs", "ns", "other"));
      expect(await f("subset", "unix:gid:1")).toEqual([]);
      expect(await f("superset", "unix:gid:1")).toEqual(names("uidGid", "uidGidNs"));
      expect(await f("superset", "unix:uid:1", "k8s:ns:prod")).toEqual(names("uidGidNs"));
      expect(await f("any", "k8s:ns:prod", "unix:gid:1")).toEqual(names("uidGid", "uidGidNs", "ns"));
      expect(await f("any", "k8s:ns:dev")).toEqual([]);
    });

    it("by federated trust domains", async () => {
      const f = (match: "exact" | "subset" | "superset" | "any", ...td: string[]) => list({ filter: { federatesWith: { trustDomains: td, match } } });
      expect(await f("exact", "a.org")).toEqual(names("uidGid"));
      expect(await f("superset", "a.org")).toEqual(names("uidGid", "uidGidNs"));
      expect(await f("any", "b.org", "c.org")).toEqual(names("uidGidNs", "other"));
      // subset includes entries that federate with nothing.
      expect(await f("subset", "a.org")).toEqual(names("uid", "uidGid", "ns"));
    });

    it("filters combine, and count agrees with list", async () => {
      const filter = { parentId: AGENT, selectors: { selectors: sels("unix:uid:1"), match: "superset" as const } };
      expect(await list({ filter })).toEqual(names("uid", "uidGid", "uidGidNs"));
      expect(await ds.countEntries(filter)).toBe(3);
      expect(await ds.countEntries()).toBe(5);
    });

    it("refuses invalid filters", async () => {
      await rejection(ds.listEntries({ filter: { spiffeId: "http://x" } }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.listEntries({ filter: { selectors: { selectors: [], match: "any" } } }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.listEntries({ filter: { selectors: { selectors: sels("a:b"), match: "most" as never } } }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.listEntries({ filter: { federatesWith: { trustDomains: ["spiffe://a.org"], match: "any" } } }), "ERR_INVALID_ARGUMENT");
    });
  });

  describe("registration entries: pagination", () => {
    it("walks all entries in creation order; the last page has no token", async () => {
      const created: string[] = [];
      for (let i = 0; i < 25; i++) created.push((await ds.createEntry(entry(`/w${i}`, [`unix:uid:${i}`]))).id);
      const seen: string[] = [];
      const sizes: number[] = [];
      let token: string | undefined;
      do {
        const page = await ds.listEntries(token === undefined ? { pageSize: 10 } : { pageSize: 10, pageToken: token });
        seen.push(...ids(page.items));
        sizes.push(page.items.length);
        token = page.nextPageToken;
      } while (token !== undefined);
      expect(sizes).toEqual([10, 10, 5]);
      expect(seen).toEqual(created);
      expect((await ds.listEntries()).items).toHaveLength(25);
    });

    it("a page that ends exactly at the last entry carries no token", async () => {
      for (let i = 0; i < 4; i++) await ds.createEntry(entry(`/w${i}`, [`unix:uid:${i}`]));
      const p1 = await ds.listEntries({ pageSize: 2 });
      expect(p1.nextPageToken).toBeDefined();
      const p2 = await ds.listEntries({ pageSize: 2, pageToken: p1.nextPageToken as string });
      expect(p2.items).toHaveLength(2);
      expect(p2.nextPageToken).toBeUndefined();
    });

    it("is stable across deletes and inserts between pages", async () => {
      const created: string[] = [];
      for (let i = 0; i < 6; i++) created.push((await ds.createEntry(entry(`/w${i}`, [`unix:uid:${i}`]))).id);
      const p1 = await ds.listEntries({ pageSize: 3 });
      await ds.deleteEntry(created[1] as string);
      await ds.deleteEntry(created[4] as string);
      const late = await ds.createEntry(entry("/late", ["unix:uid:99"]));
      const p2 = await ds.listEntries({ pageSize: 3, pageToken: p1.nextPageToken as string });
      expect(ids(p2.items)).toEqual([created[3], created[5], late.id]);
      // Each entry carries its own selectors (an unfiltered page reads them by row range).
      for (const e of p2.items) expect(e).toEqual(await ds.getEntry(e.id));
    });

    it("paginates filtered lists", async () => {
      for (let i = 0; i < 6; i++) await ds.createEntry(entry(`/w${i}`, [`unix:uid:${i}`, i % 2 === 0 ? "k8s:ns:even" : "k8s:ns:odd"]));
      const filter = { selectors: { selectors: sels("k8s:ns:even"), match: "superset" as const } };
      const p1 = await ds.listEntries({ filter, pageSize: 2 });
      const p2 = await ds.listEntries({ filter, pageSize: 2, pageToken: p1.nextPageToken as string });
      expect([...p1.items, ...p2.items].map((e) => e.spiffeId)).toEqual(["/w0", "/w2", "/w4"].map((p) => `spiffe://example.org${p}`));
      expect(p2.nextPageToken).toBeUndefined();
    });

    it("refuses malformed tokens, tokens of another list and bad page sizes", async () => {
      await ds.createAgent({ spiffeId: AGENT, attestationType: "join_token", certSerial: "01", certNotAfter: T0 });
      await ds.createAgent({ spiffeId: `${AGENT}x`, attestationType: "join_token", certSerial: "02", certNotAfter: T0 });
      const agentToken = (await ds.listAgents({ pageSize: 1 })).nextPageToken as string;
      expect(agentToken).toBeDefined();
      await rejection(ds.listEntries({ pageToken: agentToken }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.listEntries({ pageToken: "garbage" }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.listEntries({ pageSize: 0 }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.listEntries({ pageSize: 1.5 }), "ERR_INVALID_ARGUMENT");
    });
  });

  describe("registration entries: validation at the boundary", () => {
    const bad: Array<[string, EntryInput]> = [
      ["SPIFFE ID", entry("/ok", ["unix:uid:1"], { spiffeId: "spiffe://Example.org/x" })],
      ["parent ID", entry("/ok", ["unix:uid:1"], { parentId: "https://example.org/agent" })],
      ["no selectors", entry("/ok", [])],
      ["hand-built selector", entry("/ok", [], { selectors: [{ type: "Unix", value: "uid:1" } as never] })],
      ["negative TTL", entry("/ok", ["unix:uid:1"], { x509SvidTtl: -1 })],
      ["fractional TTL", entry("/ok", ["unix:uid:1"], { jwtSvidTtl: 1.5 })],
      ["huge TTL", entry("/ok", ["unix:uid:1"], { jwtSvidTtl: 2 ** 31 })],
      ["long hint", entry("/ok", ["unix:uid:1"], { hint: "h".repeat(1025) })],
      ["hint with control character", entry("/ok", ["unix:uid:1"], { hint: "a\nb" })],
      ["DNS name with space", entry("/ok", ["unix:uid:1"], { dnsNames: ["bad name.example.org"] })],
      ["DNS name with empty label", entry("/ok", ["unix:uid:1"], { dnsNames: ["a..example.org"] })],
      ["DNS name too long", entry("/ok", ["unix:uid:1"], { dnsNames: [`${"a".repeat(60)}.`.repeat(5) + "org"] })],
      ["wildcard not leftmost", entry("/ok", ["unix:uid:1"], { dnsNames: ["a.*.example.org"] })],
      ["federatesWith URI", entry("/ok", ["unix:uid:1"], { federatesWith: ["spiffe://partner.org"] })],
      ["entry ID with slash", entry("/ok", ["unix:uid:1"], { id: "a/b" })],
      ["invalid expiry", entry("/ok", ["unix:uid:1"], { expiresAt: new Date(Number.NaN) })],
    ];

    it.each(bad)("refuses %s and writes nothing", async (_name, input) => {
      await rejection(ds.createEntry(input), "ERR_INVALID_ARGUMENT");
      expect(await ds.countEntries()).toBe(0);
      expect(await ds.lastEventId()).toBe(0);
    });

    it("the hint limit is 1024 bytes, inclusive", async () => {
      expect((await ds.createEntry(entry("/ok", ["unix:uid:1"], { hint: "h".repeat(1024) }))).hint).toHaveLength(1024);
    });

    it("a refused update leaves the entry and the feed unchanged", async () => {
      const e = await ds.createEntry(entry("/web"));
      const before = await ds.lastEventId();
      await rejection(ds.updateEntry(e.id, { x509SvidTtl: -5, hint: "new" }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.updateEntry(e.id, { dnsNames: ["-bad-.example.org"] }), "ERR_INVALID_ARGUMENT");
      expect(await ds.getEntry(e.id)).toEqual(e);
      expect(await ds.lastEventId()).toBe(before);
    });

    it("a closed datastore refuses calls with ERR_UNAVAILABLE", async () => {
      await ds.close();
      await rejection(ds.getEntry("x"), "ERR_UNAVAILABLE");
      await rejection(ds.createEntry(entry("/web")), "ERR_UNAVAILABLE");
      await ds.close();
    });
  });
});
