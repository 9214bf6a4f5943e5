/**
 * The published forms of the agent config schema: the JSON Schema to commit as
 * `agent/config.schema.json` and the Markdown reference for
 * `docs/agent-configuration.md`. `scripts/gen-config-docs.ts` writes them.
 */
import { configJsonSchema, type JsonSchema } from "../../common/config/json-schema.js";
import { renderConfigMarkdown } from "../../common/config/markdown.js";
import { agentConfigSchema } from "./schema.js";

/** Repository-relative path of the committed JSON Schema. */
export const AGENT_CONFIG_SCHEMA_PATH = "agent/config.schema.json";

/** Repository-relative path of the committed Markdown reference. */
export const AGENT_CONFIG_DOCS_PATH = "docs/agent-configuration.md";

/** A complete, valid agent config; shown in the docs and checked by a test. */
export const AGENT_CONFIG_EXAMPLE = `# yaml-language-server: $schema=../agent/config.schema.json
version: v1
agent:
  trust_domain: example.org
  server_address: sigil-server.example.org
  server_port: 8081
  socket_path: /tmp/sigil-agent/public/api.sock
  data_dir: /var/lib/sigil/agent
  log_level: info
  log_format: json
  trust_bundle_path: /etc/sigil/bootstrap-bundle.pem
  trust_bundle_format: pem
  sync_interval: 5s
  rotation_fraction: 0.5
  rotation_jitter: 0.1
  taint_replacement_spread: 10s
  taint_replacement_batch_size: 100
  workload_attestation_timeout: 5s
  allow_unauthenticated_verifiers: false
health_checks:
  listener_enabled: true
  bind_address: 0.0.0.0
  bind_port: 8080
  live_path: /live
  ready_path: /ready
telemetry:
  prometheus:
    host: 0.0.0.0
    port: 9989
plugins:
  NodeAttestor:
    join_token: {}
  WorkloadAttestor:
    unix:
      discover_workload_path: true
      workload_size_limit: 0
`;

const INTRO = `
The agent reads one YAML file (JSON is accepted too), given with
\`sigil-agent run --config <path>\`. Keys follow SPIRE's agent configuration in
snake_case, and plugins are keyed by plugin type and then plugin name.

- **Unknown keys are errors**, reported with their full path.
- **Durations** are Go-style strings: \`"5s"\`, \`"1m30s"\`, \`"500ms"\`.
- **Trust on first contact**: exactly one of \`trust_bundle_path\`, \`trust_bundle_url\` or
  \`insecure_bootstrap\` is set. After the first attestation the agent keeps the bundle in
  \`data_dir\` and updates it on every sync; the bootstrap source is not read again.
- "Required" in the tables below means required whenever the enclosing section is present.
`;

/** The agent config JSON Schema. */
export function agentConfigJsonSchema(): JsonSchema {
  return configJsonSchema(agentConfigSchema, {
    id: "https://sigil.dev/schemas/agent-config.v1.json",
    title: "Sigil agent configuration",
  });
}

/** The JSON Schema file's exact text (two-space JSON and a final newline). */
export function renderAgentConfigJsonSchema(): string {
  return `${JSON.stringify(agentConfigJsonSchema(), null, 2)}\n`;
}

/** The Markdown reference's exact text. */
export function renderAgentConfigDocs(): string {
  return renderConfigMarkdown(agentConfigJsonSchema(), {
    title: "Agent configuration reference",
    intro: INTRO,
    example: AGENT_CONFIG_EXAMPLE,
    generatedBy: "`node --import tsx scripts/gen-config-docs.ts` from agent/config/schema.ts",
  });
}
