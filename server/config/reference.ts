/**
 * The published forms of the server config schema: the JSON Schema committed
 * as `server/config.schema.json` and the Markdown reference committed as
 * `docs/configuration.md`. `scripts/gen-config-docs.ts` writes them; a unit
 * test fails when the committed files differ from what this module renders.
 */
import { configJsonSchema, type JsonSchema } from "../../common/config/json-schema.js";
import { renderConfigMarkdown } from "../../common/config/markdown.js";
import { serverConfigSchema } from "./schema.js";

/** Repository-relative path of the committed JSON Schema. */
export const SERVER_CONFIG_SCHEMA_PATH = "server/config.schema.json";

/** Repository-relative path of the committed Markdown reference. */
export const SERVER_CONFIG_DOCS_PATH = "docs/configuration.md";

/** The command that regenerates both files. */
export const GEN_CONFIG_DOCS_COMMAND = "node --import tsx scripts/gen-config-docs.ts";

/** A complete, valid server config; shown in the docs and checked by a test. */
export const SERVER_CONFIG_EXAMPLE = `# yaml-language-server: $schema=../server/config.schema.json
version: v1
server:
  trust_domain: example.org
  bind_address: 0.0.0.0
  bind_port: 8081
  socket_path: /tmp/sigil-server/private/api.sock
  data_dir: /var/lib/sigil/server
  log_level: info
  log_format: json
  ca_ttl: 24h
  default_x509_svid_ttl: 1h
  default_jwt_svid_ttl: 5m
  ca_key_type: ec-p256
  ca_subject:
    country: [US]
    organization: [Example]
    common_name: Example Sigil CA
  jwt_issuer: https://oidc.example.org
  audit_log_enabled: true
  server_id: sigil-eu-1
  change_feed:
    poll_interval: 250ms
    notify_poll_interval: 5s
    gap_timeout: 1m
    cache_max_age: 5m
    entry_reconcile_interval: 1h
    event_retention: 24h
health_checks:
  listener_enabled: true
  bind_address: 0.0.0.0
  bind_port: 8080
  live_path: /live
  ready_path: /ready
telemetry:
  prometheus:
    host: 0.0.0.0
    port: 9988
plugins:
  DataStore:
    sql:
      database_type: sqlite3
      connection_string: /var/lib/sigil/server/datastore.sqlite3
  KeyManager:
    disk:
      keys_path: /var/lib/sigil/server/keys.json
  NodeAttestor:
    join_token: {}
`;

const INTRO = `
The server reads one YAML file (JSON is accepted too), given with
\`sigil-server run --config <path>\`; \`sigil-server validate --config <path>\` checks it
and prints every problem at once. Keys follow SPIRE's server configuration in
snake_case, and plugins are keyed by plugin type and then plugin name, so a SPIRE
config translates key for key.

- **Unknown keys are errors**, reported with their full path (\`server.bind_prot: unknown key (did you mean "bind_port"?)\`).
- **Durations** are Go-style strings: \`"1h"\`, \`"90m"\`, \`"1h30m"\`, \`"500ms"\` (units \`h\`, \`m\`, \`s\`, \`ms\`, \`us\`, \`ns\`; there is no \`d\`, write \`"48h"\`). Bare numbers are rejected.
- **Environment variables** are expanded only with \`--expand-env\`: \`\${NAME}\` is replaced by the variable's value before parsing, an unset variable is an error, and \`$\${NAME}\` writes a literal \`\${NAME}\`. Give secrets as file paths, not inline.
- "Required" in the tables below means required whenever the enclosing section is present.
- Editors can complete and check keys with the JSON Schema in [\`server/config.schema.json\`](../server/config.schema.json), e.g. with a \`# yaml-language-server: $schema=…\` first line, or \`"$schema"\` in a JSON file.
`;

/** The server config JSON Schema, as committed. */
export function serverConfigJsonSchema(): JsonSchema {
  return configJsonSchema(serverConfigSchema, {
    id: "https://sigil.dev/schemas/server-config.v1.json",
    title: "Sigil server configuration",
  });
}

/** The JSON Schema file's exact text (two-space JSON and a final newline). */
export function renderServerConfigJsonSchema(): string {
  return `${JSON.stringify(serverConfigJsonSchema(), null, 2)}\n`;
}

/** The Markdown reference's exact text. */
export function renderServerConfigDocs(): string {
  return renderConfigMarkdown(serverConfigJsonSchema(), {
    title: "Server configuration reference",
    intro: INTRO,
    example: SERVER_CONFIG_EXAMPLE,
    generatedBy: `\`${GEN_CONFIG_DOCS_COMMAND}\` from server/config/schema.ts`,
  });
}
