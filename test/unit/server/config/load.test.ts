import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadServerConfig, parseServerConfig } from "../../../../server/config/load.js";
import { SERVER_CONFIG_EXAMPLE } from "../../../../server/config/reference.js";
import { DEFAULT_SERVER_SOCKET_PATH } from "../../../../server/config/schema.js";
import { isSigilError } from "../../../../spiffe/errors.js";

const MINIMAL = `
server:
  trust_domain: example.org
plugins:
  DataStore:
    sql:
      database_type: sqlite3
      connection_string: ./datastore.sqlite3
  KeyManager:
    memory:
  NodeAttestor:
    join_token: {}
`;

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(isSigilError(e, "ERR_INVALID_ARGUMENT"), String(e)).toBe(true);
    return (e as Error).message;
  }
  throw new Error("expected an error");
}

/** MINIMAL with one line replaced (or appended under `server:`). */
function withServerLine(line: string): string {
  return MINIMAL.replace("  trust_domain: example.org\n", `  trust_domain: example.org\n  ${line}\n`);
}

const dir = mkdtempSync(path.join(tmpdir(), "sigil-server-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("server config", () => {
  it("applies SPIRE-like defaults to a minimal config", () => {
    const cfg = parseServerConfig(MINIMAL);
    expect(cfg.version).toBe("v1");
    expect(cfg.server).toEqual({
      trust_domain: "example.org",
      bind_address: "127.0.0.1",
      bind_port: 8081,
      socket_path: DEFAULT_SERVER_SOCKET_PATH,
      data_dir: "./.sigil/server",
      log_level: "info",
      log_format: "json",
      ca_ttl: 24 * 3_600_000,
      default_x509_svid_ttl: 3_600_000,
      default_jwt_svid_ttl: 5 * 60_000,
      agent_ttl: 3_600_000,
      ca_key_type: "ec-p256",
      jwt_key_type: "ec-p256",
      audit_log_enabled: true,
      issuance_log_retention: 7 * 24 * 3_600_000,
      ratelimit: {
        attestation: true, attestation_per_second: 1, attestation_burst: 10, signing: true, x509_signing_per_second: 500, jwt_signing_per_second: 500,
        sync: true, sync_per_second: 5, sync_burst: 10, watch_changes_per_second: 1, watch_changes_burst: 3, downstream_ca: true, downstream_ca_per_second: 1, downstream_ca_burst: 5,
      },
      change_feed: { poll_interval: 250, notify_poll_interval: 5_000, gap_timeout: 60_000, cache_max_age: 300_000, entry_reconcile_interval: 3_600_000, event_retention: 24 * 3_600_000 },
    });
    // signing_threads stays unset: the server picks one less than the cores.
    expect(cfg.server.signing_threads).toBeUndefined();
    expect(cfg.health_checks).toEqual({ listener_enabled: false, bind_address: "127.0.0.1", bind_port: 8080, live_path: "/live", ready_path: "/ready" });
    expect(cfg.telemetry).toBeUndefined();
    expect(cfg.plugins.KeyManager).toEqual({ memory: {} });
    expect(cfg.plugins.NodeAttestor).toEqual({ join_token: {} });
  });

  it("server.change_feed and server.server_id: durations, bounds and names, each problem naming its key", () => {
    const cfg = parseServerConfig(withServerLine("server_id: eu-1\n  change_feed:\n    poll_interval: 100ms\n    gap_timeout: 30s"));
    expect(cfg.server.server_id).toBe("eu-1");
    expect(cfg.server.change_feed).toMatchObject({ poll_interval: 100, gap_timeout: 30_000 });
    expect(() => parseServerConfig(withServerLine("change_feed:\n    poll_interval: 2m"))).toThrow(/server\.change_feed\.poll_interval/);
    expect(() => parseServerConfig(withServerLine("change_feed:\n    gap_timeout: 10ms"))).toThrow(/server\.change_feed\.gap_timeout/);
    expect(() => parseServerConfig(withServerLine("server_id: has space"))).toThrow(/server\.server_id/);
  });

  it("resolves agent_ttl and jwt_key_type from their defaults' sources", () => {
    const cfg = parseServerConfig(withServerLine("default_x509_svid_ttl: 30m\n  ca_key_type: rsa-2048"));
    expect(cfg.server.agent_ttl).toBe(30 * 60_000);
    expect(cfg.server.jwt_key_type).toBe("rsa-2048");
    expect(parseServerConfig(withServerLine("agent_ttl: 2h")).server.agent_ttl).toBe(7_200_000);
  });

  it("accepts SPIRE's upper-case log levels", () => {
    expect(parseServerConfig(withServerLine("log_level: DEBUG")).server.log_level).toBe("debug");
  });

  it("accepts the documented example", () => {
    const cfg = parseServerConfig(SERVER_CONFIG_EXAMPLE);
    expect(cfg.plugins.KeyManager?.["disk"]).toEqual({ keys_path: "/var/lib/sigil/server/keys.json" });
    expect(cfg.telemetry?.prometheus).toEqual({ host: "0.0.0.0", port: 9988 });
  });

  it("accepts JSON", () => {
    const json = JSON.stringify({
      $schema: "./config.schema.json",
      server: { trust_domain: "example.org", ca_ttl: "48h" },
      plugins: { DataStore: { sql: { database_type: "sqlite3", connection_string: "db" } }, KeyManager: { disk: { keys_path: "k.json" } }, NodeAttestor: { join_token: null } },
    });
    const f = path.join(dir, "server.json");
    writeFileSync(f, json);
    expect(loadServerConfig(f).server.ca_ttl).toBe(48 * 3_600_000);
  });

  it("rejects an unknown key with its full path", () => {
    expect(errorOf(() => parseServerConfig(withServerLine("bind_prot: 1"), "yaml", { source: "s.yaml" }))).toBe(
      'config: s.yaml: server.bind_prot: unknown key (did you mean "bind_port"?) (line 4, column 3)',
    );
    const nested = MINIMAL.replace("      connection_string: ./datastore.sqlite3\n", "      connection_string: ./datastore.sqlite3\n      pool_size: 4\n");
    expect(errorOf(() => parseServerConfig(nested))).toContain("plugins.DataStore.sql.pool_size: unknown key");
  });

  it("rejects a bad duration with its path", () => {
    expect(errorOf(() => parseServerConfig(withServerLine('ca_ttl: "1 hour"')))).toBe(
      'config: server.ca_ttl: invalid duration "1 hour" (expected e.g. "1h", "90m", "1h30m", "500ms") (line 4, column 11)',
    );
    expect(errorOf(() => parseServerConfig(withServerLine("default_x509_svid_ttl: 3600")))).toContain(
      "server.default_x509_svid_ttl: a duration must be a string with a unit, got the number 3600",
    );
  });

  it("takes signing_threads from 0 to 64 and an issuance_log_retention duration, naming the key of a bad value", () => {
    expect(parseServerConfig(withServerLine("signing_threads: 0")).server.signing_threads).toBe(0);
    expect(parseServerConfig(withServerLine("issuance_log_retention: 0s")).server.issuance_log_retention).toBe(0);
    for (const bad of ["-1", "1.5", "65", '"two"']) expect(errorOf(() => parseServerConfig(withServerLine(`signing_threads: ${bad}`)))).toContain("server.signing_threads:");
    expect(errorOf(() => parseServerConfig(withServerLine("issuance_log_retention: 7")))).toContain("server.issuance_log_retention: a duration must be a string with a unit");
  });

  it("rejects a bad trust domain", () => {
    const text = MINIMAL.replace("trust_domain: example.org", "trust_domain: spiffe://Example.org");
    expect(errorOf(() => parseServerConfig(text))).toMatch(/^config: server\.trust_domain: invalid trust domain: expected a bare trust-domain name/);
    const upper = MINIMAL.replace("trust_domain: example.org", "trust_domain: Example.org");
    expect(errorOf(() => parseServerConfig(upper))).toContain("server.trust_domain: invalid trust domain: trust domain contains upper-case");
  });

  it("reports missing required keys and sections together", () => {
    const msg = errorOf(() => parseServerConfig("server:\n  bind_port: 1\n"));
    expect(msg).toContain("2 problems");
    expect(msg).toContain("server.trust_domain: required key is missing");
    expect(msg).toContain("plugins: required key is missing");
  });

  it("requires exactly one KeyManager and at least one NodeAttestor", () => {
    const two = MINIMAL.replace("    memory:\n", "    memory:\n    disk:\n      keys_path: k.json\n");
    expect(errorOf(() => parseServerConfig(two))).toContain("plugins.KeyManager: exactly one KeyManager plugin may be configured, got 2: disk, memory");
    const none = MINIMAL.replace("  KeyManager:\n    memory:\n", "  KeyManager: {}\n");
    expect(errorOf(() => parseServerConfig(none))).toContain("plugins.KeyManager: one KeyManager plugin must be configured");
    const noAttestor = MINIMAL.replace("  NodeAttestor:\n    join_token: {}\n", "  NodeAttestor: {}\n");
    expect(errorOf(() => parseServerConfig(noAttestor))).toContain("plugins.NodeAttestor: at least one NodeAttestor plugin must be configured");
  });

  it("validates enums and ports", () => {
    expect(errorOf(() => parseServerConfig(withServerLine("ca_key_type: ed25519")))).toContain(
      'server.ca_key_type: must be one of "ec-p256", "ec-p384", "rsa-2048", "rsa-4096" (got "ed25519")',
    );
    expect(errorOf(() => parseServerConfig(withServerLine("bind_port: 70000")))).toContain("server.bind_port:");
  });

  it("rejects a YAML duplicate key", () => {
    expect(errorOf(() => parseServerConfig(withServerLine("trust_domain: other.org")))).toBe('config: duplicate key "trust_domain" (line 4, column 3)');
  });

  it("names an unreadable file and the OS reason", () => {
    const f = path.join(dir, "nope.yaml");
    expect(errorOf(() => loadServerConfig(f))).toMatch(new RegExp(`^config: ${f.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: cannot read the file: ENOENT: no such file or directory`));
  });

  it("expands the environment with expandEnv", () => {
    const f = path.join(dir, "env.yaml");
    writeFileSync(f, MINIMAL.replace("trust_domain: example.org", "trust_domain: ${SIGIL_TD}"));
    expect(loadServerConfig(f, { expandEnv: true, env: { SIGIL_TD: "prod.example" } }).server.trust_domain).toBe("prod.example");
    expect(errorOf(() => loadServerConfig(f, { expandEnv: true, env: {} }))).toContain("environment variable SIGIL_TD is not set");
  });
});
