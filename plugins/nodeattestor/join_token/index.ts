/**
 * The `join_token` node attestor: the server half consumes a single-use token
 * created with `sigil-server token generate`; the agent half sends the token
 * given as `agent.join_token` or `sigil-agent run --join-token` (SPIRE's shape:
 * the plugin itself takes no settings).
 */
import { noSettings } from "../../../common/config/fields.js";
import { pluginHalf, type PluginDescriptor } from "../../descriptor.js";
import type { AgentNodeAttestor, AgentNodeAttestorDeps, ServerNodeAttestor, ServerNodeAttestorDeps } from "../types.js";
import { createJoinTokenAgentAttestor } from "./agent.js";
import { createJoinTokenServerAttestor, JOIN_TOKEN_ATTESTOR } from "./server.js";

/** The `join_token` NodeAttestor in the plugin catalog. Without a token the agent half is absent (the agent relies on its stored SVID). */
export const joinTokenNodeAttestorPlugin: PluginDescriptor<"NodeAttestor", ServerNodeAttestorDeps, ServerNodeAttestor, AgentNodeAttestorDeps, AgentNodeAttestor | undefined> = {
  type: "NodeAttestor",
  name: JOIN_TOKEN_ATTESTOR,
  server: pluginHalf({
    description: "Single-use join tokens created with `sigil-server token generate`.",
    configSchema: noSettings(),
    create: (_config, deps: ServerNodeAttestorDeps) => createJoinTokenServerAttestor(deps),
  }),
  agent: pluginHalf({
    description: "Attest with the single-use token in `agent.join_token` (or `sigil-agent run --join-token`).",
    configSchema: noSettings(),
    create: (_config, deps: AgentNodeAttestorDeps) => (deps.joinToken === undefined ? undefined : createJoinTokenAgentAttestor({ join_token: deps.joinToken })),
  }),
};
