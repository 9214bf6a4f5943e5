/**
 * Agent half of the `join_token` node attestor: sends the configured token.
 * A token works once, so after it has been sent the agent cannot attest again
 * on its own: an evicted agent needs a new token from an operator.
 */
import { z } from "zod";
import type { AgentNodeAttestor } from "../types.js";
import { checkJoinTokenSyntax, JOIN_TOKEN_ATTESTOR } from "./server.js";

/** Agent-side configuration: the token, usually given on the command line. */
export const joinTokenAgentConfigSchema = z.strictObject({
  join_token: z.string().min(1).describe("Single-use join token generated with `sigil-server token generate`."),
});

/** What an operator does for a node whose join token has been used to attest again. */
export const JOIN_TOKEN_REATTEST_REMEDY =
  "a new join token is needed: generate one with `sigil-server token generate --spiffe-id <agent ID>` (the same ID keeps the entries parented to it) and restart the agent with `sigil-agent run --join-token <token>`";

/** Creates the agent half. */
export function createJoinTokenAgentAttestor(config: z.infer<typeof joinTokenAgentConfigSchema>): AgentNodeAttestor {
  checkJoinTokenSyntax(config.join_token);
  const payload = Buffer.from(config.join_token, "utf8");
  let sent = false;
  return {
    name: JOIN_TOKEN_ATTESTOR,
    async payload(): Promise<Uint8Array> {
      sent = true;
      return payload;
    },
    // A token not yet sent may still be unused (a restart with a fresh --join-token over a stored SVID).
    canReattest: () => !sent,
    reattestRemedy: JOIN_TOKEN_REATTEST_REMEDY,
  };
}
