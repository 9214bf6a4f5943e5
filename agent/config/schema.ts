/**
 * The agent config schema: the one definition that validates the file at
 * startup, types {@link AgentConfig}, and renders the published JSON Schema
 * (see `reference.ts`). Keys mirror SPIRE's agent config in snake_case, so a
 * SPIRE config translates mechanically; plugin sections are keyed by plugin
 * type, then plugin name, as in SPIRE.
 */
import { z } from "zod";
import { duration } from "../../common/config/duration.js";
import { healthChecksSection as healthChecks, host, LOG_LEVELS, logLevel, port, telemetrySection, trustDomainName as trustDomain } from "../../common/config/fields.js";
import { pluginsConfigSchema } from "../../plugins/catalog.js";
import { isSigilError } from "../../spiffe/errors.js";
import { MAX_UNIX_SOCKET_PATH_BYTES, parseEndpointAddress, unixSocketPathLengthProblem } from "../../spiffe/workloadapi/address.js";
import { DEFAULT_MAX_CALLS_PER_UID } from "../endpoints/call-limit.js";
import { parseHostPort } from "../sync/server-addresses.js";
import { DEFAULT_TAINT_BATCH_SIZE } from "../rotation/taint.js";
import { DEFAULT_MAX_CONNECTIONS_PER_UID } from "../endpoints/server.js";

/** Default Workload API socket (SPIRE's path with `sigil-agent`). */
export const DEFAULT_AGENT_SOCKET_PATH = "/tmp/sigil-agent/public/api.sock";

/** Default directory of the agent's persisted SVID, key and bundle. */
export const DEFAULT_AGENT_DATA_DIR = "./.sigil/agent";

/** Log levels; SPIRE's upper-case spellings are accepted and lowered. */
export const AGENT_LOG_LEVELS = LOG_LEVELS;

/** The three ways to trust the server on first contact; exactly one is set. */
export const TRUST_BOOTSTRAP_KEYS = ["trust_bundle_path", "trust_bundle_url", "insecure_bootstrap"] as const;

const URI_SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):/;

/**
 * Reads `agent.socket_path`: an absolute path, or the same path as a
 * `unix:///path` (or `unix:/path`) URI as `SPIFFE_ENDPOINT_SOCKET` spells it,
 * at most {@link MAX_UNIX_SOCKET_PATH_BYTES} bytes long. Returns the path, or the problem.
 */
export function parseAgentSocketPath(value: string): { readonly path: string } | { readonly problem: string } {
  if (value.startsWith("/")) {
    // The URI form is checked the same way by parseEndpointAddress.
    const tooLong = unixSocketPathLengthProblem(value);
    return tooLong === undefined ? { path: value } : { problem: `the socket path ${tooLong}` };
  }
  const scheme = URI_SCHEME.exec(value)?.[1]?.toLowerCase();
  // WEP-3/WEP-4: the endpoint listens on a Unix socket only.
  if (scheme === "tcp") return { problem: "TCP listeners are not supported; give a Unix socket path (WEP-4), e.g. /tmp/sigil-agent/public/api.sock or unix:///tmp/sigil-agent/public/api.sock" };
  if (scheme === undefined) return { problem: `${JSON.stringify(value)} is a relative path; give an absolute path (/run/sigil/api.sock) or a unix:///absolute/path URI` };
  if (scheme !== "unix") return { problem: `scheme ${JSON.stringify(scheme)} is not supported; give an absolute path or a unix:///absolute/path URI` };
  try {
    const address = parseEndpointAddress(value);
    if (address.kind === "unix") return { path: address.path };
  } catch (e) {
    if (isSigilError(e)) return { problem: e.message.replace(/^workloadapi: endpoint address /, "") };
    throw e;
  }
  return { problem: "not a unix:///absolute/path URI" };
}

const socketPath = z
  .string()
  .min(1)
  .transform((value, ctx) => {
    const r = parseAgentSocketPath(value);
    if ("path" in r) return r.path;
    ctx.issues.push({ code: "custom", message: r.problem, input: value });
    return z.NEVER;
  })
  .meta({ pattern: "^(/|[Uu][Nn][Ii][Xx]:/)" });

const fraction = (what: string) =>
  z.number().refine((v) => v > 0 && v < 1, { error: `${what} must be strictly between 0 and 1` });

