/**
 * `sigil-agent validate --config`, beside `sigil-server validate`: exit 0 for
 * a good file, 1 with every problem and its key path for a bad one.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { runAgentCli } from "./support/agent-process.js";

const dir = mkdtempSync(path.join(tmpdir(), "sigil-agent-validate-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, text: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return file;
}

describe("sigil-agent validate", () => {
  it("accepts a valid config (exit 0)", async () => {
    const file = write("good.yaml", "agent:\n  trust_domain: example.org\n  insecure_bootstrap: true\nplugins:\n  NodeAttestor:\n    join_token: {}\n  WorkloadAttestor:\n    unix: {}\n");
    const r = await runAgentCli(["validate", "--config", file]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe("configuration is valid\n");
  });

  it("reports every problem with its key path (exit 1), unknown plugins with the known names", async () => {
    const file = write(
      "bad.yaml",
      "agent:\n  trust_domain: example.org\n  insecure_bootstrap: true\n  socket_path: relative.sock\n  sync_interval: soon\nplugins:\n  NodeAttestor:\n    join_token: {}\n  WorkloadAttestor:\n    docker: {}\n",
    );
    const r = await runAgentCli(["validate", "--config", file]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("agent.socket_path");
    expect(r.stderr).toContain("agent.sync_interval");
    expect(r.stderr).toContain("plugins.WorkloadAttestor.docker: unknown WorkloadAttestor plugin; known WorkloadAttestor plugins: unix");
  });
});
