/**
 * `sigil-server run` is a list of named services (server/main.ts) started in
 * order and stopped in reverse: on SIGTERM, and when one fails to start (then
 * only those already started are stopped, and the process exits 1). Checked
 * from the process's JSON log, where the service group writes "Service
 * started" / "Service stopped" with the service's name.
 */
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { testTempDir } from "../support/temp-dir.js";
import { launchServerProcess, runServerCli, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";

/** Every service of a server with signing threads and the HTTP health listener, in start order. */
const ALL_SERVICES = ["datastore", "signing-pool", "ca", "change-feed", "entry-index", "agent-cache", "bundle-cache", "federation", "server-svid", "agent-api", "admin-socket", "ca-rotation", "prune", "health-listener", "grpc-health"];

let srv: ServerProcess | undefined;
let holder: Server | undefined;

afterEach(async () => {
  await srv?.stop();
  srv = undefined;
  await new Promise<void>((resolve) => (holder ? holder.close(() => resolve()) : resolve()));
  holder = undefined;
});

/** A server config in a fresh directory: one signing thread and the health listener; the agent API on `bindPort` (default a free one). */
function config(bindPort?: number): { dir: string; configPath: string; socketPath: string } {
  const dir = testTempDir("sigil-lifecycle-");
  const configPath = path.join(dir, "server.yaml");
  const yaml = testServerConfigYaml(dir, { serverExtra: "  signing_threads: 1\n", extraYaml: "health_checks:\n  listener_enabled: true\n  bind_port: 0\n" });
  // The agent API's port is the first `bind_port` (the server section's).
  writeFileSync(configPath, bindPort === undefined ? yaml : yaml.replace("bind_port: 0\n", `bind_port: ${bindPort}\n`));
  return { dir, configPath, socketPath: path.join(dir, "admin", "api.sock") };
}

/** The `service` fields of the log records with message `msg`, in log order. */
function services(logs: readonly Record<string, unknown>[], msg: string): unknown[] {
  return logs.filter((l) => l.msg === msg).map((l) => l.service);
}

/** The JSON records of a finished run's stdout. */
function jsonLines(stdout: string): Record<string, unknown>[] {
  return stdout
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe("sigil-server run: services", () => {
  it("on SIGTERM, stops every service in the reverse of the order it started them, then exits 0", async () => {
    const c = config();
    srv = await launchServerProcess(c.dir, c.configPath, c.socketPath);
    expect(services(srv.logs, "Service started")).toEqual(ALL_SERVICES);

    const exited = new Promise<number | null>((resolve) => srv?.child.once("exit", (code) => resolve(code)));
    srv.child.kill("SIGTERM");
    expect(await exited).toBe(0);

    const logs = srv.logs;
    expect(services(logs, "Service stopped")).toEqual([...ALL_SERVICES].reverse());
    const at = (pred: (l: Record<string, unknown>) => boolean): number => logs.findIndex(pred);
    expect(at((l) => l.msg === "server: shutting down" && l.signal === "SIGTERM")).toBeLessThan(at((l) => l.msg === "Service stopped"));
    expect(at((l) => l.msg === "server stopped")).toBeGreaterThan(at((l) => l.msg === "Service stopped" && l.service === "datastore"));
    expect(logs.some((l) => l.msg === "Service failed to stop cleanly")).toBe(false);
  }, 60_000);

  it("when the agent API port is taken, stops the services already started in reverse and exits 1", async () => {
    holder = createServer();
    const port = await new Promise<number>((resolve) => holder?.listen(0, "127.0.0.1", () => resolve((holder?.address() as { port: number }).port)));
    const c = config(port);

    const r = runServerCli(["run", "--config", c.configPath]);
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toContain(`error: agent api: cannot listen on 127.0.0.1:${port}: `);
    const logs = jsonLines(r.stdout);
    const started = ["datastore", "signing-pool", "ca", "change-feed", "entry-index", "agent-cache", "bundle-cache", "federation", "server-svid"];
    expect(services(logs, "Service started")).toEqual(started);
    expect(logs.find((l) => l.msg === "Service failed to start; stopping those already started")?.service).toBe("agent-api");
    expect(services(logs, "Service stopped")).toEqual([...started].reverse());
    expect(logs.some((l) => l.msg === "server started")).toBe(false);
  }, 60_000);

  it("when the admin socket directory is unsafe, stops the agent API and the services before it in reverse and exits 1", () => {
    const c = config();
    mkdirSync(path.dirname(c.socketPath));
    chmodSync(path.dirname(c.socketPath), 0o777);

    const r = runServerCli(["run", "--config", c.configPath]);
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toContain(`admin api: refusing to use directory ${path.dirname(c.socketPath)}`);
    const logs = jsonLines(r.stdout);
    const started = ["datastore", "signing-pool", "ca", "change-feed", "entry-index", "agent-cache", "bundle-cache", "federation", "server-svid", "agent-api"];
    expect(services(logs, "Service started")).toEqual(started);
    expect(logs.find((l) => l.msg === "Service failed to start; stopping those already started")?.service).toBe("admin-socket");
    expect(services(logs, "Service stopped")).toEqual([...started].reverse());
  }, 60_000);
});