/** SDS resource names must not collide: one name, one secret. */
const sdsSection = z
  .strictObject({
    disable_sds_api: z.boolean().default(false).describe("Do not serve Envoy SDS (`envoy.service.secret.v3.SecretDiscoveryService`) on the agent socket."),
    default_svid_name: z.string().min(1).default("default").describe("SDS resource name of the caller's default X509-SVID (its first identity) as a TLS certificate."),
    default_bundle_name: z.string().min(1).default("ROOTCA").describe("SDS resource name of the agent's own trust bundle as a validation context."),
    default_all_bundles_name: z
      .string()
      .min(1)
      .default("ALL")
      .describe("SDS resource name of a validation context for every trust domain the caller trusts (own and federated); with federated bundles it uses Envoy's SPIFFE certificate validator."),
    disable_spiffe_cert_validation: z
      .boolean()
      .default(false)
      .describe("Never answer with Envoy's SPIFFE certificate validator (`envoy.tls.cert_validator.spiffe`), for Envoys older than 1.18; an Envoy's node metadata key of the same name overrides it. `ALL` is then not served to callers with federated bundles."),
  })
  .superRefine((s, ctx) => {
    const names = [s.default_svid_name, s.default_bundle_name, s.default_all_bundles_name];
    if (new Set(names).size !== names.length) ctx.addIssue({ code: "custom", message: "default_svid_name, default_bundle_name and default_all_bundles_name must differ" });
    for (const n of names) if (n.startsWith("spiffe://")) ctx.addIssue({ code: "custom", message: `${JSON.stringify(n)}: a default name must not look like a SPIFFE ID or trust domain` });
  })
  .describe("Envoy SDS v3 on the agent socket (SPIRE's `sds` options).");

