import { describe, expect, it } from "vitest";
import { createJoinTokenAgentAttestor } from "../../../../plugins/nodeattestor/join_token/agent.js";
import { createJoinTokenServerAttestor, type JoinTokenStore } from "../../../../plugins/nodeattestor/join_token/server.js";
import { isSigilError, SigilError } from "../../../../spiffe/errors.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";

const td = parseTrustDomain("example.org");
const noChallenge = async (): Promise<Uint8Array> => {
  throw new Error("join_token never challenges");
};

/** A token store whose tokens stay put (the attestor only checks them); `refuse` answers a token with that error. */
function store(tokens: Record<string, { agentId?: string }>, refuse: Record<string, SigilError> = {}): JoinTokenStore & { peeked: string[] } {
  const peeked: string[] = [];
  return {
    peeked,
    async peekJoinToken(token: string) {
      peeked.push(token);
      const refusal = refuse[token];
      if (refusal) throw refusal;
      const t = tokens[token];
      if (!t) throw new SigilError("ERR_NOT_FOUND", "datastore: join token not found or already used");
      return t;
    },
  };
}

describe("join_token node attestor", () => {
  it("round trip: the agent half's payload attests to spiffe://td/spire/agent/join_token/<token>", async () => {
    const s = store({ "tok-1": {} });
    const server = createJoinTokenServerAttestor({ trustDomain: td, store: s });
    const agent = createJoinTokenAgentAttestor({ join_token: "tok-1" });
    const result = await server.attest(await agent.payload(), noChallenge);
    expect(result.agentId.toString()).toBe("spiffe://example.org/spire/agent/join_token/tok-1");
    expect(result.canReattest).toBe(false);
    expect(result.joinToken).toBe("tok-1");
    expect(s.peeked).toEqual(["tok-1"]);
  });

  it("uses the operator-chosen agent ID stored with the token", async () => {
    const server = createJoinTokenServerAttestor({ trustDomain: td, store: store({ t: { agentId: "spiffe://example.org/spire/agent/node/db-1" } }) });
    expect((await server.attest(Buffer.from("t"), noChallenge)).agentId.toString()).toBe("spiffe://example.org/spire/agent/node/db-1");
  });

  it.each(["spiffe://example.org/node/db-1", "spiffe://example.org/spire/server"])(
    "refuses a stored agent ID %s outside /spire/agent/ (a token chosen before the rule)",
    async (agentId) => {
      const server = createJoinTokenServerAttestor({ trustDomain: td, store: store({ t: { agentId } }) });
      const caught = await server.attest(Buffer.from("t"), noChallenge).catch((e: unknown) => e);
      expect(isSigilError(caught, "ERR_PERMISSION_DENIED")).toBe(true);
      expect((caught as Error).message).toBe(`join_token: agent ID ${agentId} is not under /spire/agent/`);
    },
  );

  it("checks the token without spending it: the attestation that creates the agent record spends the token it names", async () => {
    const server = createJoinTokenServerAttestor({ trustDomain: td, store: store({ t: {} }) });
    expect((await server.attest(Buffer.from("t"), noChallenge)).joinToken).toBe("t");
    expect((await server.attest(Buffer.from("t"), noChallenge)).joinToken).toBe("t");
  });

  it.each([
    ["unknown", new SigilError("ERR_NOT_FOUND", "datastore: join token not found or already used"), "join_token: join token not found or already used"],
    ["expired", new SigilError("ERR_PERMISSION_DENIED", "datastore: join token expired"), "join_token: join token expired"],
  ])("denies a token the store refuses (%s) as PERMISSION_DENIED", async (_what, refusal, message) => {
    const server = createJoinTokenServerAttestor({ trustDomain: td, store: store({ t: {} }, { t: refusal }) });
    const caught = await server.attest(Buffer.from("t"), noChallenge).catch((e: unknown) => e);
    expect(isSigilError(caught, "ERR_PERMISSION_DENIED")).toBe(true);
    expect((caught as Error).message).toBe(message);
  });

  it("passes on a store failure that is no refusal of the token", async () => {
    const down = new SigilError("ERR_UNAVAILABLE", "datastore: closed");
    const server = createJoinTokenServerAttestor({ trustDomain: td, store: store({ t: {} }, { t: down }) });
    await expect(server.attest(Buffer.from("t"), noChallenge)).rejects.toBe(down);
  });

  it.each([
    ["", /token is empty/],
    ["a/b", /may contain only/],
    ["x".repeat(257), /longer than 256/],
  ])("rejects a malformed token %j before touching the store", async (token, msg) => {
    const s = store({});
    const server = createJoinTokenServerAttestor({ trustDomain: td, store: s });
    let caught: unknown;
    try { await server.attest(Buffer.from(token), noChallenge); } catch (e) { caught = e; }
    expect(isSigilError(caught, "ERR_INVALID_ARGUMENT")).toBe(true);
    expect((caught as Error).message).toMatch(msg);
    expect(s.peeked).toEqual([]);
  });

  it("refuses a stored agent ID from another trust domain", async () => {
    const server = createJoinTokenServerAttestor({ trustDomain: td, store: store({ t: { agentId: "spiffe://other.org/node" } }) });
    await expect(server.attest(Buffer.from("t"), noChallenge)).rejects.toThrow(/not in trust domain example.org/);
  });
});
