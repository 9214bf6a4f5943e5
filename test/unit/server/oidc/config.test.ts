/**
 * OIDC discovery config: the server's `oidc_discovery` section needs
 * `server.jwt_issuer` and names that key when it is missing; the
 * `sigil-server oidc-discovery` process config names the key path of each
 * problem.
 */
import { describe, expect, it } from "vitest";
import { parseConfigText } from "../../../../common/config/parse.js";
import { parseServerConfig } from "../../../../server/config/load.js";
import { oidcProcessConfigSchema } from "../../../../server/oidc/config.js";
import { isSigilError } from "../../../../spiffe/errors.js";

const server = (serverLines: string, oidc: string): string => `
server:
  trust_domain: example.org
${serverLines}plugins:
  DataStore:
    sql:
      database_type: sqlite3
      connection_string: ./datastore.sqlite3
  KeyManager:
    memory:
  NodeAttestor:
    join_token: {}
${oidc}`;

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(isSigilError(e, "ERR_INVALID_ARGUMENT"), String(e)).toBe(true);
    return (e as Error).message;
  }
  throw new Error("expected an error");
}

describe("server oidc_discovery", () => {
  it("enabled without server.jwt_issuer is an error naming server.jwt_issuer", () => {
    expect(errorOf(() => parseServerConfig(server("", "oidc_discovery:\n  enabled: true\n")))).toMatch(/server\.jwt_issuer: is required when oidc_discovery\.enabled is true/);
  });

  it("defaults: 0.0.0.0:8008, plain HTTP, one minute of caching", () => {
    const c = parseServerConfig(server("  jwt_issuer: https://oidc.example.org\n", "oidc_discovery:\n  enabled: true\n"));
    expect(c.oidc_discovery).toEqual({ enabled: true, address: "0.0.0.0", port: 8008, cache_max_age: 60_000 });
  });

  it.each(["https://oidc.example.org/?tenant=a", "https://oidc.example.org/#x", "urn:example:issuer"])(
    "enabled with server.jwt_issuer %s, which gives no usable discovery URL, is an error naming server.jwt_issuer",
    (issuer) => {
      expect(errorOf(() => parseServerConfig(server(`  jwt_issuer: "${issuer}"\n`, "oidc_discovery:\n  enabled: true\n")))).toMatch(
        /server\.jwt_issuer: .*an http\(s\) URL without query or fragment/,
      );
    },
  );

  it("a disabled section needs no issuer; bad keys are named", () => {
    expect(parseServerConfig(server("", "oidc_discovery:\n  enabled: false\n")).oidc_discovery?.enabled).toBe(false);
    expect(errorOf(() => parseServerConfig(server("  jwt_issuer: https://o.example.org\n", "oidc_discovery:\n  enabled: true\n  tls:\n    cert_file_path: c.pem\n")))).toContain(
      "oidc_discovery.tls.key_file_path",
    );
    expect(errorOf(() => parseServerConfig(server("  jwt_issuer: https://o.example.org\n", "oidc_discovery:\n  enabled: true\n  jwks_uri: ftp://x\n")))).toContain("oidc_discovery.jwks_uri");
  });
});

describe("sigil-server oidc-discovery config", () => {
  const parse = (text: string) => parseConfigText(text, "yaml", oidcProcessConfigSchema, { source: "oidc.yaml" });

  it("takes an issuer, a listener and a Workload API key source", () => {
    const c = parse("issuer: https://oidc.example.org\nport: 0\nworkload_api:\n  socket_path: /run/sigil/agent.sock\n  trust_domain: example.org\n");
    expect(c).toMatchObject({ issuer: "https://oidc.example.org", address: "0.0.0.0", port: 0, workload_api: { socket_path: "/run/sigil/agent.sock", trust_domain: "example.org" } });
    expect(c.health_checks.listener_enabled).toBe(false);
  });

  it("an issuer with a query or fragment is an error naming issuer", () => {
    for (const issuer of ["https://oidc.example.org/?tenant=a", "https://oidc.example.org/td#x"]) {
      expect(errorOf(() => parse(`issuer: "${issuer}"\nworkload_api:\n  socket_path: /run/a.sock\n  trust_domain: example.org\n`))).toMatch(/issuer: .*without query or fragment/);
    }
  });

  it("names the key path of each problem", () => {
    const message = errorOf(() => parse("issuer: not-a-url\nworkload_api:\n  trust_domain: Example.ORG\nlisten: 1\n"));
    expect(message).toContain("issuer");
    expect(message).toContain("workload_api.socket_path");
    expect(message).toContain("workload_api.trust_domain");
    expect(message).toContain("listen: unknown key");
  });
});
