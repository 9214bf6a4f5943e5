/**
 * The agent config: SPIRE-like defaults, and errors that name the keys at fault.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadAgentConfig, parseAgentConfig } from "../../../../agent/config/load.js";
import { AGENT_CONFIG_EXAMPLE, agentConfigJsonSchema } from "../../../../agent/config/reference.js";
import { DEFAULT_AGENT_DATA_DIR, DEFAULT_AGENT_SOCKET_PATH } from "../../../../agent/config/schema.js";
import { isSigilError } from "../../../../spiffe/errors.js";

const PLUGINS = `plugins:
  NodeAttestor:
    join_token:
  WorkloadAttestor:
    unix:
`;
const MINIMAL = `agent:
  trust_domain: example.org
  trust_bundle_path: /etc/sigil/bundle.pem
${PLUGINS}`;

function agentWith(lines: string): string {
  return `agent:\n  trust_domain: example.org\n${lines
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => `  ${l}\n`)
    .join("")}${PLUGINS}`;
}

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(isSigilError(e, "ERR_INVALID_ARGUMENT"), String(e)).toBe(true);
    return (e as Error).message;
  }
  throw new Error("expected an error");
}

const dir = mkdtempSync(path.join(tmpdir(), "sigil-agent-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("agent config", () => {
  it("applies SPIRE-like defaults to a minimal config", () => {
    const cfg = parseAgentConfig(MINIMAL);
    expect(cfg.agent).toEqual({
      trust_domain: "example.org",
      server_address: "127.0.0.1",
      server_port: 8081,
      socket_path: DEFAULT_AGENT_SOCKET_PATH,
      data_dir: DEFAULT_AGENT_DATA_DIR,
      log_level: "info",
      log_format: "json",
      trust_bundle_path: "/etc/sigil/bundle.pem",
      trust_bundle_format: "pem",
      sync_interval: 5_000,
      rotation_fraction: 0.5,
      rotation_jitter: 0.1,
      taint_replacement_spread: 10_000,
      taint_replacement_batch_size: 100,
      workload_attestation_timeout: 5_000,
      max_workload_connections_per_uid: 1024,
      max_workload_calls_per_uid: 1024,
      allow_unauthenticated_verifiers: false,
      sds: { disable_sds_api: false, default_svid_name: "default", default_bundle_name: "ROOTCA", default_all_bundles_name: "ALL", disable_spiffe_cert_validation: false },
    });
    expect(DEFAULT_AGENT_SOCKET_PATH).toBe("/tmp/sigil-agent/public/api.sock");
    expect(cfg.plugins).toEqual({ NodeAttestor: { join_token: {} }, WorkloadAttestor: { unix: {} } });
    expect(cfg.health_checks).toMatchObject({ listener_enabled: false, live_path: "/live", ready_path: "/ready" });
    expect(cfg.telemetry).toBeUndefined();
  });

  it("parses the documented example", () => {
    const cfg = parseAgentConfig(AGENT_CONFIG_EXAMPLE);
    expect(cfg.agent.server_address).toBe("sigil-server.example.org");
    expect(cfg.plugins.WorkloadAttestor?.["unix"]).toEqual({ discover_workload_path: true, workload_size_limit: 0 });
  });

  it("takes a list of server addresses and names a malformed one by its index", () => {
    const cfg = parseAgentConfig(agentWith("trust_bundle_path: /a.pem\nserver_addresses: [a.example:8081, \"[::1]:8082\"]"));
    expect(cfg.agent.server_addresses).toEqual(["a.example:8081", "[::1]:8082"]);
    expect(parseAgentConfig(MINIMAL).agent.server_addresses).toBeUndefined();
    expect(errorOf(() => parseAgentConfig(agentWith("trust_bundle_path: /a.pem\nserver_addresses: [a.example:8081, b.example]")))).toContain("agent.server_addresses[1]: must be host:port");
    expect(errorOf(() => parseAgentConfig(agentWith("trust_bundle_path: /a.pem\nserver_addresses: []")))).toContain("agent.server_addresses");
  });

  it("requires exactly one trust bootstrap key and names all three", () => {
    const none = errorOf(() => parseAgentConfig(agentWith("")));
    expect(none).toContain("agent: exactly one of trust_bundle_path, trust_bundle_url, insecure_bootstrap must be set");
    const two = errorOf(() => parseAgentConfig(agentWith("trust_bundle_path: /a.pem\ninsecure_bootstrap: true")));
    expect(two).toContain("may be set, got trust_bundle_path, insecure_bootstrap");
    // insecure_bootstrap: false does not count as set.
    expect(() => parseAgentConfig(agentWith("trust_bundle_path: /a.pem\ninsecure_bootstrap: false"))).not.toThrow();
    expect(parseAgentConfig(agentWith("trust_bundle_url: https://bundle.example.org/b.json\ntrust_bundle_format: spiffe")).agent.trust_bundle_format).toBe("spiffe");
  });

  it.each([
    ["rotation_fraction: 1", "agent.rotation_fraction: rotation_fraction must be strictly between 0 and 1"],
    ["rotation_fraction: 0", "agent.rotation_fraction: rotation_fraction must be strictly between 0 and 1"],
    ["rotation_jitter: 0.9", "agent.rotation_jitter"],
    ["sync_interval: 5", "agent.sync_interval: a duration must be a string with a unit"],
    ["sync_interval: 10ms", "agent.sync_interval: duration \"10ms\" is below the minimum 100ms"],
    ["trust_bundle_url: http://insecure.example.org/b.pem", "agent.trust_bundle_url: must be an https:// URL"],
    ["server_port: 70000", "agent.server_port"],
    ["trust_bundle_format: der", "agent.trust_bundle_format"],
    ["log_level: verbose", "agent.log_level"],
    ["sync_intervall: 5s", "agent.sync_intervall: unknown key (did you mean \"sync_interval\"?)"],
    ["socket_path: tcp://127.0.0.1:8000", "agent.socket_path: TCP listeners are not supported; give a Unix socket path (WEP-4)"],
    ["socket_path: run/api.sock", 'agent.socket_path: "run/api.sock" is a relative path; give an absolute path'],
    ["socket_path: unix:run/api.sock", "agent.socket_path: \"unix:run/api.sock\": the socket path must be absolute"],
    ["socket_path: unix://host/run/api.sock", "agent.socket_path: \"unix://host/run/api.sock\": a unix address must not have an authority"],
    ["socket_path: http://localhost/api.sock", 'agent.socket_path: scheme "http" is not supported'],
    // Longer than sun_path holds: Node would bind a truncated path, in a directory nobody checked.
    [`socket_path: /run/${"s".repeat(94)}/api.sock`, "agent.socket_path: the socket path is 108 bytes long; a Unix socket path holds at most 107"],
    [`socket_path: unix:///run/${"s".repeat(94)}/api.sock`, "/api.sock\": the socket path is 108 bytes long; a Unix socket path holds at most 107"],
  ])("%s is rejected naming the key", (line, message) => {
    expect(errorOf(() => parseAgentConfig(agentWith(`trust_bundle_path: /a.pem\n${line}`)))).toContain(message);
  });

  it.each([
    ["/run/sigil/api.sock", "/run/sigil/api.sock"],
    ["unix:///run/sigil/api.sock", "/run/sigil/api.sock"],
    ["unix:/run/sigil/api.sock", "/run/sigil/api.sock"],
    ["unix:///run/sigil/my%20api.sock", "/run/sigil/my api.sock"],
    [`/run/${"s".repeat(93)}/api.sock`, `/run/${"s".repeat(93)}/api.sock`],
  ])("takes socket_path %s as the path %s", (value, want) => {
    expect(parseAgentConfig(agentWith(`trust_bundle_path: /a.pem\nsocket_path: ${value}`)).agent.socket_path).toBe(want);
  });

  it("rejects a bad trust domain and missing plugins with their paths", () => {
    expect(errorOf(() => parseAgentConfig(MINIMAL.replace("example.org", "Example..org")))).toContain("agent.trust_domain: invalid trust domain");
    const msg = errorOf(() => parseAgentConfig(`agent:\n  trust_domain: example.org\n  insecure_bootstrap: true\nplugins:\n  NodeAttestor: {}\n  WorkloadAttestor: {}\n`));
    expect(msg).toContain("plugins.NodeAttestor: one NodeAttestor plugin must be configured");
    expect(msg).toContain("plugins.WorkloadAttestor: at least one WorkloadAttestor plugin must be configured");
    expect(errorOf(() => parseAgentConfig(MINIMAL.replace("    unix:\n", "    unix:\n      discover_path: true\n")))).toContain("plugins.WorkloadAttestor.unix");
  });

  it("reads SPIRE's sds options and refuses two SDS names that collide", () => {
    const cfg = parseAgentConfig(agentWith("insecure_bootstrap: true\nsds:\n  default_svid_name: mine\n  disable_spiffe_cert_validation: true"));
    expect(cfg.agent.sds).toEqual({ disable_sds_api: false, default_svid_name: "mine", default_bundle_name: "ROOTCA", default_all_bundles_name: "ALL", disable_spiffe_cert_validation: true });
    expect(errorOf(() => parseAgentConfig(agentWith("insecure_bootstrap: true\nsds:\n  default_all_bundles_name: ROOTCA")))).toContain("agent.sds: default_svid_name, default_bundle_name and default_all_bundles_name must differ");
    expect(errorOf(() => parseAgentConfig(agentWith("insecure_bootstrap: true\nsds:\n  default_bundle_name: spiffe://example.org")))).toContain("must not look like a SPIFFE ID");
  });

  it("accepts SPIRE's upper-case log levels and loads files by path", () => {
    const file = path.join(dir, "agent.yaml");
    writeFileSync(file, MINIMAL.replace("  trust_bundle_path", "  log_level: DEBUG\n  trust_bundle_path"));
    expect(loadAgentConfig(file).agent.log_level).toBe("debug");
    expect(errorOf(() => loadAgentConfig(path.join(dir, "missing.yaml")))).toMatch(/cannot read the file/);
  });

  it("publishes a closed JSON Schema with the bootstrap keys", () => {
    const schema = agentConfigJsonSchema() as { properties: { agent: { properties: Record<string, unknown>; additionalProperties: unknown } } };
    expect(schema.properties.agent.additionalProperties).toBe(false);
    for (const k of ["trust_bundle_path", "trust_bundle_url", "insecure_bootstrap", "join_token", "sync_interval", "rotation_fraction"]) {
      expect(schema.properties.agent.properties).toHaveProperty(k);
    }
  });
});
