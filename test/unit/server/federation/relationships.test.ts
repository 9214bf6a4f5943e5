import { describe, expect, it } from "vitest";
import { parseServerConfig } from "../../../../server/config/load.js";
import { configRelationshipFieldNames, parseInitialBundle, validateRelationship, type RelationshipFieldNames } from "../../../../server/federation/relationships.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import { makeTestCa } from "../../../support/federation-bundles.js";

const OWN = parseTrustDomain("td-a.test");
const NAMES: RelationshipFieldNames = {
  trustDomain: "relationship.trust_domain",
  bundleEndpointUrl: "relationship.bundle_endpoint_url",
  profile: "relationship.bundle_endpoint_profile",
  endpointSpiffeId: "relationship.endpoint_spiffe_id",
  initialBundle: "relationship.trust_domain_bundle",
};
const WEB = { trustDomain: "td-b.test", bundleEndpointUrl: "https://b.example/bundle", profile: "https_web" };

function message(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(isSigilError(e, "ERR_INVALID_ARGUMENT"), String(e)).toBe(true);
    return (e as Error).message;
  }
  throw new Error("expected an error");
}

describe("relationship validation", () => {
  it("accepts https_web with exactly URL, profile and trust domain (FED-12) and https_spiffe with an endpoint ID", () => {
    expect(validateRelationship(WEB, OWN, NAMES)).toMatchObject({ bundleEndpointUrl: "https://b.example/bundle", profile: "https_web" });
    const s = validateRelationship({ ...WEB, profile: "https_spiffe", endpointSpiffeId: "spiffe://td-b.test/spire/server" }, OWN, NAMES);
    expect(s.trustDomain.name).toBe("td-b.test");
    expect(s.endpointSpiffeId?.toString()).toBe("spiffe://td-b.test/spire/server");
  });

  it("FED-9 FED-18: each of trust domain, URL and profile is required, and the trust domain is not taken from the URL", () => {
    expect(message(() => validateRelationship({ ...WEB, trustDomain: "" }, OWN, NAMES))).toMatch(/^relationship\.trust_domain: is required/);
    expect(message(() => validateRelationship({ ...WEB, bundleEndpointUrl: "" }, OWN, NAMES))).toMatch(/^relationship\.bundle_endpoint_url: is required/);
    expect(message(() => validateRelationship({ ...WEB, profile: "" }, OWN, NAMES))).toMatch(/^relationship\.bundle_endpoint_profile: is required/);
    expect(message(() => validateRelationship({ ...WEB, profile: "https" }, OWN, NAMES))).toMatch(/^relationship\.bundle_endpoint_profile: must be https_web or https_spiffe/);
  });

  it("FED-11: the URL is https and carries no userinfo", () => {
    expect(message(() => validateRelationship({ ...WEB, bundleEndpointUrl: "http://b.example/" }, OWN, NAMES))).toMatch(/^relationship\.bundle_endpoint_url: .*https/);
    expect(message(() => validateRelationship({ ...WEB, bundleEndpointUrl: "https://u:p@b.example/" }, OWN, NAMES))).toMatch(/^relationship\.bundle_endpoint_url: .*userinfo/);
    expect(message(() => validateRelationship({ ...WEB, bundleEndpointUrl: "not a url" }, OWN, NAMES))).toMatch(/^relationship\.bundle_endpoint_url: /);
  });

  it("FED-20: https_spiffe needs a valid endpoint SPIFFE ID with a path; https_web takes none; the own trust domain is refused", () => {
    expect(message(() => validateRelationship({ ...WEB, profile: "https_spiffe" }, OWN, NAMES))).toMatch(/^relationship\.endpoint_spiffe_id: is required/);
    expect(message(() => validateRelationship({ ...WEB, profile: "https_spiffe", endpointSpiffeId: "spiffe://TD/x" }, OWN, NAMES))).toMatch(/^relationship\.endpoint_spiffe_id: /);
    expect(message(() => validateRelationship({ ...WEB, profile: "https_spiffe", endpointSpiffeId: "spiffe://td-b.test" }, OWN, NAMES))).toMatch(/^relationship\.endpoint_spiffe_id: must have a path/);
    expect(message(() => validateRelationship({ ...WEB, endpointSpiffeId: "spiffe://td-b.test/x" }, OWN, NAMES))).toMatch(/^relationship\.endpoint_spiffe_id: is only for the https_spiffe profile/);
    expect(message(() => validateRelationship({ ...WEB, trustDomain: "td-a.test" }, OWN, NAMES))).toMatch(/^relationship\.trust_domain: td-a\.test is this server's own trust domain/);
  });

  it("initial bundles: SPIFFE JSON keeps its sequence, PEM becomes a document with sequence 0, others are refused naming the field", () => {
    const ca = makeTestCa("td-b.test");
    const td = parseTrustDomain("td-b.test");
    const spiffe = parseInitialBundle(ca.bundleJson(7n), "spiffe", td, "f");
    expect(spiffe.sequence).toBe(7n);
    expect(spiffe.bundle.x509Authorities).toHaveLength(1);
    const pem = parseInitialBundle(ca.certPem, "pem", td, "f");
    expect(pem.sequence).toBe(0n);
    expect(JSON.parse(pem.document).keys).toHaveLength(1);
    expect(message(() => parseInitialBundle("{}", "spiffe", td, "f"))).toMatch(/^f: /);
    expect(message(() => parseInitialBundle("nothing here", "pem", td, "f"))).toMatch(/^f: /);
    expect(message(() => parseInitialBundle(ca.certPem, "der", td, "f"))).toMatch(/^f format: must be spiffe or pem/);
  });
});

const BASE = `
server:
  trust_domain: td-a.test
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

function configError(federation: string): string {
  try {
    parseServerConfig(`${BASE}federation:\n${federation}`);
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error("expected an error");
}

describe("federation.federates_with config", () => {
  it("parses SPIRE's shape with defaults for the format and refresh bounds", () => {
    const c = parseServerConfig(`${BASE}federation:
  federates_with:
    td-b.test:
      bundle_endpoint_url: https://127.0.0.1:8443/
      bundle_endpoint_profile:
        https_spiffe: { endpoint_spiffe_id: spiffe://td-b.test/spire/server }
    td-c.test:
      bundle_endpoint_url: https://c.example/
      bundle_endpoint_profile: { https_web: {} }
`);
    expect(c.federation?.federates_with["td-b.test"]?.trust_domain_bundle_format).toBe("spiffe");
    expect(c.federation?.min_refresh_interval).toBe(30_000);
    expect(c.federation?.max_refresh_interval).toBe(3_600_000);
    expect(Object.keys(c.federation?.federates_with ?? {})).toEqual(["td-b.test", "td-c.test"]);
  });

  it("FED-9 FED-11 FED-20: errors name the key path", () => {
    expect(configError(`  federates_with:\n    td-b.test:\n      bundle_endpoint_url: http://b.example/\n      bundle_endpoint_profile: { https_web: {} }\n`)).toContain('federation.federates_with["td-b.test"].bundle_endpoint_url');
    expect(configError(`  federates_with:\n    td-b.test:\n      bundle_endpoint_profile: { https_web: {} }\n`)).toContain('federation.federates_with["td-b.test"].bundle_endpoint_url');
    expect(configError(`  federates_with:\n    td-b.test:\n      bundle_endpoint_url: https://b.example/\n`)).toContain('federation.federates_with["td-b.test"].bundle_endpoint_profile');
    expect(configError(`  federates_with:\n    td-b.test:\n      bundle_endpoint_url: https://b.example/\n      bundle_endpoint_profile: { https_web: {}, https_spiffe: { endpoint_spiffe_id: spiffe://td-b.test/x } }\n`)).toContain("exactly one");
    expect(configError(`  federates_with:\n    td-b.test:\n      bundle_endpoint_url: https://b.example/\n      bundle_endpoint_profile: { https_spiffe: { endpoint_spiffe_id: "spiffe://td-b.test" } }\n`)).toContain('federation.federates_with["td-b.test"].bundle_endpoint_profile.https_spiffe.endpoint_spiffe_id');
    expect(configError(`  federates_with:\n    td-a.test:\n      bundle_endpoint_url: https://b.example/\n      bundle_endpoint_profile: { https_web: {} }\n`)).toMatch(/federation\.federates_with\["td-a\.test"\].*own trust domain/);
    expect(configError(`  min_refresh_interval: 2h\n`)).toContain("federation.min_refresh_interval");
  });

  it("names the config key in field messages", () => {
    expect(configRelationshipFieldNames("td-b.test").initialBundle).toBe('federation.federates_with["td-b.test"].trust_domain_bundle_path');
  });
});
