/**
 * Writes the values table of docs/helm.md from charts/sigil/values.schema.json (types,
 * allowed values, descriptions) and charts/sigil/values.yaml (defaults), between the
 * `<!-- values:begin -->` and `<!-- values:end -->` markers. The helm-chart test fails
 * when the page is not what this script would write.
 *
 *   node --import tsx scripts/gen-helm-values-doc.ts
 */
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseYaml } from "yaml";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const BEGIN = "<!-- values:begin -->";
const END = "<!-- values:end -->";

interface Schema {
  readonly $ref?: string;
  readonly type?: string;
  readonly description?: string;
  readonly enum?: readonly unknown[];
  readonly pattern?: string;
  readonly minimum?: number;
  readonly maximum?: number;
  readonly anyOf?: readonly Schema[];
  readonly items?: Schema;
  readonly properties?: Readonly<Record<string, Schema>>;
  readonly additionalProperties?: boolean | Schema;
  readonly definitions?: Readonly<Record<string, Schema>>;
}

function resolve(s: Schema, defs: Readonly<Record<string, Schema>>): Schema {
  if (s.$ref === undefined) return s;
  const target = defs[s.$ref.replace("#/definitions/", "")];
  if (target === undefined) throw new Error(`values.schema.json: unresolved ${s.$ref}`);
  // A description beside the $ref wins over the definition's.
  return { ...resolve(target, defs), ...(s.description === undefined ? {} : { description: s.description }) };
}

function typeOf(s: Schema, defs: Readonly<Record<string, Schema>>): string {
  if (s.enum !== undefined) return s.enum.map((v) => `\`${String(v)}\``).join(" | ");
  if (s.anyOf !== undefined) return s.anyOf.map((x) => typeOf(resolve(x, defs), defs)).join(" or ");
  if (s.type === "array") return `list of ${s.items === undefined ? "any" : typeOf(resolve(s.items, defs), defs)}`;
  if (s.type === "object" && s.properties === undefined) return "map";
  if (s.type === "integer" && (s.minimum !== undefined || s.maximum !== undefined)) return `integer ${s.minimum ?? ""}–${s.maximum ?? ""}`.replace(/–$/, "+");
  return s.type ?? "any";
}

function cell(v: string): string {
  // Pipes would end the cell; <name> would be read as an HTML tag.
  return v.replace(/\|/g, "\\|").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/\n/g, " ");
}

function defaultOf(values: unknown, keyPath: readonly string[]): string {
  let v: unknown = values;
  for (const k of keyPath) v = v !== null && typeof v === "object" ? (v as Record<string, unknown>)[k] : undefined;
  if (v === undefined) return "";
  return `\`${JSON.stringify(v)}\``;
}

/** The markdown table: one row per value, nested keys dotted, in the schema's order. */
export function renderValuesTable(): string {
  const schema = JSON.parse(readFileSync(path.join(root, "charts/sigil/values.schema.json"), "utf8")) as Schema;
  const values = parseYaml(readFileSync(path.join(root, "charts/sigil/values.yaml"), "utf8")) as unknown;
  const defs = schema.definitions ?? {};
  const rows: string[] = ["| Value | Type | Default | Description |", "|---|---|---|---|"];
  const walk = (s: Schema, keyPath: readonly string[]): void => {
    for (const [key, raw] of Object.entries(s.properties ?? {})) {
      const sub = resolve(raw, defs);
      const p = [...keyPath, key];
      // Objects with their own keys are listed key by key; the description of the object heads them.
      const leaf = sub.type !== "object" || sub.properties === undefined;
      rows.push(`| \`${p.join(".")}\` | ${cell(leaf ? typeOf(sub, defs) : "object")} | ${cell(leaf ? defaultOf(values, p) : "")} | ${cell(sub.description ?? "")} |`);
      if (!leaf) walk(sub, p);
    }
  };
  walk(schema, []);
  return rows.join("\n");
}

/** docs/helm.md with the values table replaced by {@link renderValuesTable}'s. */
export function renderHelmDoc(current: string): string {
  const begin = current.indexOf(BEGIN);
  const end = current.indexOf(END);
  if (begin < 0 || end < begin) throw new Error(`docs/helm.md: the ${BEGIN} … ${END} markers are missing`);
  return `${current.slice(0, begin + BEGIN.length)}\n${renderValuesTable()}\n${current.slice(end)}`;
}

const isEntry = process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isEntry) {
  const file = path.join(root, "docs/helm.md");
  writeFileSync(file, renderHelmDoc(readFileSync(file, "utf8")));
  console.log("docs/helm.md: values table written from charts/sigil/values.schema.json");
}