const agentSection = z
  .strictObject({
    trust_domain: trustDomain.describe("The trust domain the agent belongs to, as a bare name (`example.org`). Stored SVIDs and bundles of another trust domain are discarded."),
    server_address: host.default("127.0.0.1").describe("Host name or address of the server's agent API."),
    server_port: port.default(8081).describe("Port of the server's agent API."),
    server_addresses: z
      .array(
        z.string().refine((v) => {
          try {
            parseHostPort(v, "server_addresses");
            return true;
          } catch {
            return false;
          }
        }, "must be host:port (a port 1-65535; IPv6 addresses in brackets)"),
      )
      .min(1)
      .optional()
      .describe(
        "Agent API addresses (`host:port`) of every server of the trust domain; when set, `server_address` and `server_port` are not used. A host name resolving to several addresses counts as one server per address. The agent picks one at random, stays with it while it answers, and fails over to the next when it is unavailable.",
      ),
    socket_path: socketPath
      .prefault(DEFAULT_AGENT_SOCKET_PATH)
      .describe("Unix socket the Workload API (and SDS) is served on: an absolute path (`/run/sigil/api.sock`) or the same as a URI (`unix:///run/sigil/api.sock`). TCP listeners are not supported."),
    data_dir: z.string().min(1).default(DEFAULT_AGENT_DATA_DIR).describe("Directory where the agent keeps its SVID, key (mode 0600) and trust bundle across restarts."),
    log_level: logLevel.prefault("info").describe("Minimum log level."),
    log_format: z.enum(["json", "text"]).default("json").describe("`json` (one JSON object per line) or `text` (logfmt-style `key=value`)."),
    trust_bundle_path: z.string().min(1).optional().describe("File with the server's trust bundle, used on first contact. One of `trust_bundle_path`, `trust_bundle_url`, `insecure_bootstrap`."),
    trust_bundle_url: z
      .url({ protocol: /^https$/, error: "must be an https:// URL" })
      .optional()
      .describe("https URL serving the server's trust bundle (fetched with WebPKI validation), used on first contact. One of `trust_bundle_path`, `trust_bundle_url`, `insecure_bootstrap`."),
    trust_bundle_format: z.enum(["pem", "spiffe"]).default("pem").describe("Format of the bootstrap bundle from `trust_bundle_path` or `trust_bundle_url`: PEM certificates or a SPIFFE bundle (JWKS JSON)."),
    insecure_bootstrap: z.boolean().optional().describe("Attest without authenticating the server on first contact. For development only. One of `trust_bundle_path`, `trust_bundle_url`, `insecure_bootstrap`."),
    join_token: z.string().min(1).optional().describe("Single-use join token for the `join_token` node attestor; needed only when no valid agent SVID is stored in `data_dir`."),
    sync_interval: duration({ minMs: 100 }).prefault("5s").describe("How often the agent syncs entries and bundles with the server. Failed syncs back off exponentially up to min(8m, 48 × sync_interval)."),
    rotation_fraction: fraction("rotation_fraction").default(0.5).describe("Fraction of an SVID's lifetime after which it is renewed (0.5: at half life)."),
    rotation_jitter: z.number().min(0).max(0.5).default(0.1).describe("Random spread of the renewal point, as a fraction of it (0.1: ±10%), so agents do not renew in lockstep."),
    taint_replacement_spread: duration()
      .prefault("10s")
      .describe(
        "When the server reports a tainted authority, the agent replaces every SVID under it at once, in batches each sent at a random point of this window, so a fleet told in the same second does not ask in the same second. The server then signs about (agents × SVIDs per agent) / spread per second: 10,000 agents with 10 SVIDs each over 10s is 10,000 SVIDs per second. Raise it for larger fleets or slower signing; keep it well under the shortest SVID TTL's remaining half. The old SVIDs stay served until their replacements arrive.",
      ),
    taint_replacement_batch_size: z
      .number()
      .int()
      .min(1)
      .max(1000)
      .default(DEFAULT_TAINT_BATCH_SIZE)
      .describe("Most X509-SVIDs in one replacement request after a taint; each batch gets its own random point of `taint_replacement_spread`."),
    workload_attestation_timeout: duration({ minMs: 1 }).prefault("5s").describe("How long workload attestation of one Workload API caller may take."),
    max_workload_connections_per_uid: z
      .number()
      .int()
      .min(1)
      .default(DEFAULT_MAX_CONNECTIONS_PER_UID)
      .describe(
        "Open Workload API connections one uid may hold; further ones are closed at once (logged once). Each costs the agent two file descriptors, so keep its open-file limit well above twice this times the number of local users.",
      ),
    max_workload_calls_per_uid: z
      .number()
      .int()
      .min(1)
      .default(DEFAULT_MAX_CALLS_PER_UID)
      .describe(
        "Workload API calls (streams included, on all connections and services together) one uid may have open at once; further ones are refused with ResourceExhausted (logged once). Bounds the agent memory one user can hold.",
      ),
    allow_unauthenticated_verifiers: z.boolean().default(false).describe("Let callers that attest to no entry read bundles and validate JWT-SVIDs."),
    sds: sdsSection.prefault({}),
  })
  .superRefine((a, ctx) => {
    const set = TRUST_BOOTSTRAP_KEYS.filter((k) => (k === "insecure_bootstrap" ? a.insecure_bootstrap === true : a[k] !== undefined));
    if (set.length !== 1) {
      ctx.addIssue({
        code: "custom",
        message:
          set.length === 0
            ? `exactly one of ${TRUST_BOOTSTRAP_KEYS.join(", ")} must be set (how the agent trusts the server on first contact)`
            : `exactly one of ${TRUST_BOOTSTRAP_KEYS.join(", ")} may be set, got ${set.join(", ")}`,
      });
    }
  })
  .describe("Core agent settings.");

const healthChecksSection = healthChecks({
  listenerEnabled: "Serve the HTTP health endpoints (for Kubernetes probes).",
  readyPath: "Readiness path: 200 once the agent holds its bundle and has synced, else 503 with the reasons (e.g. the agent was evicted and needs a new join token).",
});

/** Generated from the plugin catalog: each plugin's schema lives in its own folder. */
const pluginsSection = pluginsConfigSchema("agent");

/**
 * The Sigil agent config file schema. Parse with `loadAgentConfig`; the result
 * is an {@link AgentConfig}.
 */
export const agentConfigSchema = z
  .strictObject({
    $schema: z.string().optional().describe("JSON Schema reference for editors; ignored by the agent."),
    version: z.literal("v1").default("v1").describe("Config format version."),
    agent: agentSection,
    health_checks: healthChecksSection.prefault({}),
    telemetry: telemetrySection.optional(),
    plugins: pluginsSection,
  })
  .describe("Sigil agent configuration.");

/**
 * A validated agent config, with defaults applied: durations are numbers of
 * milliseconds, `log_level` is lower case, plugins without settings are `{}`,
 * and exactly one trust bootstrap key is set.
 */
export type AgentConfig = z.output<typeof agentConfigSchema>;

/** The agent config as written in the file (before defaults and parsing). */
export type AgentConfigInput = z.input<typeof agentConfigSchema>;
