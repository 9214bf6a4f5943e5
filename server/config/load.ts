/**
 * Loading the server config file: the entry point of `sigil-server run` and
 * `sigil-server validate`.
 */
import { loadConfigFile } from "../../common/config/load.js";
import { parseConfigText, type ConfigFormat } from "../../common/config/parse.js";
import { serverConfigSchema, type ServerConfig } from "./schema.js";

/** Options of {@link loadServerConfig}. */
export interface LoadServerConfigOptions {
  /** Expand `${NAME}` references from the environment (`--expand-env`). Default false. */
  readonly expandEnv?: boolean;
  /** Variables for `expandEnv` (default `process.env`). */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

/**
 * Loads and validates the server config file (YAML, or JSON by extension or
 * content).
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` listing every problem with its key
 *   path, e.g. `config: server.yaml: server.ca_ttl: invalid duration "1 hour" …`
 */
export function loadServerConfig(path: string, options: LoadServerConfigOptions = {}): ServerConfig {
  return loadConfigFile(path, serverConfigSchema, options);
}

/** Parses server config text; for tests and for configs not read from a file. */
export function parseServerConfig(text: string, format: ConfigFormat = "yaml", options: LoadServerConfigOptions & { readonly source?: string } = {}): ServerConfig {
  return parseConfigText(text, format, serverConfigSchema, options);
}
