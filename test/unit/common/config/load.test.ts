import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { duration } from "../../../../common/config/duration.js";
import { expandEnv } from "../../../../common/config/expand-env.js";
import { configJsonSchema } from "../../../../common/config/json-schema.js";
import { loadConfigFile } from "../../../../common/config/load.js";
import { renderConfigMarkdown } from "../../../../common/config/markdown.js";
import { detectConfigFormat, parseConfigText, validateConfig } from "../../../../common/config/parse.js";
import { isSigilError } from "../../../../spiffe/errors.js";

const schema = z.strictObject({
  name: z.string().describe("The name."),
  listen: z
    .strictObject({
      bind_port: z.number().int().default(8080).describe("Port."),
      timeout: duration().prefault("5s").describe("How long to wait."),
    })
    .prefault({})
    .describe("Listener."),
  mode: z.enum(["a", "b"]).default("a"),
  items: z.array(z.strictObject({ id: z.string() })).optional(),
});

function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    expect(isSigilError(e, "ERR_INVALID_ARGUMENT"), String(e)).toBe(true);
    return e as Error;
  }
  throw new Error("expected an error");
}

const dir = mkdtempSync(path.join(tmpdir(), "sigil-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("parseConfigText", () => {
  it("applies defaults", () => {
    expect(parseConfigText("name: x\n", "yaml", schema)).toEqual({ name: "x", listen: { bind_port: 8080, timeout: 5_000 }, mode: "a" });
  });

  it("accepts JSON", () => {
    expect(parseConfigText('{"name":"x","listen":{"timeout":"1m"}}', "json", schema).listen.timeout).toBe(60_000);
  });

  it("rejects an unknown key with its full path, position and a suggestion", () => {
    const e = errorOf(() => parseConfigText("name: x\nlisten:\n  bindPort: 1\n", "yaml", schema, { source: "app.yaml" }));
    expect(e.message).toBe('config: app.yaml: listen.bindPort: unknown key (did you mean "bind_port"?) (line 3, column 3)');
  });

  it("reports every problem at once, each with its path", () => {
    const text = "listen:\n  timeout: 1 hour\n  bind_port: nope\nmode: c\nextra: 1\nitems:\n  - id: 1\n";
    const e = errorOf(() => parseConfigText(text, "yaml", schema, { source: "app.yaml" }));
    const lines = e.message.split("\n");
    expect(lines[0]).toBe("config: app.yaml: 6 problems:");
    expect(e.message).toContain('  name: required key is missing');
    expect(e.message).toContain('  listen.timeout: invalid duration "1 hour" (expected e.g. "1h", "90m", "1h30m", "500ms") (line 2, column 12)');
    expect(e.message).toContain("  listen.bind_port: expected a number, got a string (line 3, column 14)");
    expect(e.message).toContain('  mode: must be one of "a", "b" (got "c") (line 4, column 7)');
    expect(e.message).toContain("  extra: unknown key (line 5, column 1)");
    expect(e.message).toContain("  items[0].id: expected a string, got a number (line 7, column 9)");
  });

  it("rejects duplicate YAML keys", () => {
    const e = errorOf(() => parseConfigText("name: x\nname: y\n", "yaml", schema));
    expect(e.message).toBe('config: duplicate key "name" (line 2, column 1)');
  });

  it("rejects duplicate JSON keys, which JSON.parse would accept", () => {
    const e = errorOf(() => parseConfigText('{"name": "x", "name": "y"}', "json", schema));
    expect(e.message).toContain('duplicate key "name"');
  });

  it("reports YAML and JSON syntax errors", () => {
    expect(errorOf(() => parseConfigText("name: [x\n", "yaml", schema)).message).toMatch(/^config: invalid YAML: .*\(line \d+, column \d+\)/);
    expect(errorOf(() => parseConfigText('{"name": ', "json", schema)).message).toMatch(/^config: invalid JSON: /);
  });

  it("rejects an empty document and a non-mapping document", () => {
    expect(errorOf(() => parseConfigText("", "yaml", schema)).message).toBe("config: the configuration is empty; expected a mapping of keys");
    expect(errorOf(() => parseConfigText("- a\n", "yaml", schema)).message).toBe("config: expected a mapping, got a list (line 1, column 1)");
  });

  it("does not echo long or secret-looking values in messages", () => {
    const e = errorOf(() => parseConfigText(`name: x\nmode: ${"s".repeat(60)}\n`, "yaml", schema));
    expect(e.message).not.toContain("sssss");
  });
});

