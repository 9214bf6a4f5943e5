/**
 * The `k8s_psat` node attestor: agents running as pods prove their node with
 * a projected service account token, which the server checks with the
 * cluster's API server (TokenReview, then the pod and its node). SPIRE's name,
 * options and selectors, so SPIRE registrations carry over.
 */
import { pluginHalf, type PluginDescriptor } from "../../descriptor.js";
import type { AgentNodeAttestor, AgentNodeAttestorDeps, ServerNodeAttestor, ServerNodeAttestorDeps } from "../types.js";
import { createK8sPsatAgentAttestor, k8sPsatAgentConfigSchema } from "./agent.js";
import { K8S_PSAT_ATTESTOR } from "./payload.js";
import { createK8sPsatServerAttestor, k8sPsatServerConfigSchema } from "./server.js";

/** The `k8s_psat` NodeAttestor in the plugin catalog. */
export const k8sPsatNodeAttestorPlugin: PluginDescriptor<"NodeAttestor", ServerNodeAttestorDeps, ServerNodeAttestor, AgentNodeAttestorDeps, AgentNodeAttestor> = {
  type: "NodeAttestor",
  name: K8S_PSAT_ATTESTOR,
  server: pluginHalf({
    description: "Kubernetes projected service account tokens, checked with each cluster's API server (TokenReview, pod, node).",
    configSchema: k8sPsatServerConfigSchema,
    create: (config, deps: ServerNodeAttestorDeps) => createK8sPsatServerAttestor(config, { trustDomain: deps.trustDomain }),
  }),
  agent: pluginHalf({
    description: "Attest with the agent pod's projected service account token.",
    configSchema: k8sPsatAgentConfigSchema,
    create: (config, _deps: AgentNodeAttestorDeps) => createK8sPsatAgentAttestor(config),
  }),
};
