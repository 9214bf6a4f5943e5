/**
 * Agent half of the `join_token` node attestor: sends the configured token.
 */
import { z } from "zod";
import type { AgentNodeAttestor } from "../types.js";
import { checkJoinTokenSyntax, JOIN_TOKEN_ATTESTOR } from "./server.js";

/** Agent-side configuration: the token, usually given on the command line. */
export const joinTokenAgentConfigSchema = z.strictObject({
  join_token: z.string().min(1).describe("Single-use join token generated with `sigil-server token generate`."),
});

/** Creates the agent half. */
export function createJoinTokenAgentAttestor(config: z.infer<typeof joinTokenAgentConfigSchema>): AgentNodeAttestor {
  checkJoinTokenSyntax(config.join_token);
  const payload = Buffer.from(config.join_token, "utf8");
  return {
    name: JOIN_TOKEN_ATTESTOR,
    async payload(): Promise<Uint8Array> {
      return payload;
    },
  };
}
