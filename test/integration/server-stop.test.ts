/**
 * Stopping a real `sigil-server run` process while a peer without credentials
 * holds agent API calls open: any TLS client can start a call and never
 * finish sending it, and SIGTERM must still stop the server (the calls in
 * flight are cancelled once the grace period is over).
 */
import { connect, type ClientHttp2Stream } from "node:http2";
import { rmSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";

let srv: ServerProcess;

beforeAll(async () => {
  srv = await startServerProcess();
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  if (srv) rmSync(srv.dir, { recursive: true, force: true });
});

describe("sigil-server run: SIGTERM", () => {
  it("stops the server although a peer keeps calls open whose request it never finishes", async () => {
    const session = connect(`https://${srv.agentApiAddress}`, { rejectUnauthorized: false });
    session.on("error", () => undefined);
    try {
      await new Promise((resolve, reject) => session.once("connect", resolve).once("error", reject));
      const held: ClientHttp2Stream[] = [];
      const ended: Promise<void>[] = [];
      for (let i = 0; i < 5; i++) {
        const stream = session.request(
          { ":method": "POST", ":path": "/sigil.agent.v1.AgentAPI/SyncAuthorized", "content-type": "application/grpc", te: "trailers" },
          { endStream: false },
        );
        stream.on("error", () => undefined);
        ended.push(new Promise((resolve) => stream.once("close", () => resolve())));
        // A gRPC frame header announcing ten bytes that never come.
        stream.write(Buffer.from([0, 0, 0, 0, 10]));
        held.push(stream);
      }
      // The server has read everything sent before the ping's answer.
      await new Promise<void>((resolve, reject) => session.ping((err) => (err ? reject(err) : resolve())));

      const exited = new Promise<number | null>((resolve) => srv.child.once("exit", (code) => resolve(code)));
      srv.child.kill("SIGTERM");
      expect(await exited).toBe(0);
      await Promise.all(ended);
      expect(srv.logs.some((l) => l.msg === "server stopped")).toBe(true);
    } finally {
      session.destroy();
    }
  });
});
