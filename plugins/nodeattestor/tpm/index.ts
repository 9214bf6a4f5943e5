/**
 * The `tpm` node attestor: a node proves it holds a TPM 2.0 whose
 * endorsement key the server trusts (manufacturer CA or enrolled EK hash), by
 * activating a credential sealed to that EK and quoting its PCRs with a fresh
 * nonce. See docs/tpm.md.
 */
import { pluginHalf, type PluginDescriptor } from "../../descriptor.js";
import type { AgentNodeAttestor, AgentNodeAttestorDeps, ServerNodeAttestor, ServerNodeAttestorDeps } from "../types.js";
import { createTpmAgentAttestor, tpmAgentConfigSchema } from "./agent.js";
import { TPM_ATTESTOR } from "./payload.js";
import { createTpmServerAttestor, tpmServerConfigSchema } from "./server.js";

/** The `tpm` NodeAttestor in the plugin catalog. */
export const tpmNodeAttestorPlugin: PluginDescriptor<"NodeAttestor", ServerNodeAttestorDeps, ServerNodeAttestor, AgentNodeAttestorDeps, AgentNodeAttestor> = {
  type: "NodeAttestor",
  name: TPM_ATTESTOR,
  server: pluginHalf({
    description: "TPM 2.0: the EK's certificate chains to a manufacturer CA or its hash is enrolled; credential activation proves the TPM is present, a quote reports its PCRs.",
    configSchema: tpmServerConfigSchema,
    create: (config, deps: ServerNodeAttestorDeps) => createTpmServerAttestor(config, { trustDomain: deps.trustDomain }),
  }),
  agent: pluginHalf({
    description: "Attest with the TPM's endorsement key: credential activation and a quote of the requested PCRs over the server's nonce.",
    configSchema: tpmAgentConfigSchema,
    create: (config, _deps: AgentNodeAttestorDeps) => createTpmAgentAttestor(config),
  }),
};
