import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  GEN_CONFIG_DOCS_COMMAND,
  renderServerConfigDocs,
  renderServerConfigJsonSchema,
  SERVER_CONFIG_DOCS_PATH,
  SERVER_CONFIG_SCHEMA_PATH,
  serverConfigJsonSchema,
} from "../../../../server/config/reference.js";
import { AGENT_CONFIG_DOCS_PATH, AGENT_CONFIG_SCHEMA_PATH, renderAgentConfigDocs, renderAgentConfigJsonSchema } from "../../../../agent/config/reference.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");

describe("generated config reference", () => {
  it(`committed ${SERVER_CONFIG_SCHEMA_PATH} matches the schema (regenerate with: ${GEN_CONFIG_DOCS_COMMAND})`, () => {
    expect(readFileSync(path.join(root, SERVER_CONFIG_SCHEMA_PATH), "utf8")).toBe(renderServerConfigJsonSchema());
  });

  it(`committed ${SERVER_CONFIG_DOCS_PATH} matches the schema (regenerate with: ${GEN_CONFIG_DOCS_COMMAND})`, () => {
    expect(readFileSync(path.join(root, SERVER_CONFIG_DOCS_PATH), "utf8")).toBe(renderServerConfigDocs());
  });

  it(`committed ${AGENT_CONFIG_SCHEMA_PATH} and ${AGENT_CONFIG_DOCS_PATH} match the agent schema (regenerate with: npm run gen:config-docs)`, () => {
    expect(readFileSync(path.join(root, AGENT_CONFIG_SCHEMA_PATH), "utf8")).toBe(renderAgentConfigJsonSchema());
    expect(readFileSync(path.join(root, AGENT_CONFIG_DOCS_PATH), "utf8")).toBe(renderAgentConfigDocs());
  });

  it("publishes closed objects, defaults as written and the one-plugin rule", () => {
    const schema = serverConfigJsonSchema() as { properties: Record<string, { properties: Record<string, Record<string, unknown>> } & Record<string, unknown>> } & Record<string, unknown>;
    expect(schema["additionalProperties"]).toBe(false);
    expect(schema.properties["server"]?.["additionalProperties"]).toBe(false);
    expect(schema.properties["server"]?.properties["ca_ttl"]).toMatchObject({ type: "string", default: "24h" });
    expect(schema.properties["server"]?.properties["bind_port"]).toMatchObject({ type: "integer", default: 8081 });
    expect(schema.properties["plugins"]?.properties["KeyManager"]).toMatchObject({ minProperties: 1, maxProperties: 1 });
  });

  it("documents every server key", () => {
    const docs = renderServerConfigDocs();
    for (const key of ["server.trust_domain", "server.ca_ttl", "health_checks.ready_path", "plugins.KeyManager.disk.keys_path", "plugins.UpstreamAuthority.disk.bundle_file_path"]) {
      expect(docs).toContain(`| \`${key}\` |`);
    }
  });
});
