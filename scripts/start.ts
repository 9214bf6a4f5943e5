/**
 * `npm start`: the quickstart. Runs a server and an agent on the embedded
 * SQLite datastore in `.sigil/quickstart/` (or $SIGIL_STATE_DIR), registers an
 * entry for the current user (`unix:uid:<uid>`), prints how to reach the
 * Workload API, and runs until Ctrl-C. A second start reuses the same state:
 * same CA, same agent, same entry.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { userInfo } from "node:os";
import path from "node:path";
import { parseAgentConfig } from "../agent/config/load.js";
import { startAgentProcess } from "../agent/main.js";
import { parseServerConfig } from "../server/config/load.js";
import { startServer } from "../server/main.js";
import { encodePemCertificates } from "../spiffe/pem.js";
import { AGENT_PATH_PREFIX } from "../common/reserved-ids.js";
import { makeSelector } from "../common/selector.js";

const TRUST_DOMAIN = "example.org";
const AGENT_ID = `spiffe://${TRUST_DOMAIN}${AGENT_PATH_PREFIX}quickstart`;

const state = path.resolve(process.env.SIGIL_STATE_DIR ?? ".sigil/quickstart");
const serverDir = path.join(state, "server");
const agentDir = path.join(state, "agent");
mkdirSync(serverDir, { recursive: true, mode: 0o700 });
mkdirSync(agentDir, { recursive: true, mode: 0o700 });
const socketPath = path.join(agentDir, "public", "api.sock");
const logFile = path.join(state, "sigil.log");
const quiet = { write: (line: string) => void writeFileSync(logFile, line, { flag: "a" }) };

const server = await startServer(
  parseServerConfig(
    `server:
  trust_domain: ${TRUST_DOMAIN}
  bind_address: 127.0.0.1
  bind_port: 0
  socket_path: ${path.join(serverDir, "private", "api.sock")}
  data_dir: ${serverDir}
plugins:
  DataStore:
    sql:
      database_type: sqlite3
      connection_string: ${path.join(serverDir, "datastore.sqlite3")}
  KeyManager:
    disk:
      keys_path: ${path.join(serverDir, "keys.json")}
  NodeAttestor:
    join_token: {}
`,
    "yaml",
    { source: "quickstart server config" },
  ),
  { logDestination: quiet },
);

// The agent keeps its SVID in its data directory; a join token is needed only
// when it has none (first start, or after it expired while stopped).
const { uid } = userInfo();
const workloadId = `spiffe://${TRUST_DOMAIN}/quickstart/uid-${uid}`;
let joinToken: string | undefined;
const agentRecord = await server.datastore.getAgent(AGENT_ID);
const storedSvid = existsSync(path.join(agentDir, "data", "agent-svid.pem"));
if (!storedSvid || !agentRecord || agentRecord.certNotAfter.getTime() <= Date.now()) {
  if (agentRecord) await server.datastore.deleteAgent(AGENT_ID); // let the same agent ID attest again
  joinToken = randomBytes(16).toString("hex");
  await server.datastore.createJoinToken({ token: joinToken, expiresAt: new Date(Date.now() + 10 * 60_000), agentId: AGENT_ID });
}
const existing = await server.datastore.listEntries({ filter: { spiffeId: workloadId, parentId: AGENT_ID } });
if (existing.items.length === 0) {
  await server.datastore.createEntry({ spiffeId: workloadId, parentId: AGENT_ID, selectors: [makeSelector("unix", `uid:${uid}`)] });
}

const bundlePath = path.join(agentDir, "bootstrap-bundle.pem");
writeFileSync(bundlePath, encodePemCertificates(server.ca.bundle().x509Authorities));
const [host, port] = server.agentApiAddress.split(":");
const agent = await startAgentProcess(
  parseAgentConfig(
    `agent:
  trust_domain: ${TRUST_DOMAIN}
  server_address: ${host}
  server_port: ${port}
  socket_path: ${socketPath}
  data_dir: ${path.join(agentDir, "data")}
  trust_bundle_path: ${bundlePath}
  sync_interval: 1s
plugins:
  NodeAttestor:
    join_token: {}
  WorkloadAttestor:
    unix: {}
`,
    "yaml",
    { source: "quickstart agent config" },
  ),
  { logDestination: quiet, ...(joinToken ? { joinToken } : {}) },
);

const user = userInfo().username;
process.stdout.write(`
Sigil quickstart is running (state in ${state}, logs in ${logFile}).

  Trust domain      ${TRUST_DOMAIN}
  Agent API         ${server.agentApiAddress}
  Workload API      ${socketPath}
  Identity served   ${workloadId}   (to processes of ${user}, unix:uid:${uid})

Try it from another terminal:

  export SPIFFE_ENDPOINT_SOCKET=unix://${socketPath}
  node --import tsx agent/cli/main.ts api fetch x509

Press Ctrl-C to stop. Starting again reuses the same CA, agent and entry.
`);

await new Promise<void>((resolve) => {
  process.once("SIGINT", () => resolve());
  process.once("SIGTERM", () => resolve());
});
process.stdout.write("\nstopping...\n");
await agent.stop();
await server.stop();
