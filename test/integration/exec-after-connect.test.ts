/**
 * The exec-after-connect attack, end to end against real `sigil-server` and
 * `sigil-agent` processes, run as an unprivileged uid with stock setuid-root
 * binaries (issue 8): a process of uid 65534 connects to the Workload API,
 * a sibling holds the connected socket, and the connector execs `passwd` or
 * `su`, which block reading a password while /proc says euid 0. The agent
 * must serve the holder nothing that belongs to root or to the setuid binary
 * (`exec-after-connect.pl` and `inherited-socket-client.ts` run the attack).
 *
 * Needs root (to run the attacker as uid 65534) and perl, passwd and su (Debian base).
 */
import { create } from "@bufbuild/protobuf";
import { credentials, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { runWorkload, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { attack, attackUnavailable, NOBODY, SETUID_BINARIES, type AttackEvent } from "./support/exec-after-connect.js";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

const why = attackUnavailable;
if (why !== undefined) {
  if (process.env.CI === "true") throw new Error(`exec-after-connect: ${why} (CI runs as root on Debian)`);
  console.warn(`SKIP: exec-after-connect ${why}`);
}

type Event = AttackEvent;

/** Every SPIFFE ID a holder was ever handed, with its certificate's URI SAN. */
function served(events: readonly Event[]): Array<{ spiffeId: string; uriSan: string[]; hasKey: boolean }> {
  return events.filter((e) => e.event === "message").flatMap((e) => (e.svids as Array<{ spiffeId: string; uriSan: string[]; hasKey: boolean }> | undefined) ?? []);
}

let srv: ServerProcess;
let agent: AgentProcess;
let entryAdmin: ReturnType<typeof createUnaryClient<(typeof EntryAdmin)["method"]>>;
let agentId = "";

describe.skipIf(why !== undefined)("exec-after-connect: a local user cannot obtain root's SVID (issue 8)", () => {
  beforeAll(async () => {
    srv = await startServerProcess();
    const target = `unix:${srv.socketPath}`;
    entryAdmin = createUnaryClient(EntryAdmin, target, credentials.createInsecure());
    const agentAdmin = createUnaryClient(AgentAdmin, target, credentials.createInsecure());
    const tok = await agentAdmin.createJoinToken({ ttl: 600 });
    agentAdmin.close();
    agentId = tok.agentId;
    const entry = (spiffeId: string, ...selectors: string[]) =>
      create(EntrySchema, { spiffeId, parentId: agentId, selectors: selectors.map((s) => ({ type: "unix", value: s })) });
    await entryAdmin.batchCreateEntry({
      entries: [
        entry("spiffe://example.org/root-only", "uid:0"),
        entry("spiffe://example.org/nobody", `uid:${NOBODY.uid}`),
        // What the setuid binaries would be attested as if /proc were believed after the exec.
        ...SETUID_BINARIES.map((b) => entry(`spiffe://example.org/nobody-running${b}`, `uid:${NOBODY.uid}`, `path:${b}`)),
      ],
    });
    const roots = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
    agent = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: roots, joinToken: tok.token, unixAttestorYaml: "{ discover_workload_path: true }" });
  }, 90_000);

  afterAll(async () => {
    entryAdmin?.close();
    await agent?.stop();
    await srv?.stop();
  });

  it("an ordinary caller of uid 65534 still receives its SVID", async () => {
    const r = await runWorkload(agent.socketPath, `const ctx = await client.fetchX509Context(); console.log(JSON.stringify(ctx.svids.map((s) => s.id.toString())));`, NOBODY);
    expect(JSON.parse(r.stdout.trim().split("\n").pop() ?? "null")).toEqual(["spiffe://example.org/nobody"]);
  });

  for (const binary of SETUID_BINARIES) {
    it(`connect, then exec ${binary}: FetchX509SVID and FetchJWTSVID are refused PermissionDenied, nothing is served`, async () => {
      const events = await attack(agent.socketPath, binary, "after-exec");
      expect(events.map((e) => e.event)).toEqual(["connector-setuid", "end", "end"]);
      expect(served(events)).toEqual([]);
      for (const method of ["FetchX509SVID", "FetchJWTSVID"]) {
        expect(events.find((e) => e.method === method)).toMatchObject({ code: status.PERMISSION_DENIED, details: "caller changed credentials after connecting" });
      }
      const line = await agent.waitForLog((l) => l.msg === "Caller changed credentials after connecting; refused" && l.caller_uid === NOBODY.uid);
      expect(String(line.reason)).toMatch(/\/stat is owned by uid 0 gid 0, but the caller connected as uid 65534 gid 65534/);
    }, 90_000);
  }

  it("a stream opened before the exec of /usr/bin/passwd is ended at its next message, never handed root's or passwd's SVID", async () => {
    let setuid!: () => void;
    const connectorSetuid = new Promise<void>((r) => (setuid = r));
    const done = attack(agent.socketPath, "/usr/bin/passwd", "stream", (e) => {
      if (e.event === "connector-setuid") setuid();
    });
    await connectorSetuid;
    // Something changes for uid 65534: the agent pushes to its streams, re-checking each caller first.
    await entryAdmin.batchCreateEntry({ entries: [create(EntrySchema, { spiffeId: "spiffe://example.org/nobody-2", parentId: agentId, selectors: [{ type: "unix", value: `uid:${NOBODY.uid}` }] })] });
    const events = await done;
    const svids = served(events);
    // Before the exec: exactly the connector's own identity, its certificate agreeing with spiffe_id.
    expect(svids).toEqual([{ spiffeId: "spiffe://example.org/nobody", uriSan: ["spiffe://example.org/nobody"], hasKey: true }]);
    expect(events.at(-1)).toMatchObject({ event: "end", code: status.PERMISSION_DENIED, details: "caller changed credentials after connecting" });
    await agent.waitForLog((l) => l.msg === "Workload API stream ended: its caller changed since it was attested");
  }, 90_000);

  it("pid-reuse guard: the connector exits, the holder is refused Unauthenticated", async () => {
    const events = await attack(agent.socketPath, "exit", "after-exit");
    expect(served(events)).toEqual([]);
    expect(events.at(-1)).toMatchObject({ event: "end", code: status.UNAUTHENTICATED, details: "could not verify existence of the original caller" });
  }, 90_000);
});
