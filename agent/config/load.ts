/**
 * Loading the agent config file: the entry point of `sigil-agent run` and
 * `sigil-agent validate`.
 */
import { loadConfigFile } from "../../common/config/load.js";
import { parseConfigText, type ConfigFormat } from "../../common/config/parse.js";
import { agentConfigSchema, type AgentConfig } from "./schema.js";

/** Options of {@link loadAgentConfig}. */
export interface LoadAgentConfigOptions {
  /** Expand `${NAME}` references from the environment (`--expand-env`). Default false. */
  readonly expandEnv?: boolean;
  /** Variables for `expandEnv` (default `process.env`). */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

/**
 * Loads and validates the agent config file (YAML, or JSON by extension or
 * content).
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` listing every problem with its key
 *   path, e.g. `config: agent.yaml: agent: exactly one of trust_bundle_path, trust_bundle_url, insecure_bootstrap must be set …`
 */
export function loadAgentConfig(path: string, options: LoadAgentConfigOptions = {}): AgentConfig {
  return loadConfigFile(path, agentConfigSchema, options);
}

/** Parses agent config text; for tests and for configs not read from a file. */
export function parseAgentConfig(text: string, format: ConfigFormat = "yaml", options: LoadAgentConfigOptions & { readonly source?: string } = {}): AgentConfig {
  return parseConfigText(text, format, agentConfigSchema, options);
}
