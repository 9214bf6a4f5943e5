/**
 * The set-up the per-user Workload API tests share: a real server holding one
 * entry per uid (`spiffe://example.org/uid-<uid>`, selector `unix:uid:<uid>`)
 * and a real agent attested to it with a join token.
 */
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import { createUnaryClient } from "../../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../../proto/gen/sigil/types/v1/types_pb.js";
import { startAgentProcess, type AgentProcess } from "./agent-process.js";
import { startServerProcess, type ServerProcess } from "./server-process.js";
import { rootsPemFromBundleJson } from "./test-agent.js";

/** The agent options a test chooses; the server address, bundle and join token come from the server started here. */
export type UidAgentOptions = Omit<Parameters<typeof startAgentProcess>[0], "serverAddress" | "bundlePem" | "joinToken">;

/**
 * Starts the server, registers one entry per uid in `uids` under a join
 * token's agent, and starts that agent with `agentOptions`. If the agent
 * fails to start, the server is stopped before the error is rethrown.
 */
export async function startServerAndAgentForUids(uids: readonly number[], agentOptions: UidAgentOptions = {}): Promise<{ srv: ServerProcess; agent: AgentProcess }> {
  const srv = await startServerProcess();
  try {
    const target = `unix:${srv.socketPath}`;
    const agentAdmin = createUnaryClient(AgentAdmin, target, credentials.createInsecure());
    const tok = await agentAdmin.createJoinToken({ ttl: 600 });
    agentAdmin.close();
    const entryAdmin = createUnaryClient(EntryAdmin, target, credentials.createInsecure());
    await entryAdmin.batchCreateEntry({
      entries: uids.map((uid) => create(EntrySchema, { spiffeId: `spiffe://example.org/uid-${uid}`, parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${uid}` }] })),
    });
    entryAdmin.close();
    const bundlePem = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
    const agent = await startAgentProcess({ ...agentOptions, serverAddress: srv.agentApiAddress, bundlePem, joinToken: tok.token });
    return { srv, agent };
  } catch (e) {
    await srv.stop();
    throw e;
  }
}
