/**
 * Config problems as operators read them: the full key path
 * (`plugins.KeyManager.disk.keys_path`), what is wrong, and where in the file,
 * all at once rather than one per restart.
 */
import type { z } from "zod";
import { SigilError } from "../../spiffe/errors.js";

/** One problem found in a config file. */
export interface ConfigIssue {
  /** Dotted key path (`server.ca_ttl`, `list[2].name`); `""` for the document itself. */
  readonly path: string;
  /** What is wrong, without the path. */
  readonly problem: string;
  /** 1-based line in the source text, when known. */
  readonly line?: number;
  /** 1-based column in the source text, when known. */
  readonly column?: number;
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_-]*$/;

/**
 * Renders a key path: identifiers joined with dots, array indexes in brackets,
 * other keys quoted (`a["b.c"][0].d`).
 */
export function formatConfigPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`;
    else if (typeof seg === "string" && IDENT.test(seg)) out += out === "" ? seg : `.${seg}`;
    else out += `[${JSON.stringify(String(seg))}]`;
  }
  return out;
}

/** One issue as a single line: `path: problem (line L, column C)`; no path prefix for document-level problems. */
export function formatConfigIssue(issue: ConfigIssue): string {
  const where = issue.line === undefined ? "" : ` (line ${issue.line}${issue.column === undefined ? "" : `, column ${issue.column}`})`;
  return `${issue.path === "" ? "" : `${issue.path}: `}${issue.problem}${where}`;
}

/**
 * The error thrown for a config that cannot be used. Its message is
 * `config: <source>: <issue>` for one problem, or a count followed by one
 * indented line per problem.
 */
export function configError(issues: readonly ConfigIssue[], source?: string, cause?: unknown): SigilError {
  const head = source === undefined ? "config: " : `config: ${source}: `;
  const lines = issues.map(formatConfigIssue);
  const message = lines.length === 1 ? head + lines[0] : `${head}${lines.length} problems:\n${lines.map((l) => `  ${l}`).join("\n")}`;
  return new SigilError("ERR_INVALID_ARGUMENT", message, cause === undefined ? undefined : { cause });
}

/** Finds a line/column for a key path in the source, if it can. */
export type ConfigLocator = (path: readonly PropertyKey[], atKey: boolean) => { line: number; column: number } | undefined;

// zod internals are a documented extension surface (`_zod.def`); only the few
// wrapper kinds a config schema uses are unwrapped here.
interface ZodLike {
  _zod: { def: { type: string; innerType?: ZodLike; in?: ZodLike; shape?: Record<string, ZodLike>; options?: ZodLike[] } };
}

function unwrap(schema: ZodLike | undefined): ZodLike[] {
  if (schema === undefined) return [];
  const def = schema._zod.def;
  switch (def.type) {
    case "optional":
    case "nullable":
    case "default":
    case "prefault":
    case "readonly":
    case "catch":
      return unwrap(def.innerType);
    case "pipe":
      return unwrap(def.in);
    case "union":
      return (def.options ?? []).flatMap((o) => unwrap(o));
    default:
      return [schema];
  }
}

/** The keys the schema allows in the object at `path`, for "did you mean". */
function knownKeysAt(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  let nodes = unwrap(schema as unknown as ZodLike);
  for (const seg of path) {
    nodes = nodes.flatMap((n) => {
      const def = n._zod.def;
      if (def.type === "object" && typeof seg === "string") return unwrap(def.shape?.[seg]);
      if (def.type === "array" && typeof seg === "number") return unwrap((def as { element?: ZodLike }).element);
      if (def.type === "record") return unwrap((def as { valueType?: ZodLike }).valueType);
      return [];
    });
  }
  return nodes.flatMap((n) => (n._zod.def.type === "object" ? Object.keys(n._zod.def.shape ?? {}) : []));
}

function normalise(key: string): string {
  return key.toLowerCase().replace(/[_-]/g, "");
}

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0] as number;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j] as number;
      prev[j] = Math.min(up + 1, (prev[j - 1] as number) + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length] as number;
}

/** The known key an unknown one was probably meant to be (`bindPort` → `bind_port`). */
function suggest(unknown: string, known: readonly string[]): string | undefined {
  const n = normalise(unknown);
  const same = known.find((k) => normalise(k) === n);
  if (same !== undefined) return same;
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(unknown.length / 4));
  for (const k of known) {
    const d = editDistance(n, normalise(k));
    if (d <= bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  return best;
}

function describeProblem(issue: z.core.$ZodIssue): string {
  const input = (issue as { input?: unknown }).input;
  // A schema's own message (e.g. the duration hint) wins over the generic rewording below.
  const custom = !issue.message.startsWith("Invalid input") && !issue.message.startsWith("Invalid option");
  if (custom && input !== undefined) return issue.message;
  switch (issue.code) {
    case "invalid_type":
      if (input === undefined) return "required key is missing";
      if (issue.expected === "object" && input === null) return "expected a mapping, got an empty value";
      return `expected ${issue.expected === "object" ? "a mapping" : issue.expected === "array" ? "a list" : `a ${issue.expected}`}, got ${describeValueType(input)}`;
    case "invalid_value":
      return `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}${isShortScalar(input) ? ` (got ${JSON.stringify(input)})` : ""}`;
    default:
      return issue.message;
  }
}

function isShortScalar(v: unknown): boolean {
  return (typeof v === "string" && v.length <= 40) || typeof v === "number" || typeof v === "boolean";
}

function describeValueType(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a mapping";
  return `a ${typeof v}`;
}

/**
 * Turns zod issues into config issues: one per unknown key (with its full path
 * and a suggestion), required keys called missing, positions filled in by the
 * locator. Parse with `{ reportInput: true }` so missing keys can be told apart.
 */
export function configIssuesFromZod(issues: readonly z.core.$ZodIssue[], schema: z.ZodType, locate?: ConfigLocator): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  const push = (path: readonly PropertyKey[], problem: string, atKey: boolean): void => {
    const pos = locate?.(path, atKey);
    out.push(pos === undefined ? { path: formatConfigPath(path), problem } : { path: formatConfigPath(path), problem, line: pos.line, column: pos.column });
  };
  for (const issue of issues) {
    if (issue.code === "unrecognized_keys") {
      const known = knownKeysAt(schema, issue.path);
      // plugins.<Type>.<name>: name the plugins that exist.
      const pluginType = issue.path.length === 2 && issue.path[0] === "plugins" ? String(issue.path[1]) : undefined;
      for (const key of issue.keys) {
        const hint = suggest(key, known);
        const problem =
          pluginType !== undefined
            ? `unknown ${pluginType} plugin${hint === undefined ? "" : ` (did you mean "${hint}"?)`}; known ${pluginType} plugins: ${known.join(", ")}`
            : hint === undefined
              ? "unknown key"
              : `unknown key (did you mean "${hint}"?)`;
        push([...issue.path, key], problem, true);
      }
      continue;
    }
    push(issue.path, describeProblem(issue), false);
  }
  return out;
}
