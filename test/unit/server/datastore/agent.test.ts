import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { formatSelector, parseSelector } from "../../../../common/selector.js";
import type { AgentInput, Datastore } from "../../../../server/datastore/index.js";
import { datastoreEngines, closeTempDatastore, openTempDatastore, rejection } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const HOUR = 3_600_000;
const sels = (...s: string[]) => s.map(parseSelector);

const engines = await datastoreEngines();

let dir: string;
let clock: ManualClock;
let ds: Datastore;

describe.each(engines)("datastore on %s", (engine) => {
  beforeEach(async () => {
    ({ dir, clock, ds } = await openTempDatastore("agents", T0, engine));
  });

  afterEach(() => closeTempDatastore(ds, dir));

  function agent(name: string, extra: Partial<AgentInput> = {}): AgentInput {
    return {
      spiffeId: `spiffe://example.org/spire/agent/${name}`,
      attestationType: "join_token",
      certSerial: "0a1b",
      certNotAfter: new Date(T0.getTime() + HOUR),
      ...extra,
    };
  }

  describe("attested agents", () => {
    it("create and get round-trip every field", async () => {
      const a = await ds.createAgent(
        agent("n1", {
          attestationType: "tpm",
          selectors: sels("tpm:pub_hash:abc", "tpm:ek:1"),
          newCertSerial: "0c",
          newCertNotAfter: new Date(T0.getTime() + 2 * HOUR),
          canReattest: true,
        }),
      );
      expect(a).toMatchObject({
        spiffeId: "spiffe://example.org/spire/agent/n1",
        attestationType: "tpm",
        certSerial: "0a1b",
        certNotAfter: new Date(T0.getTime() + HOUR),
        newCertSerial: "0c",
        newCertNotAfter: new Date(T0.getTime() + 2 * HOUR),
        canReattest: true,
        banned: false,
        createdAt: T0,
        updatedAt: T0,
      });
      expect(a.selectors.map(formatSelector)).toEqual(["tpm:ek:1", "tpm:pub_hash:abc"]);
      expect(await ds.getAgent(a.spiffeId)).toEqual(a);
      expect(await ds.getAgent("spiffe://example.org/spire/agent/unknown")).toBeUndefined();
    });

    it("refuses a second agent with the same SPIFFE ID, and invalid input without writing", async () => {
      await ds.createAgent(agent("n1"));
      await rejection(ds.createAgent(agent("n1", { attestationType: "tpm" })), "ERR_ALREADY_EXISTS");
      await rejection(ds.createAgent(agent("n2", { spiffeId: "not-an-id" })), "ERR_INVALID_ARGUMENT");
      await rejection(ds.createAgent(agent("n2", { certSerial: "" })), "ERR_INVALID_ARGUMENT");
      await rejection(ds.createAgent(agent("n2", { attestationType: "has space" })), "ERR_INVALID_ARGUMENT");
      await rejection(ds.createAgent(agent("n2", { certNotAfter: new Date("nope") })), "ERR_INVALID_ARGUMENT");
      expect(await ds.countAgents()).toBe(1);
      expect((await ds.listEvents(0, 10)).map((e) => e.op)).toEqual(["create"]);
    });

    it("update changes only the masked fields (renewal: new serial, then promote it)", async () => {
      const a = await ds.createAgent(agent("n1", { selectors: sels("x:1") }));
      clock.advance(1000);
      const renewing = await ds.updateAgent(a.spiffeId, { newCertSerial: "0d", newCertNotAfter: new Date(T0.getTime() + 3 * HOUR), attestationType: "ignored" }, [
        "newCertSerial",
        "newCertNotAfter",
      ]);
      expect(renewing).toMatchObject({ certSerial: "0a1b", newCertSerial: "0d", attestationType: "join_token", updatedAt: new Date(T0.getTime() + 1000) });
      const promoted = await ds.updateAgent(a.spiffeId, { certSerial: "0d", certNotAfter: new Date(T0.getTime() + 3 * HOUR) }, [
        "certSerial",
        "certNotAfter",
        "newCertSerial",
        "newCertNotAfter",
      ]);
      expect(promoted).toMatchObject({ certSerial: "0d", newCertSerial: null, newCertNotAfter: null });
      const reselected = await ds.updateAgent(a.spiffeId, { selectors: sels("x:2", "y:1") });
      expect(reselected.selectors.map(formatSelector)).toEqual(["x:2", "y:1"]);
      await rejection(ds.updateAgent("spiffe://example.org/nope", { canReattest: true }), "ERR_NOT_FOUND");
      await rejection(ds.updateAgent(a.spiffeId, {}, ["certSerial"]), "ERR_INVALID_ARGUMENT");
    });

    it("ban sets the flag and clears the serials; an unbanned agent needs a serial again", async () => {
      const a = await ds.createAgent(agent("n1", { newCertSerial: "0e" }));
      const banned = await ds.banAgent(a.spiffeId);
      expect(banned).toMatchObject({ banned: true, certSerial: "", newCertSerial: null, newCertNotAfter: null });
      expect(await ds.getAgent(a.spiffeId)).toEqual(banned);
      await rejection(ds.updateAgent(a.spiffeId, { banned: false }), "ERR_INVALID_ARGUMENT");
      expect((await ds.updateAgent(a.spiffeId, { banned: false, certSerial: "0f" })).banned).toBe(false);
      await rejection(ds.banAgent("spiffe://example.org/nope"), "ERR_NOT_FOUND");
    });

    it("delete (evict) returns the agent and removes it", async () => {
      const a = await ds.createAgent(agent("n1", { selectors: sels("x:1") }));
      expect(await ds.deleteAgent(a.spiffeId)).toEqual(a);
      expect(await ds.getAgent(a.spiffeId)).toBeUndefined();
      expect(await ds.countAgents({ selectors: { selectors: sels("x:1"), match: "any" } })).toBe(0);
      await rejection(ds.deleteAgent(a.spiffeId), "ERR_NOT_FOUND");
      const ops = (await ds.listEvents(0, 10)).map((e) => `${e.kind}:${e.op}:${e.objectId}`);
      expect(ops).toEqual([`agent:create:${a.spiffeId}`, `agent:delete:${a.spiffeId}`]);
    });

    it("list filters: attestation type, banned, expiry, selectors; with pagination", async () => {
      const a1 = await ds.createAgent(agent("a1", { selectors: sels("aws:az:eu-1", "aws:tag:web") }));
      const a2 = await ds.createAgent(agent("a2", { attestationType: "tpm", certNotAfter: new Date(T0.getTime() + 10 * HOUR), selectors: sels("aws:az:eu-1") }));
      const a3 = await ds.createAgent(agent("a3", { canReattest: true }));
      await ds.banAgent(a3.spiffeId);
      const list = async (filter: Parameters<Datastore["listAgents"]>[0]) => (await ds.listAgents(filter)).items.map((a) => a.spiffeId);
      expect(await list({ filter: { attestationType: "tpm" } })).toEqual([a2.spiffeId]);
      expect(await list({ filter: { banned: true } })).toEqual([a3.spiffeId]);
      expect(await list({ filter: { banned: false } })).toEqual([a1.spiffeId, a2.spiffeId]);
      expect(await list({ filter: { canReattest: true } })).toEqual([a3.spiffeId]);
      expect(await list({ filter: { expiresBefore: new Date(T0.getTime() + 2 * HOUR) } })).toEqual([a1.spiffeId, a3.spiffeId]);
      expect(await list({ filter: { selectors: { selectors: sels("aws:az:eu-1"), match: "superset" } } })).toEqual([a1.spiffeId, a2.spiffeId]);
      expect(await list({ filter: { selectors: { selectors: sels("aws:tag:web"), match: "any" } } })).toEqual([a1.spiffeId]);
      expect(await list({ filter: { selectors: { selectors: sels("aws:az:eu-1", "aws:tag:web"), match: "exact" } } })).toEqual([a1.spiffeId]);
      // subset: the agent without selectors has an empty set, a subset of anything.
      expect(await list({ filter: { selectors: { selectors: sels("aws:az:eu-1"), match: "subset" } } })).toEqual([a2.spiffeId, a3.spiffeId]);
      expect(await ds.countAgents({ attestationType: "join_token" })).toBe(2);
      const p1 = await ds.listAgents({ pageSize: 2 });
      const p2 = await ds.listAgents({ pageSize: 2, pageToken: p1.nextPageToken as string });
      expect([...p1.items, ...p2.items].map((a) => a.spiffeId)).toEqual([a1.spiffeId, a2.spiffeId, a3.spiffeId]);
      expect(p2.nextPageToken).toBeUndefined();
    });
  });
});
