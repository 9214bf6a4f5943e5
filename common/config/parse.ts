/**
 * Config text → validated value. YAML is the primary format and JSON is
 * accepted; both go through the `yaml` parser (JSON is YAML 1.2 flow syntax),
 * which rejects duplicate keys and gives each key a line and column for error
 * messages. Validation is a zod schema built from `z.strictObject`, so an
 * unknown key anywhere is reported with its full path.
 */
import { isMap, isScalar, isSeq, LineCounter, parseDocument, visit, type Document, type Node } from "yaml";
import type { z } from "zod";
import { expandEnv } from "./expand-env.js";
import { configError, configIssuesFromZod, type ConfigIssue, type ConfigLocator } from "./issues.js";

/** Source formats the loader reads. */
export type ConfigFormat = "yaml" | "json";

/** Options of {@link parseConfigText} and `loadConfigFile`. */
export interface ParseConfigOptions {
  /** Named in error messages, usually the file path. */
  readonly source?: string;
  /** Expand `${NAME}` from {@link ParseConfigOptions.env} before parsing (`--expand-env`). Default false. */
  readonly expandEnv?: boolean;
  /** Variables for `expandEnv` (default `process.env`). */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

/** The result of {@link validateConfig}. */
export type ConfigValidation<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly issues: readonly ConfigIssue[] };

/**
 * Chooses the format from the file name (`.json`, `.yaml`, `.yml`), else from
 * the content: a document starting with `{` is JSON, anything else YAML.
 */
export function detectConfigFormat(fileName: string | undefined, text: string): ConfigFormat {
  const lower = fileName?.toLowerCase() ?? "";
  if (lower.endsWith(".json")) return "json";
  if (lower.endsWith(".yaml") || lower.endsWith(".yml")) return "yaml";
  return text.trimStart().startsWith("{") ? "json" : "yaml";
}

/**
 * Validates an already-parsed value, collecting every problem.
 *
 * @param locate maps a key path to a source position, when there is a source
 */
export function validateConfig<S extends z.ZodType>(value: unknown, schema: S, locate?: ConfigLocator): ConfigValidation<z.output<S>> {
  if (value === undefined || value === null) {
    return { ok: false, issues: [{ path: "", problem: "the configuration is empty; expected a mapping of keys" }] };
  }
  const result = schema.safeParse(value, { reportInput: true });
  if (result.success) return { ok: true, value: result.data };
  return { ok: false, issues: configIssuesFromZod(result.error.issues, schema, locate) };
}

/**
 * Parses and validates config text.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` whose message lists every problem
 *   with its key path and line (`config: server.yaml: server.ca_ttl: invalid duration "1 hour" …`)
 *
 * @example
 * ```ts
 * const cfg = parseConfigText("server:\n  trust_domain: example.org\n", "yaml", schema);
 * ```
 */
export function parseConfigText<S extends z.ZodType>(text: string, format: ConfigFormat, schema: S, options: ParseConfigOptions = {}): z.output<S> {
  const source = options.source;
  const expanded = options.expandEnv === true ? expandEnv(text, options.env, source) : text;
  const { value, locate } = parseDocumentText(expanded, format, source);
  const result = validateConfig(value, schema, locate);
  if (!result.ok) throw configError(result.issues, source);
  return result.value;
}

function parseDocumentText(text: string, format: ConfigFormat, source: string | undefined): { value: unknown; locate: ConfigLocator } {
  if (format === "json") {
    try {
      JSON.parse(text);
    } catch (e) {
      // JSON.parse names the offending token and offset better than a YAML parser would.
      throw configError([{ path: "", problem: `invalid JSON: ${(e as Error).message}` }], source, e);
    }
  }
  const lineCounter = new LineCounter();
  // prettyErrors off: its code excerpt could quote a secret from the file.
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false, version: "1.2", merge: false });
  if (doc.errors.length > 0) {
    const issues = doc.errors.map((err): ConfigIssue => {
      const pos = lineCounter.linePos(err.pos[0]);
      const problem =
        err.code === "DUPLICATE_KEY"
          ? `duplicate key ${JSON.stringify(duplicateKeyText(doc, err.pos[0]))}`
          : `invalid ${format === "json" ? "JSON" : "YAML"}: ${err.message}`;
      return { path: "", problem, line: pos.line, column: pos.col };
    });
    throw configError(issues, source);
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    throw configError([{ path: "", problem: `invalid ${format === "json" ? "JSON" : "YAML"}: ${(e as Error).message}` }], source, e);
  }
  return { value, locate: locator(doc, lineCounter) };
}

function duplicateKeyText(doc: Document, offset: number): string {
  let key = "?";
  visit(doc, {
    Pair(_, pair) {
      if (isScalar(pair.key) && pair.key.range?.[0] === offset) {
        key = String(pair.key.value);
        return visit.BREAK;
      }
      return undefined;
    },
  });
  return key;
}

function locator(doc: Document, lineCounter: LineCounter): ConfigLocator {
  return (path, atKey) => {
    let node: unknown = doc.contents;
    let keyNode: Node | undefined;
    for (const seg of path) {
      keyNode = undefined;
      if (isMap(node)) {
        const pair = node.items.find((p) => (isScalar(p.key) ? p.key.value : p.key) === seg);
        if (pair === undefined) return undefined;
        keyNode = isScalar(pair.key) ? pair.key : undefined;
        node = pair.value;
      } else if (isSeq(node) && typeof seg === "number") {
        node = node.items[seg];
      } else {
        return undefined;
      }
    }
    const target = atKey && keyNode !== undefined ? keyNode : (node as Node | null | undefined);
    const offset = target?.range?.[0] ?? keyNode?.range?.[0];
    if (offset === undefined) return undefined;
    const pos = lineCounter.linePos(offset);
    return { line: pos.line, column: pos.col };
  };
}
