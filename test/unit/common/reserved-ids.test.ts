/**
 * The reserved `/spire` namespace as SPIRE draws it (`pkg/common/idutil`):
 * `/spire` and everything under it is reserved, agent IDs are under
 * `/spire/agent/`, the server is exactly `/spire/server`; look-alike paths are not.
 */
import { describe, expect, it } from "vitest";
import { agentSpiffeId, checkAgentId, checkNotReserved, isAgentId, isReservedId, serverSpiffeId } from "../../../common/reserved-ids.js";
import { isSigilError } from "../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../../spiffe/id.js";

const td = parseTrustDomain("example.org");

describe("reserved SPIFFE IDs", () => {
  it("builds the server ID and agent IDs under /spire", () => {
    expect(serverSpiffeId(td).toString()).toBe("spiffe://example.org/spire/server");
    expect(agentSpiffeId(td, "join_token/abc").toString()).toBe("spiffe://example.org/spire/agent/join_token/abc");
    expect(() => agentSpiffeId(td, "")).toThrow(/trailing slash/);
  });

  it.each([
    // id, reserved, agent
    ["spiffe://example.org/spire", true, false],
    ["spiffe://example.org/spire/server", true, false],
    ["spiffe://example.org/spire/agent/x", true, true],
    ["spiffe://example.org/spire/agent/join_token/t", true, true],
    ["spiffe://example.org/spire/other", true, false],
    ["spiffe://example.org/spire/agentx/y", true, false],
    ["spiffe://example.org/spirex/foo", false, false],
    ["spiffe://example.org/spire-agent/x", false, false],
    ["spiffe://example.org/foo/spire/bar", false, false],
    ["spiffe://example.org/Spire/server", false, false],
    ["spiffe://example.org/web", false, false],
  ])("%s: reserved %s, agent ID %s", (s, reserved, agent) => {
    const id = parseSpiffeId(s);
    expect(isReservedId(id)).toBe(reserved);
    expect(isAgentId(id)).toBe(agent);
    const refusal = (check: (i: typeof id) => void): unknown => {
      try {
        check(id);
        return undefined;
      } catch (e) {
        return e;
      }
    };
    const notReserved = refusal(checkNotReserved);
    expect(notReserved === undefined).toBe(!reserved);
    if (reserved) {
      expect(isSigilError(notReserved, "ERR_INVALID_ARGUMENT")).toBe(true);
      expect((notReserved as Error).message).toBe(`${s} is in the reserved namespace /spire, which belongs to the server and agents`);
    }
    const agentRefusal = refusal(checkAgentId);
    expect(agentRefusal === undefined).toBe(agent);
    if (!agent) expect((agentRefusal as Error).message).toBe(`${s} is not an agent ID: agent IDs are under /spire/agent/`);
  });
});
