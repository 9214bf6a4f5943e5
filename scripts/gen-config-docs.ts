/**
 * Writes `server/config.schema.json`, `docs/configuration.md`,
 * `agent/config.schema.json` and `docs/agent-configuration.md` from the
 * server and agent config schemas. With `--check`, writes nothing and exits 1 when either
 * committed file is out of date (for CI).
 *
 * Run: `node --import tsx scripts/gen-config-docs.ts [--check]`
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import {
  renderServerConfigDocs,
  renderServerConfigJsonSchema,
  SERVER_CONFIG_DOCS_PATH,
  SERVER_CONFIG_SCHEMA_PATH,
} from "../server/config/reference.js";
import { AGENT_CONFIG_DOCS_PATH, AGENT_CONFIG_SCHEMA_PATH, renderAgentConfigDocs, renderAgentConfigJsonSchema } from "../agent/config/reference.js";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const check = process.argv.includes("--check");
const outputs: ReadonlyArray<readonly [string, string]> = [
  [SERVER_CONFIG_SCHEMA_PATH, renderServerConfigJsonSchema()],
  [SERVER_CONFIG_DOCS_PATH, renderServerConfigDocs()],
  [AGENT_CONFIG_SCHEMA_PATH, renderAgentConfigJsonSchema()],
  [AGENT_CONFIG_DOCS_PATH, renderAgentConfigDocs()],
];

let stale = 0;
for (const [relative, text] of outputs) {
  const file = path.join(root, relative);
  const current = existsSync(file) ? readFileSync(file, "utf8") : undefined;
  if (current === text) {
    process.stdout.write(`config-docs: ${relative} is up to date\n`);
    continue;
  }
  if (check) {
    stale++;
    process.stderr.write(`config-docs: ${relative} is out of date; run scripts/gen-config-docs.ts\n`);
    continue;
  }
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, text);
  process.stdout.write(`config-docs: wrote ${relative}\n`);
}
process.exitCode = stale > 0 ? 1 : 0;
