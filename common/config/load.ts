/**
 * Reads a config file and validates it (YAML or JSON, chosen by extension or
 * content). The one entry point both binaries use at startup and in `validate`.
 */
import { readFileSync } from "node:fs";
import type { z } from "zod";
import { configError } from "./issues.js";
import { detectConfigFormat, parseConfigText } from "./parse.js";

/** Options of {@link loadConfigFile}. */
export interface LoadConfigOptions {
  /** Expand `${NAME}` references before parsing (`--expand-env`). Default false. */
  readonly expandEnv?: boolean;
  /** Variables for `expandEnv` (default `process.env`). */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

/**
 * Loads, parses and validates the config file at `path`.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT`: the file cannot be read
 *   (`config: cannot read /etc/sigil/server.yaml: ENOENT: no such file or directory …`),
 *   or is not valid YAML/JSON, or fails the schema (every problem listed).
 */
export function loadConfigFile<S extends z.ZodType>(path: string, schema: S, options: LoadConfigOptions = {}): z.output<S> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    throw configError([{ path: "", problem: `cannot read the file: ${reason}` }], path, e);
  }
  return parseConfigText(text, detectConfigFormat(path, text), schema, {
    source: path,
    ...(options.expandEnv === undefined ? {} : { expandEnv: options.expandEnv }),
    ...(options.env === undefined ? {} : { env: options.env }),
  });
}
