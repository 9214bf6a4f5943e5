/**
 * The plugin catalog (plugins/catalog.ts): config sections are generated from
 * it, unknown plugin names are refused with the known ones, every configured
 * workload attestor runs and their selectors combine.
 */
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { attestWorkload } from "../../../agent/attestation/workload.js";
import { parseAgentConfig } from "../../../agent/config/load.js";
import { configJsonSchema } from "../../../common/config/json-schema.js";
import { createLogger } from "../../../common/log.js";
import { formatSelector, makeSelector } from "../../../common/selector.js";
import { AGENT_PLUGIN_SECTIONS, createPlugins, PLUGIN_CATALOG, pluginsConfigSchema, pluginsFor, SERVER_PLUGIN_SECTIONS } from "../../../plugins/catalog.js";
import { pluginHalf, type PluginDescriptor } from "../../../plugins/descriptor.js";
import type { WorkloadAttestor, WorkloadAttestorDeps } from "../../../plugins/workloadattestor/types.js";
import { processStartTime } from "../../../agent/endpoints/peer.js";
import { parseServerConfig } from "../../../server/config/load.js";
import { serverConfigSchema } from "../../../server/config/schema.js";
import { agentConfigSchema } from "../../../agent/config/schema.js";

const log = createLogger({ level: "error", destination: { write: () => undefined } });

function errorOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error("expected an error");
}

const SERVER_YAML = (plugins: string) => `server:
  trust_domain: example.org
plugins:
${plugins}`;
const AGENT_YAML = (plugins: string) => `agent:
  trust_domain: example.org
  insecure_bootstrap: true
plugins:
${plugins}`;

