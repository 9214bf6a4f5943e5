/**
 * The template language of `ClusterSPIFFEID` fields: the small part of Go's
 * `text/template` that SPIRE users write in spire-controller-manager
 * resources, and nothing more.
 *
 * Accepted inside `{{ … }}` (with optional `{{-` / `-}}` trimming of the
 * whitespace beside the action, as in Go):
 *
 * - a field path from the root: `.TrustDomain`, `.PodMeta.Namespace`,
 *   `.PodSpec.ServiceAccountName`, `.NodeMeta.UID`;
 * - `index <map path> "<key>"`: one key of a map field (`.PodMeta.Labels`,
 *   `.PodMeta.Annotations`, `.NodeMeta.Labels`, `.NodeMeta.Annotations`); a
 *   missing key renders as "" (Go's zero value).
 *
 * The fields are those of {@link TemplateData}. Anything else (pipes,
 * functions, `if`/`range`, variables, a field that does not exist, a map
 * printed whole) is refused when the template is compiled, with the position
 * and the reason, so a bad resource fails before any pod is looked at.
 */
import { SigilError } from "../../spiffe/errors.js";

/** What a template can read (spire-controller-manager's names). */
export interface TemplateData {
  readonly TrustDomain: string;
  readonly ClusterName: string;
  readonly ClusterDomain: string;
  readonly PodMeta: {
    readonly Name: string;
    readonly Namespace: string;
    readonly UID: string;
    readonly Labels: Readonly<Record<string, string>>;
    readonly Annotations: Readonly<Record<string, string>>;
  };
  readonly PodSpec: { readonly ServiceAccountName: string; readonly NodeName: string };
  readonly NodeMeta: {
    readonly Name: string;
    readonly UID: string;
    readonly Labels: Readonly<Record<string, string>>;
    readonly Annotations: Readonly<Record<string, string>>;
  };
  readonly NodeSpec: { readonly ProviderID: string; readonly PodCIDR: string };
}

type FieldKind = "string" | "map";
type Shape = { readonly [field: string]: FieldKind | Shape };

/** The shape of {@link TemplateData}: which paths exist and what they hold. */
const SHAPE: Shape = {
  TrustDomain: "string",
  ClusterName: "string",
  ClusterDomain: "string",
  PodMeta: { Name: "string", Namespace: "string", UID: "string", Labels: "map", Annotations: "map" },
  PodSpec: { ServiceAccountName: "string", NodeName: "string" },
  NodeMeta: { Name: "string", UID: "string", Labels: "map", Annotations: "map" },
  NodeSpec: { ProviderID: "string", PodCIDR: "string" },
};

type Part = { readonly text: string } | { readonly path: readonly string[]; readonly key?: string };

/** A compiled template; {@link Template.render} cannot fail. */
export interface Template {
  /** The template as written. */
  readonly source: string;
  render(data: TemplateData): string;
}

function refuse(source: string, offset: number, message: string): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `template ${JSON.stringify(source)}: at offset ${offset}: ${message}`);
}

/** Checks a dotted path against {@link SHAPE}; returns the kind it ends at. */
function kindOf(path: readonly string[], source: string, offset: number): FieldKind {
  let shape: Shape | FieldKind = SHAPE;
  for (const [i, name] of path.entries()) {
    if (typeof shape === "string") throw refuse(source, offset, `.${path.slice(0, i).join(".")} is a ${shape} and has no field ${name}`);
    const next: Shape | FieldKind | undefined = Object.hasOwn(shape, name) ? shape[name] : undefined;
    if (next === undefined) {
      const where = i === 0 ? "the root" : `.${path.slice(0, i).join(".")}`;
      throw refuse(source, offset, `${where} has no field ${name} (it has ${Object.keys(shape).join(", ")})`);
    }
    shape = next;
  }
  if (typeof shape !== "string") throw refuse(source, offset, `.${path.join(".")} is a structure; name one of its fields (${Object.keys(shape).join(", ")})`);
  return shape;
}

const PATH_RE = /^(?:\.[A-Za-z][A-Za-z0-9]*)+$/;
// `index <path> "<key>"`; the key is a Go double-quoted string without escapes other than \" and \\.
const INDEX_RE = /^index\s+((?:\.[A-Za-z][A-Za-z0-9]*)+)\s+"((?:[^"\\]|\\["\\])*)"$/;

function parseAction(action: string, source: string, offset: number): Part {
  if (PATH_RE.test(action)) {
    const path = action.slice(1).split(".");
    if (kindOf(path, source, offset) === "map") throw refuse(source, offset, `${action} is a map; pick one key with index ${action} "<key>"`);
    return { path };
  }
  const m = INDEX_RE.exec(action);
  if (m) {
    const path = (m[1] as string).slice(1).split(".");
    if (kindOf(path, source, offset) !== "map") throw refuse(source, offset, `index needs a map (a Labels or Annotations field), not .${path.join(".")}`);
    return { path, key: (m[2] as string).replace(/\\(["\\])/g, "$1") };
  }
  throw refuse(
    source,
    offset,
    `{{ ${action} }} is not supported: only a field path (.PodMeta.Namespace) or index <map> "<key>" (index .PodMeta.Labels "app") may appear in an action`,
  );
}

/**
 * Compiles a template, checking every action.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the offset and the reason.
 */
export function compileTemplate(source: string): Template {
  const parts: Part[] = [];
  let pos = 0;
  let trimNextText = false;
  while (pos <= source.length) {
    const open = source.indexOf("{{", pos);
    let text = open === -1 ? source.slice(pos) : source.slice(pos, open);
    if (trimNextText) text = text.trimStart();
    if (open === -1) {
      if (text.includes("}}")) throw refuse(source, pos + text.indexOf("}}"), "unexpected }}");
      if (text) parts.push({ text });
      break;
    }
    if (text.includes("}}")) throw refuse(source, pos + text.indexOf("}}"), "unexpected }}");
    const close = source.indexOf("}}", open + 2);
    if (close === -1) throw refuse(source, open, "unclosed action (no }})");
    let inner = source.slice(open + 2, close);
    // Go: "{{- " trims the text before, " -}}" the text after; the dash needs the space.
    if (/^-\s/.test(inner)) {
      text = text.trimEnd();
      inner = inner.slice(1);
    }
    trimNextText = /\s-$/.test(inner);
    if (trimNextText) inner = inner.slice(0, -1);
    if (text) parts.push({ text });
    const action = inner.trim();
    if (action === "") throw refuse(source, open, "empty action {{ }}");
    if (inner.includes("{{")) throw refuse(source, open, "nested {{");
    parts.push(parseAction(action.replace(/\s+/g, " "), source, open));
    pos = close + 2;
  }
  return {
    source,
    render(data) {
      let out = "";
      for (const p of parts) {
        if ("text" in p) {
          out += p.text;
          continue;
        }
        let v: unknown = data;
        for (const name of p.path) v = (v as Record<string, unknown>)[name];
        if (p.key === undefined) out += typeof v === "string" ? v : "";
        else {
          const map = (v ?? {}) as Record<string, string>;
          out += Object.hasOwn(map, p.key) ? (map[p.key] ?? "") : "";
        }
      }
      return out;
    },
  };
}
