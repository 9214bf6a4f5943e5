/**
 * Datastore contract: the issuance inventory ("which live SVIDs chain to key
 * K, held by which agents") on every engine — expired and superseded
 * credentials do not count, a later issuance under another key supersedes,
 * admin mints never are, JWT-SVIDs are per audience; bad input is refused.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Datastore, IssuanceInput } from "../../../../server/datastore/index.js";
import { closeTempDatastore, datastoreEngines, openTempDatastore, rejection } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const H = 3_600_000;
const A1 = "spiffe://example.org/spire/agent/join_token/a1";
const A2 = "spiffe://example.org/spire/agent/join_token/a2";
const engines = await datastoreEngines();

describe.each(engines)("issuance inventory on %s", (engine) => {
  let ds: Datastore;
  let dir: string;
  beforeEach(async () => {
    ({ ds, dir } = await openTempDatastore("inventory", T0, engine));
  });
  afterEach(() => closeTempDatastore(ds, dir));

  let serial = 0x100;
  function rec(over: Partial<IssuanceInput>, startH = 0, ttlH = 2): IssuanceInput {
    const notBefore = new Date(T0.getTime() + startH * H);
    return {
      serial: (serial++).toString(16),
      kind: "x509-svid",
      spiffeId: "spiffe://example.org/web",
      entryId: "entry-web",
      agentId: A1,
      caKeyId: "K1",
      notBefore,
      notAfter: new Date(notBefore.getTime() + ttlH * H),
      issuedAt: notBefore,
      selectors: ["unix:uid:1000"],
      requestedBy: `agent:${A1}`,
      ...over,
    };
  }

  it("counts live, unsuperseded credentials under a key by agent and SPIFFE ID", async () => {
    const now = new Date(T0.getTime() + H);
    await ds.recordIssuances([
      rec({ serial: "a" }), // superseded by "b" (same entry and agent, later)
      rec({ serial: "b" }),
      rec({ serial: "c", agentId: A2, requestedBy: `agent:${A2}` }),
      rec({ serial: "d", entryId: "entry-db", spiffeId: "spiffe://example.org/db" }),
      rec({ serial: "e", entryId: "entry-old" }, -3), // expired
      rec({ serial: "f", entryId: "entry-moved" }),
      rec({ serial: "1f", entryId: "entry-moved", caKeyId: "K2" }), // replaced under the new key: "f" is no longer live
      rec({ serial: "10", entryId: null, agentId: null, requestedBy: "admin:local" }), // admin mints are never superseded
      rec({ serial: "11", entryId: null, agentId: null, requestedBy: "admin:local" }),
      rec({ serial: "12", kind: "agent-svid", entryId: null, spiffeId: A2, agentId: A2, requestedBy: `agent:${A2}` }),
      rec({ serial: "13", kind: "jwt-svid", audience: ["x"], jwtId: null }),
      rec({ serial: "14", kind: "jwt-svid", audience: ["y"], jwtId: null }), // another audience: both live
    ]);
    const inv = await ds.issuanceInventory({ caKeyId: "K1", now });
    expect(inv.live).toBe(8);
    expect(inv.svids.map((s) => s.serial).sort()).toEqual(["10", "11", "12", "13", "14", "b", "c", "d"]);
    expect(inv.agents).toEqual([
      { agentId: A1, count: 4 },
      { agentId: null, count: 2 },
      { agentId: A2, count: 2 },
    ]);
    expect(inv.spiffeIds).toContainEqual({ spiffeId: "spiffe://example.org/web", count: 6 });
    expect(inv.spiffeIds).toContainEqual({ spiffeId: "spiffe://example.org/db", count: 1 });
    const c = inv.svids.find((s) => s.serial === "c");
    expect(c).toEqual({ serial: "c", kind: "x509-svid", spiffeId: "spiffe://example.org/web", entryId: "entry-web", agentId: A2, notAfter: new Date(T0.getTime() + 2 * H) });
    expect(inv.svids.find((s) => s.serial === "10")?.entryId).toBeNull();

    const k2 = await ds.issuanceInventory({ caKeyId: "K2", now, limit: 0 });
    expect(k2).toMatchObject({ live: 1, svids: [], agents: [{ agentId: A1, count: 1 }] });
    // Later, everything has expired: the inventory has drained.
    expect(await ds.issuanceInventory({ caKeyId: "K1", now: new Date(T0.getTime() + 3 * H) })).toEqual({ caKeyId: "K1", live: 0, agents: [], spiffeIds: [], svids: [] });
    expect((await ds.issuanceInventory({ caKeyId: "K1", now, limit: 3 })).svids).toHaveLength(3);
    expect((await ds.issuanceInventory({ caKeyId: "nope", now })).live).toBe(0);
    // countOnly (the live-SVID gauge): the same count, nothing listed or grouped.
    expect(await ds.issuanceInventory({ caKeyId: "K1", now, countOnly: true })).toEqual({ caKeyId: "K1", live: 8, agents: [], spiffeIds: [], svids: [] });
    expect((await ds.issuanceInventory({ caKeyId: "K2", now, limit: 0, countOnly: true })).live).toBe(1);
    expect((await ds.issuanceInventory({ caKeyId: "K1", now: new Date(T0.getTime() + 3 * H), countOnly: true })).live).toBe(0);
  });

  it("refuses bad input, naming the field", async () => {
    await rejection(ds.issuanceInventory({ caKeyId: "", now: T0 }), "ERR_INVALID_ARGUMENT", "datastore: inventory caKeyId");
    await rejection(ds.issuanceInventory({ caKeyId: "K", now: new Date(Number.NaN) }), "ERR_INVALID_ARGUMENT", "datastore: inventory now");
    await rejection(ds.issuanceInventory({ caKeyId: "K", now: T0, limit: 10_001 }), "ERR_INVALID_ARGUMENT", "datastore: inventory limit");
    await rejection(ds.issuanceInventory({ caKeyId: "K", now: T0, limit: -1 }), "ERR_INVALID_ARGUMENT", "datastore: inventory limit");
    await rejection(ds.issuanceInventory({ caKeyId: "K", now: T0, countOnly: "yes" as unknown as boolean }), "ERR_INVALID_ARGUMENT", "datastore: inventory countOnly");
  });
});