describe("plugin catalog", () => {
  it("each binary's plugins section lists exactly the catalog's plugins of each type, each with its own schema", () => {
    for (const [side, rules, schema] of [
      ["server", SERVER_PLUGIN_SECTIONS, serverConfigSchema],
      ["agent", AGENT_PLUGIN_SECTIONS, agentConfigSchema],
    ] as const) {
      const json = configJsonSchema(schema) as unknown as { properties: { plugins: { properties: Record<string, { properties: Record<string, unknown> }> } } };
      const sections = json.properties.plugins.properties;
      expect(Object.keys(sections)).toEqual(rules.map((r) => r.type));
      for (const rule of rules) {
        expect(Object.keys(sections[rule.type]?.properties ?? {})).toEqual(pluginsFor(side, rule.type).map((d) => d.name));
      }
    }
    // The disk key manager's own schema (in its folder) is what the server config validates.
    expect(errorOf(() => parseServerConfig(SERVER_YAML("  DataStore: { sql: { database_type: sqlite3, connection_string: x.db } }\n  KeyManager: { disk: { keys_path: 7 } }\n  NodeAttestor: { join_token: {} }\n")))).toContain("plugins.KeyManager.disk.keys_path");
  });

  it("an unknown plugin name is refused with the known names of its type", () => {
    const server = errorOf(() => parseServerConfig(SERVER_YAML("  DataStore: { sql: { database_type: sqlite3, connection_string: x.db } }\n  KeyManager: { vault: {} }\n  NodeAttestor: { join_token: {} }\n")));
    expect(server).toContain('plugins.KeyManager.vault: unknown KeyManager plugin; known KeyManager plugins: disk, memory');
    const agent = errorOf(() => parseAgentConfig(AGENT_YAML("  NodeAttestor: { join_token: {} }\n  WorkloadAttestor: { docker: {}, unix: {} }\n")));
    expect(agent).toContain("plugins.WorkloadAttestor.docker: unknown WorkloadAttestor plugin; known WorkloadAttestor plugins: unix");
    const typo = errorOf(() => parseAgentConfig(AGENT_YAML("  NodeAttestor: { join_tokn: {} }\n  WorkloadAttestor: { unix: {} }\n")));
    expect(typo).toContain('plugins.NodeAttestor.join_tokn: unknown NodeAttestor plugin (did you mean "join_token"?); known NodeAttestor plugins: join_token');
  });

  it("a type whose section counts one plugin refuses two; an optional section may be left out", () => {
    const schema = pluginsConfigSchema("server");
    const base = { DataStore: { sql: { database_type: "sqlite3", connection_string: "x.db" } }, NodeAttestor: { join_token: {} } };
    expect(schema.safeParse({ ...base, KeyManager: { memory: {} } }).success).toBe(true);
    expect(schema.safeParse({ ...base, KeyManager: {} }).success).toBe(false);
    expect(schema.safeParse({ ...base, KeyManager: { memory: {}, disk: { keys_path: "k" } } }).success).toBe(false);
    expect(schema.safeParse({ ...base, KeyManager: { memory: {} }, UpstreamAuthority: {} }).success).toBe(false);
  });

  it("creates the configured plugins of a type with their validated config and the deps given", () => {
    const cfg = parseAgentConfig(AGENT_YAML("  NodeAttestor: { join_token: }\n  WorkloadAttestor: { unix: { discover_workload_path: true } }\n"));
    const [unix] = createPlugins("agent", PLUGIN_CATALOG.WorkloadAttestor, cfg.plugins.WorkloadAttestor, { log });
    expect(unix?.name).toBe("unix");
    expect(createPlugins("agent", PLUGIN_CATALOG.NodeAttestor, cfg.plugins.NodeAttestor, { joinToken: undefined })).toEqual([undefined]);
    expect(createPlugins("agent", PLUGIN_CATALOG.NodeAttestor, cfg.plugins.NodeAttestor, { joinToken: "tok" })[0]?.name).toBe("join_token");
  });

  it("two workload attestors in one catalog: both run on each caller and their selectors are combined", async () => {
    // A second attestor, defined the way a plugin folder defines one.
    const fixed: PluginDescriptor<"WorkloadAttestor", never, never, WorkloadAttestorDeps, WorkloadAttestor> = {
      type: "WorkloadAttestor",
      name: "fixed",
      agent: pluginHalf({
        description: "Test attestor.",
        configSchema: z.strictObject({ value: z.string() }),
        create: (config) => ({ name: "fixed", attest: async () => [makeSelector("fixed", config.value)] }),
      }),
    };
    const attestors = createPlugins("agent", [...PLUGIN_CATALOG.WorkloadAttestor, fixed], { unix: {}, fixed: { value: "v" } }, { log });
    expect(attestors.map((a) => a.name)).toEqual(["unix", "fixed"]);
    const uid = process.geteuid?.() as number;
    const gid = process.getegid?.() as number;
    const selectors = (await attestWorkload({ pid: process.pid, uid, gid, startTime: processStartTime(process.pid) }, attestors, { timeoutMs: 10_000, log })).map(formatSelector);
    expect(selectors).toContain("fixed:v");
    expect(selectors).toContain(`unix:uid:${uid}`);
  });

  it("a plugin whose create throws: the ones created before it in the same section are closed, and the error is the caller's", async () => {
    const closed: string[] = [];
    const make = (name: string, fail: boolean): PluginDescriptor<"WorkloadAttestor", never, never, WorkloadAttestorDeps, WorkloadAttestor> => ({
      type: "WorkloadAttestor",
      name,
      agent: pluginHalf({
        description: "Test attestor.",
        configSchema: z.strictObject({}),
        create: () => {
          if (fail) throw new Error(`${name}: cannot start`);
          return { name, attest: async () => [], close: () => void closed.push(name) };
        },
      }),
    });
    const list = [make("a", false), make("b", false), make("c", true)];
    expect(() => createPlugins("agent", list, { a: {}, b: {}, c: {} }, { log })).toThrow("c: cannot start");
    await new Promise((r) => setImmediate(r));
    expect(closed).toEqual(["b", "a"]);
  });
});
