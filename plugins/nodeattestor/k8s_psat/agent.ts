/**
 * Agent half of the `k8s_psat` node attestor: sends the agent pod's projected
 * service account token and the cluster's name. The kubelet replaces the
 * token file before the token expires, so it is read again for every
 * attestation; the agent can attest again on its own whenever the file can be
 * read.
 */
import { accessSync, constants } from "node:fs";
import { z } from "zod";
import { readSmallFile, SmallFileError } from "../../../common/small-file.js";
import { SigilError } from "../../../spiffe/errors.js";
import type { AgentNodeAttestor } from "../types.js";
import { clusterName, encodeK8sPsatPayload, K8S_PSAT_ATTESTOR, MAX_K8S_PSAT_PAYLOAD_BYTES } from "./payload.js";

/** Where the agent pod's projected token is mounted unless `token_path` says otherwise. */
export const DEFAULT_K8S_PSAT_TOKEN_PATH = "/var/run/secrets/tokens/sigil-agent";

/** Configuration of the agent half (SPIRE's option names). */
export const k8sPsatAgentConfigSchema = z.strictObject({
  cluster: clusterName.describe("Name of this agent's cluster, as the server's `clusters` names it; part of the agent ID."),
  token_path: z
    .string()
    .min(1, { error: "is empty (leave token_path out for /var/run/secrets/tokens/sigil-agent)" })
    .default(DEFAULT_K8S_PSAT_TOKEN_PATH)
    .describe("Projected service account token file (read again for every attestation, since the kubelet rotates it). Default `/var/run/secrets/tokens/sigil-agent`."),
});

/** Parsed configuration of the agent half. */
export type K8sPsatAgentConfig = z.output<typeof k8sPsatAgentConfigSchema>;

/** Creates the agent half. */
export function createK8sPsatAgentAttestor(config: K8sPsatAgentConfig): AgentNodeAttestor {
  const tokenPath = config.token_path;
  return {
    name: K8S_PSAT_ATTESTOR,
    async payload(): Promise<Uint8Array> {
      let token: string;
      try {
        // Bounded, regular files only: a token_path at /dev/zero or a FIFO must not exhaust memory or block attestation.
        token = (await readSmallFile(tokenPath, MAX_K8S_PSAT_PAYLOAD_BYTES / 2)).toString("utf8").trim();
      } catch (e) {
        const why = e instanceof SmallFileError ? e.message : ((e as NodeJS.ErrnoException).code ?? String(e));
        throw new SigilError(
          "ERR_FAILED_PRECONDITION",
          `k8s_psat: cannot read the service account token ${tokenPath}: ${why}; mount a projected service account token there (docs/kubernetes.md) or set token_path`,
          { cause: e },
        );
      }
      if (token === "") throw new SigilError("ERR_FAILED_PRECONDITION", `k8s_psat: the service account token file ${tokenPath} is empty`);
      return encodeK8sPsatPayload({ cluster: config.cluster, token });
    },
    canReattest: () => {
      try {
        accessSync(tokenPath, constants.R_OK);
        return true;
      } catch {
        return false;
      }
    },
    reattestRemedy: `the projected service account token ${tokenPath} cannot be read: check the agent pod's projected token volume (docs/kubernetes.md)`,
  };
}