describe("validateConfig", () => {
  it("returns issues instead of throwing", () => {
    const r = validateConfig({ name: 1 }, schema);
    expect(r).toEqual({ ok: false, issues: [{ path: "name", problem: "expected a string, got a number" }] });
  });
});

describe("detectConfigFormat", () => {
  it("uses the extension, then the content", () => {
    expect(detectConfigFormat("a.json", "x: 1")).toBe("json");
    expect(detectConfigFormat("a.YML", "{}")).toBe("yaml");
    expect(detectConfigFormat("a.conf", '  {"a":1}')).toBe("json");
    expect(detectConfigFormat(undefined, "a: 1")).toBe("yaml");
  });
});

describe("loadConfigFile", () => {
  it("loads YAML and JSON files", () => {
    const y = path.join(dir, "ok.yaml");
    writeFileSync(y, "name: from-yaml\n");
    const j = path.join(dir, "ok.json");
    writeFileSync(j, '{"name": "from-json"}');
    expect(loadConfigFile(y, schema).name).toBe("from-yaml");
    expect(loadConfigFile(j, schema).name).toBe("from-json");
  });

  it("names the file and the OS reason when it cannot be read", () => {
    const missing = path.join(dir, "missing.yaml");
    const e = errorOf(() => loadConfigFile(missing, schema));
    expect(e.message).toContain(`config: ${missing}: cannot read the file: ENOENT`);
    expect(e.cause).toBeDefined();
  });

  it("reports the OS reason for a path that is not a readable file (works as root too)", () => {
    const e = errorOf(() => loadConfigFile(dir, schema));
    expect(e.message).toContain(`config: ${dir}: cannot read the file: EISDIR`);
  });

  it("names the file in validation errors", () => {
    const f = path.join(dir, "bad.yaml");
    writeFileSync(f, "name: x\nbogus: 1\n");
    expect(errorOf(() => loadConfigFile(f, schema)).message).toBe(`config: ${f}: bogus: unknown key (line 2, column 1)`);
  });

  it("expands ${VAR} only when asked", () => {
    const f = path.join(dir, "env.yaml");
    writeFileSync(f, "name: ${SIGIL_TEST_NAME}\nlisten:\n  bind_port: ${SIGIL_TEST_PORT}\n");
    const env = { SIGIL_TEST_NAME: "expanded", SIGIL_TEST_PORT: "9090" };
    expect(loadConfigFile(f, schema, { expandEnv: true, env })).toMatchObject({ name: "expanded", listen: { bind_port: 9090 } });
    const plain = path.join(dir, "env-off.yaml");
    writeFileSync(plain, "name: ${SIGIL_TEST_NAME}\n");
    expect(loadConfigFile(plain, schema, { env }).name).toBe("${SIGIL_TEST_NAME}");
  });
});

describe("expandEnv", () => {
  it("replaces ${NAME}, keeps bare $ and $${NAME}", () => {
    expect(expandEnv("a: ${A}\nb: p$ss\nc: $${A}\n", { A: "1" })).toBe("a: 1\nb: p$ss\nc: ${A}\n");
  });

  it("lists every unset variable with its position", () => {
    const e = errorOf(() => expandEnv("a: ${MISSING_ONE}\nb: ${MISSING_TWO}\n", {}, "f.yaml"));
    expect(e.message).toBe(
      "config: f.yaml: 2 problems:\n  environment variable MISSING_ONE is not set (line 1, column 4)\n  environment variable MISSING_TWO is not set (line 2, column 4)",
    );
  });
});

describe("JSON Schema and Markdown from the same schema", () => {
  const json = configJsonSchema(schema, { id: "urn:test", title: "Test" });

  it("publishes descriptions, defaults as written, and closed objects", () => {
    expect(json).toMatchObject({ $id: "urn:test", title: "Test", additionalProperties: false, required: ["name"] });
    const listen = (json["properties"] as Record<string, Record<string, unknown>>)["listen"] as Record<string, unknown>;
    expect(listen["additionalProperties"]).toBe(false);
    expect((listen["properties"] as Record<string, unknown>)["timeout"]).toMatchObject({ type: "string", default: "5s", description: "How long to wait." });
  });

  it("renders a table row per key path", () => {
    const md = renderConfigMarkdown(json, { title: "Test" });
    expect(md).toContain("| `listen.timeout` | duration |  | `\"5s\"` | How long to wait. |");
    expect(md).toContain("| `name` | string | yes |  | The name. |");
    expect(md).toContain('| `mode` | "a" \\| "b" |  | `"a"` |  |');
  });
});
