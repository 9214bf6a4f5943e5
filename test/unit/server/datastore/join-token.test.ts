import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { createJoinTokenServerAttestor, type JoinTokenStore } from "../../../../plugins/nodeattestor/join_token/server.js";
import type { AgentInput, Datastore } from "../../../../server/datastore/index.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import { datastoreEngines, closeTempDatastore, openTempDatastore, rejection, type TempDatastore } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const MINUTE = 60_000;

const engines = await datastoreEngines();

let dir: string;
let path: string;
let clock: ManualClock;
let ds: Datastore;
let reopen: TempDatastore["reopen"];

describe.each(engines)("datastore on %s", (engine) => {
  beforeEach(async () => {
    ({ dir, path, clock, ds, reopen } = await openTempDatastore("tokens", T0, engine));
  });

  afterEach(() => closeTempDatastore(ds, dir));

  const inTen = () => new Date(clock.now().getTime() + 10 * MINUTE);
  const agent = (spiffeId: string, extra: Partial<AgentInput> = {}): AgentInput => ({
    spiffeId,
    attestationType: "join_token",
    certSerial: "0a1b",
    certNotAfter: new Date(T0.getTime() + 60 * MINUTE),
    ...extra,
  });

  describe("join tokens", () => {
    it("knows which agent IDs pending tokens will give, by chosen ID or by the default token path, until used or expired", async () => {
      await ds.createJoinToken({ token: "tok-default-1", expiresAt: new Date(T0.getTime() + 60_000) });
      await ds.createJoinToken({ token: "tok-chosen-1", expiresAt: new Date(T0.getTime() + 60_000), agentId: "spiffe://example.org/node/db" });
      expect(await ds.hasPendingJoinTokenFor("spiffe://example.org/spire/agent/join_token/tok-default-1")).toBe(true);
      expect(await ds.hasPendingJoinTokenFor("spiffe://example.org/node/db")).toBe(true);
      // A chosen ID replaces the default one.
      expect(await ds.hasPendingJoinTokenFor("spiffe://example.org/spire/agent/join_token/tok-chosen-1")).toBe(false);
      expect(await ds.hasPendingJoinTokenFor("spiffe://example.org/spire/agent/join_token/unknown")).toBe(false);
      await ds.consumeJoinToken("tok-default-1");
      expect(await ds.hasPendingJoinTokenFor("spiffe://example.org/spire/agent/join_token/tok-default-1")).toBe(false);
      clock.advance(60_000);
      expect(await ds.hasPendingJoinTokenFor("spiffe://example.org/node/db")).toBe(false);
    });

    it("consumes a token once, returning its expiry and agent ID", async () => {
      await ds.createJoinToken({ token: "tok-1", expiresAt: inTen(), agentId: "spiffe://example.org/node/db-1" });
      await ds.createJoinToken({ token: "tok-2", expiresAt: inTen() });
      expect(await ds.consumeJoinToken("tok-1")).toEqual({ expiresAt: inTen(), agentId: "spiffe://example.org/node/db-1" });
      expect(await ds.consumeJoinToken("tok-2")).toEqual({ expiresAt: inTen() });
      const err = await rejection(ds.consumeJoinToken("tok-1"), "ERR_NOT_FOUND");
      expect(err.message).toBe("datastore: join token not found or already used");
      expect((await rejection(ds.consumeJoinToken("never"), "ERR_NOT_FOUND")).message).toBe("datastore: join token not found or already used");
    });

    it("an expired token is refused with its own message, and stays refused until pruned", async () => {
      await ds.createJoinToken({ token: "tok", expiresAt: inTen() });
      clock.advance(10 * MINUTE); // expiry is exclusive: at expiresAt the token is expired
      expect((await rejection(ds.consumeJoinToken("tok"), "ERR_PERMISSION_DENIED")).message).toBe("datastore: join token expired");
      await rejection(ds.consumeJoinToken("tok"), "ERR_PERMISSION_DENIED");
      expect(await ds.pruneJoinTokens(clock.now())).toBe(1);
      await rejection(ds.consumeJoinToken("tok"), "ERR_NOT_FOUND");
    });

    it("an explicit time overrides the clock", async () => {
      await ds.createJoinToken({ token: "tok", expiresAt: inTen() });
      await rejection(ds.consumeJoinToken("tok", new Date(T0.getTime() + 11 * MINUTE)), "ERR_PERMISSION_DENIED");
      expect((await ds.consumeJoinToken("tok", new Date(T0.getTime() + 9 * MINUTE))).expiresAt).toEqual(inTen());
    });

    it("prune removes only expired tokens", async () => {
      await ds.createJoinToken({ token: "old", expiresAt: new Date(T0.getTime() + MINUTE) });
      await ds.createJoinToken({ token: "new", expiresAt: inTen() });
      expect(await ds.pruneJoinTokens(new Date(T0.getTime() + 2 * MINUTE))).toBe(1);
      await rejection(ds.consumeJoinToken("old"), "ERR_NOT_FOUND");
      await ds.consumeJoinToken("new");
    });

    it("refuses duplicates and malformed tokens", async () => {
      await ds.createJoinToken({ token: "tok", expiresAt: inTen() });
      await rejection(ds.createJoinToken({ token: "tok", expiresAt: inTen() }), "ERR_ALREADY_EXISTS");
      await rejection(ds.createJoinToken({ token: "a/b", expiresAt: inTen() }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.createJoinToken({ token: "", expiresAt: inTen() }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.createJoinToken({ token: "x".repeat(257), expiresAt: inTen() }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.createJoinToken({ token: "ok", expiresAt: inTen(), agentId: "spiffe://bad/%" }), "ERR_INVALID_ARGUMENT");
      await rejection(ds.consumeJoinToken("a b"), "ERR_INVALID_ARGUMENT");
    });

    it.skipIf(engine !== "sqlite")("stores only a hash of the token", async () => {
      await ds.createJoinToken({ token: "super-secret-token", expiresAt: inTen() });
      const raw = new Database(path, { readonly: true });
      try {
        const rows = raw.prepare("SELECT * FROM join_tokens").all();
        expect(rows).toHaveLength(1);
        expect(JSON.stringify(rows)).not.toContain("super-secret-token");
      } finally {
        raw.close();
      }
    });

    it("50 concurrent consumers of one token: exactly one wins", async () => {
      await ds.createJoinToken({ token: "race", expiresAt: inTen() });
      const results = await Promise.allSettled(Array.from({ length: 50 }, () => ds.consumeJoinToken("race")));
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      const losers = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
      expect(losers).toHaveLength(49);
      for (const l of losers) expect(isSigilError(l.reason, "ERR_NOT_FOUND")).toBe(true);
    });

    it("two datastore instances on the same database: each token is consumed exactly once", async () => {
      const other = await reopen();
      try {
        const tokens = Array.from({ length: 20 }, (_, i) => `tok-${i}`);
        for (const t of tokens) await ds.createJoinToken({ token: t, expiresAt: inTen() });
        const attempts = tokens.flatMap((t) => [ds.consumeJoinToken(t), other.consumeJoinToken(t), other.consumeJoinToken(t), ds.consumeJoinToken(t)]);
        const results = await Promise.allSettled(attempts);
        for (let i = 0; i < tokens.length; i++) {
          const mine = results.slice(i * 4, i * 4 + 4);
          expect(mine.filter((r) => r.status === "fulfilled")).toHaveLength(1);
        }
      } finally {
        await other.close();
      }
    });

    it("serves the join_token node attestor directly: it checks the token, the agent record's creation spends it", async () => {
      const store: JoinTokenStore = ds;
      const attestor = createJoinTokenServerAttestor({ trustDomain: parseTrustDomain("example.org"), store });
      await ds.createJoinToken({ token: "boot", expiresAt: inTen() });
      const result = await attestor.attest(Buffer.from("boot"), async () => new Uint8Array());
      expect(result.agentId.toString()).toBe("spiffe://example.org/spire/agent/join_token/boot");
      expect(result.joinToken).toBe("boot");
      await ds.createAgent(agent(result.agentId.toString(), { joinToken: result.joinToken }));
      await expect(attestor.attest(Buffer.from("boot"), async () => new Uint8Array())).rejects.toThrow(/not found or already used/);
    });
  });

  describe("peeking at a join token", () => {
    it("returns what consuming would, without spending the token", async () => {
      await ds.createJoinToken({ token: "tok-1", expiresAt: inTen(), agentId: "spiffe://example.org/spire/agent/node/db-1" });
      await ds.createJoinToken({ token: "tok-2", expiresAt: inTen() });
      const chosen = { expiresAt: inTen(), agentId: "spiffe://example.org/spire/agent/node/db-1" };
      expect(await ds.peekJoinToken("tok-1")).toEqual(chosen);
      expect(await ds.peekJoinToken("tok-1")).toEqual(chosen);
      expect(await ds.peekJoinToken("tok-2")).toEqual({ expiresAt: inTen() });
      expect(await ds.hasPendingJoinTokenFor("spiffe://example.org/spire/agent/node/db-1")).toBe(true);
      expect(await ds.consumeJoinToken("tok-1")).toEqual(chosen);
      expect((await rejection(ds.peekJoinToken("tok-1"), "ERR_NOT_FOUND")).message).toBe("datastore: join token not found or already used");
      expect((await rejection(ds.peekJoinToken("never"), "ERR_NOT_FOUND")).message).toBe("datastore: join token not found or already used");
      await rejection(ds.peekJoinToken("a b"), "ERR_INVALID_ARGUMENT");
    });

    it("refuses an expired token as consuming would, on the clock or at an explicit time", async () => {
      await ds.createJoinToken({ token: "tok", expiresAt: inTen() });
      expect((await rejection(ds.peekJoinToken("tok", new Date(T0.getTime() + 10 * MINUTE)), "ERR_PERMISSION_DENIED")).message).toBe("datastore: join token expired");
      expect((await ds.peekJoinToken("tok", new Date(T0.getTime() + 9 * MINUTE))).expiresAt).toEqual(inTen());
      clock.advance(10 * MINUTE);
      expect((await rejection(ds.peekJoinToken("tok"), "ERR_PERMISSION_DENIED")).message).toBe("datastore: join token expired");
    });
  });

  describe("creating an agent that spends a join token", () => {
    it("spends the token in the same write: the agent exists and the token is used", async () => {
      await ds.createJoinToken({ token: "tok", expiresAt: inTen() });
      const created = await ds.createAgent(agent("spiffe://example.org/spire/agent/join_token/tok", { joinToken: "tok" }));
      expect(await ds.getAgent(created.spiffeId)).toEqual(created);
      expect(await ds.hasPendingJoinTokenFor(created.spiffeId)).toBe(false);
      await rejection(ds.peekJoinToken("tok"), "ERR_NOT_FOUND");
      expect((await ds.listEvents(0, 10)).map((e) => `${e.kind}:${e.op}`)).toEqual(["agent:create"]);
    });

    it("a missing, used or expired token (on the transaction's clock) creates no agent", async () => {
      expect((await rejection(ds.createAgent(agent("spiffe://example.org/spire/agent/a", { joinToken: "never" })), "ERR_NOT_FOUND")).message).toBe(
        "datastore: join token not found or already used",
      );
      await ds.createJoinToken({ token: "once", expiresAt: inTen() });
      await ds.createAgent(agent("spiffe://example.org/spire/agent/b", { joinToken: "once" }));
      await rejection(ds.createAgent(agent("spiffe://example.org/spire/agent/c", { joinToken: "once" })), "ERR_NOT_FOUND");
      await ds.createJoinToken({ token: "late", expiresAt: inTen() });
      clock.advance(10 * MINUTE);
      expect((await rejection(ds.createAgent(agent("spiffe://example.org/spire/agent/d", { joinToken: "late" })), "ERR_PERMISSION_DENIED")).message).toBe("datastore: join token expired");
      await rejection(ds.createAgent(agent("spiffe://example.org/spire/agent/e", { joinToken: "a b" })), "ERR_INVALID_ARGUMENT");
      expect((await ds.listAgents()).items.map((a) => a.spiffeId)).toEqual(["spiffe://example.org/spire/agent/b"]);
      // The expired token is still there to report as expired (until pruned).
      await rejection(ds.peekJoinToken("late"), "ERR_PERMISSION_DENIED");
    });

    it("a create refused for the agent leaves the token usable", async () => {
      await ds.createAgent(agent("spiffe://example.org/spire/agent/taken"));
      await ds.createJoinToken({ token: "tok", expiresAt: inTen() });
      await rejection(ds.createAgent(agent("spiffe://example.org/spire/agent/taken", { joinToken: "tok" })), "ERR_ALREADY_EXISTS");
      expect(await ds.peekJoinToken("tok")).toEqual({ expiresAt: inTen() });
      await ds.createAgent(agent("spiffe://example.org/spire/agent/retry", { joinToken: "tok" }));
      expect(await ds.countAgents()).toBe(2);
    });

    it("concurrent creates spending one token, through two instances and with different agent IDs: exactly one agent", async () => {
      const other = await reopen();
      try {
        for (let round = 0; round < 3; round++) {
          const token = `race-${round}`;
          await ds.createJoinToken({ token, expiresAt: inTen() });
          const results = await Promise.allSettled(
            [ds, other, ds, other].map((store, i) => store.createAgent(agent(`spiffe://example.org/spire/agent/r${round}/n${i}`, { joinToken: token }))),
          );
          expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
          for (const r of results) if (r.status === "rejected") expect(isSigilError(r.reason, "ERR_NOT_FOUND"), String(r.reason)).toBe(true);
          expect((await ds.listAgents({ filter: { attestationType: "join_token" } })).items.filter((a) => a.spiffeId.includes(`/r${round}/`))).toHaveLength(1);
        }
      } finally {
        await other.close();
      }
    });
  });
});
