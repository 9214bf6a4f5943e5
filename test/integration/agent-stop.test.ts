/**
 * Stopping an agent whose server does not answer: SIGTERM ends the agent at
 * once, because stopping cancels the server calls in flight instead of
 * waiting out their 30 s deadlines (a frozen server used to hold each agent's
 * stop for about 27 s).
 */
import { credentials } from "@grpc/grpc-js";
import { afterAll, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

let srv: ServerProcess | undefined;
let agent: AgentProcess | undefined;

afterAll(async () => {
  srv?.child.kill("SIGCONT");
  await agent?.stop();
  await srv?.stop();
});

it("SIGTERM stops an agent while its server is frozen (SIGSTOP), cancelling the round under way", async () => {
  srv = await startServerProcess();
  const admin = createUnaryClient(AgentAdmin, `unix:${srv.socketPath}`, credentials.createInsecure());
  const tok = await admin.createJoinToken({ ttl: 600 }).finally(() => admin.close());
  const roots = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
  const started = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: roots, joinToken: tok.token });
  agent = started;
  srv.child.kill("SIGSTOP");
  // Rounds run every 500 ms: one is now waiting on the frozen server.
  await new Promise((r) => setTimeout(r, 2_000));
  // Well inside the calls' 30 s deadline: the agent must not wait for them.
  const guard = new Promise<"still running">((r) => setTimeout(() => r("still running"), 15_000).unref());
  const outcome = await Promise.race([started.stop().then(() => "exited" as const), guard]);
  expect(outcome).toBe("exited");
  expect(started.logs.some((r) => r.msg === "agent: shutting down")).toBe(true);
  agent = undefined;
}, 90_000);
