/**
 * The server config schema: the one definition that validates the file at
 * startup, types {@link ServerConfig}, and generates `server/config.schema.json`
 * and `docs/configuration.md`. Keys mirror SPIRE's server config in snake_case
 * where SPIRE has them, so SPIRE configs translate mechanically; plugin
 * sections are keyed by plugin type, then plugin name, as in SPIRE.
 */
import { z } from "zod";
import { duration } from "../../common/config/duration.js";
import { healthChecksSection as healthChecks, host, httpPath, logLevel, port, telemetrySection, trustDomainName as trustDomain } from "../../common/config/fields.js";
import { pluginsConfigSchema } from "../../plugins/catalog.js";
import { isSigilError } from "../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../spiffe/id.js";
import { configRelationshipFieldNames, validateRelationship } from "../federation/relationships.js";
import { oidcDiscoverySection, oidcIssuerProblem } from "../oidc/config.js";
import { transparencyLogSection } from "../tlog/config.js";

/** Default admin API socket, shared with `sigil-server` CLI commands. */
export const DEFAULT_SERVER_SOCKET_PATH = "/tmp/sigil-server/private/api.sock";

/** Key types the CA and JWT signer accept (SPIRE's set). */
export const SERVER_KEY_TYPES = ["ec-p256", "ec-p384", "rsa-2048", "rsa-4096"] as const;

export { LOG_LEVELS, type ConfigLogLevel } from "../../common/config/fields.js";

const keyType = z.enum(SERVER_KEY_TYPES);

/** A rate in requests per second, or a bucket size. */
const perSecond = z.number().int().min(1);

const rateLimitSection = z
  .strictObject({
    attestation: z.boolean().default(true).describe("Limit node attestation attempts per source address (SPIRE's `ratelimit.attestation`)."),
    attestation_per_second: perSecond.default(1).describe("Node attestation attempts allowed per second from one source address (SPIRE: 1). Failed attempts count too."),
    attestation_burst: perSecond
      .default(10)
      .describe(
        "Attempts one source address may make back to back after a quiet period. SPIRE makes attempts beyond the rate wait; Sigil refuses them, so it allows a short burst instead (nodes behind one NAT starting together).",
      ),
    signing: z.boolean().default(true).describe("Limit X509-SVID and JWT-SVID signing per agent (SPIRE's `ratelimit.signing`, which counts per source address)."),
    x509_signing_per_second: perSecond
      .default(500)
      .describe(
        "X509-SVIDs signed per second for one agent: each item of a BatchNewX509SVID call counts, and so does an agent SVID renewal (SPIRE: 500). An agent may use one second's worth at once; a larger batch is admitted when its bucket is full and delays the agent's next calls until the rate catches up.",
      ),
    jwt_signing_per_second: perSecond.default(500).describe("JWT-SVIDs signed per second for one agent, counted apart from X509-SVIDs (SPIRE: 500). An agent may use one second's worth at once."),
    sync: z
      .boolean()
      .default(true)
      .describe("Limit SyncAuthorized calls and WatchChanges stream opens per agent (SPIRE has no such limit). A sync is answered from memory, but computing the agent's entries, bundles and revision costs CPU, so an agent calling in a loop would load the server with no limit."),
    sync_per_second: perSecond.default(5).describe("SyncAuthorized calls allowed per second for one agent. An agent syncs every `sync_interval` and at once on a change notice; rounds never overlap."),
    sync_burst: perSecond.default(10).describe("SyncAuthorized calls one agent may make back to back after a quiet period."),
    watch_changes_per_second: perSecond.default(1).describe("WatchChanges streams one agent may open per second (it holds one; a newer one ends the older)."),
    watch_changes_burst: perSecond.default(3).describe("WatchChanges streams one agent may open back to back after a quiet period."),
    downstream_ca: z
      .boolean()
      .default(true)
      .describe(
        "Limit DownstreamAPI calls (nested servers asking for an intermediate CA) per caller, apart from `x509_signing_per_second`. Every call counts, refused ones too, and is charged before the caller's entries are looked up: a child needs one intermediate per half CA lifetime, and each one is a transparency-log entry.",
      ),
    downstream_ca_per_second: perSecond.default(1).describe("NewDownstreamX509CA calls allowed per second for one caller (its SPIFFE ID; a caller without a valid SVID counts by source address)."),
    downstream_ca_burst: perSecond.default(5).describe("NewDownstreamX509CA calls one caller may make back to back after a quiet period."),
  })
  .describe(
    "Rate limits of the agent API. A call over a limit is refused with RESOURCE_EXHAUSTED and a retry hint: the `grpc-retry-pushback-ms` trailer and `retry after <n>ms` at the end of the message. The local admin API is not limited.",
  );

const changeFeedSection = z
  .strictObject({
    poll_interval: duration({ minMs: 10 })
      .refine((ms) => ms <= 60_000, { error: "must be at most 1m" })
      .prefault("250ms")
      .describe("How often the server reads the database's change events when nothing wakes it (MySQL/MariaDB, SQLite): the longest time before a change made through another server reaches this one."),
    notify_poll_interval: duration({ minMs: 100 })
      .refine((ms) => ms <= 600_000, { error: "must be at most 10m" })
      .prefault("5s")
      .describe("PostgreSQL: how often the change events are read besides the `LISTEN`/`NOTIFY` wake-ups (a fallback for a lost notification connection)."),
    gap_timeout: duration({ minMs: 1_000 })
      .refine((ms) => ms <= 3_600_000, { error: "must be at most 1h" })
      .prefault("1m")
      .describe("How long an event ID missing below a seen one (a transaction still committing on another server) is read again before it is taken as never committed."),
    cache_max_age: duration({ minMs: 1_000 })
      .refine((ms) => ms <= 24 * 3_600_000, { error: "must be at most 24h" })
      .prefault("5m")
      .describe(
        "The longest an agent record or bundle is served from memory without reading it again, a bound on staleness should a change event be missed (a transaction committing after `gap_timeout`). Costs one read per agent record in use per server per period, and one read of every bundle per half period.",
      ),
    entry_reconcile_interval: duration({ minMs: 60_000 })
      .refine((ms) => ms <= 7 * 24 * 3_600_000, { error: "must be at most 7d" })
      .prefault("1h")
      .describe(
        "How often the entry index is compared with every stored entry although the change feed reported nothing missed, a bound on staleness should an entry's change event be missed without the feed knowing. Each compare reads every entry once (about the cost of the index's load at start) and replaces only the entries whose revision differs.",
      ),
    event_retention: duration({ minMs: 60_000 })
      .prefault("24h")
      .describe("How long change events are kept before pruning. A server that could not read them for longer reloads every entry, agent record and bundle it holds once."),
  })
  .describe("The change feed: how each server follows the changes every server sharing the database commits (entries, agents and bundles).");

const serverSection = z
  .strictObject({
    trust_domain: trustDomain.describe("The trust domain this server issues identities for, as a bare name (`example.org`). The server refuses to start if it changes."),
    bind_address: host.default("127.0.0.1").describe("Address of the agent- and admin-facing gRPC TLS listener. SPIRE's default is 0.0.0.0; Sigil listens on loopback unless told otherwise."),
    bind_port: port.default(8081).describe("Port of the gRPC TLS listener."),
    socket_path: z.string().min(1).default(DEFAULT_SERVER_SOCKET_PATH).describe("Unix socket of the local admin API (used by `sigil-server` admin commands and `healthcheck`)."),
    data_dir: z.string().min(1).default("./.sigil/server").describe("Directory for the server's runtime state."),
    log_level: logLevel.prefault("info").describe("Minimum log level. Changeable at runtime."),
    log_format: z.enum(["json", "text"]).default("json").describe("`json` (one JSON object per line) or `text` (logfmt-style `key=value`)."),
    ca_ttl: duration({ minMs: 60_000 }).prefault("24h").describe("Lifetime of each X.509 CA and of each JWT signing key."),
    downstream_ca_ttl: duration({ minMs: 60_000 })
      .optional()
      .describe(
        "Longest lifetime of an intermediate CA signed for a downstream (nested) server (`NewDownstreamX509CA`); a downstream server may ask for less. Defaults to `ca_ttl`. Never longer than the signing CA's own remaining lifetime.",
      ),
    default_x509_svid_ttl: duration({ minMs: 1_000 }).prefault("1h").describe("Default lifetime of X509-SVIDs when the registration entry sets none."),
    default_jwt_svid_ttl: duration({ minMs: 1_000 }).prefault("5m").describe("Default lifetime of JWT-SVIDs when the registration entry sets none."),
    agent_ttl: duration({ minMs: 1_000 }).optional().describe("Lifetime of agent SVIDs. Defaults to `default_x509_svid_ttl`."),
    ca_key_type: keyType.default("ec-p256").describe("Key type of the X.509 CA (and of JWT keys unless `jwt_key_type` is set)."),
    jwt_key_type: keyType.optional().describe("Key type of the JWT signing keys. Defaults to `ca_key_type`."),
    ca_subject: z
      .strictObject({
        country: z.array(z.string()).optional().describe("Country (C) values."),
        organization: z.array(z.string()).optional().describe("Organization (O) values."),
        common_name: z.string().optional().describe("Common name (CN)."),
      })
      .optional()
      .describe("Subject of CA certificates."),
    jwt_issuer: z.url().optional().describe("`iss` claim of JWT-SVIDs; unset means no `iss` claim."),
    audit_log_enabled: z.boolean().default(true).describe("Emit a `type: audit` log record for every admin and agent API call."),
    issuance_log_retention: duration({ minMs: 0 })
      .prefault("168h")
      .describe("How long the issuance log keeps the record of a credential after it expired (`0s`: until it expires)."),
    signing_threads: z
      .number()
      .int()
      .min(0)
      .max(64)
      .optional()
      .describe(
        "Threads that sign batches of X509-SVIDs for agents, beside the thread serving RPCs. `0` signs in-line. Defaults to one less than the available cores, at most 4.",
      ),
    ratelimit: rateLimitSection.prefault({}),
    server_id: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/, { error: "must be 1-64 of A-Z a-z 0-9 . _ -" })
      .optional()
      .describe(
        "Name of this server instance among the servers sharing one database: its rows in the CA journal carry it. Default: a random name made on first start and kept in `<data_dir>/server-id`, so it follows the data directory (where a `disk` KeyManager keeps the CA keys). Set it when data directories are cloned, so no two servers share one.",
      ),
    change_feed: changeFeedSection.prefault({}),
  })
  .transform((s) => ({ ...s, agent_ttl: s.agent_ttl ?? s.default_x509_svid_ttl, jwt_key_type: s.jwt_key_type ?? s.ca_key_type }))
  .describe("Core server settings.");

/** Names Kubernetes accepts for a namespace (RFC 1123 label). */
const namespaceName = z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, { error: "is not a Kubernetes namespace name" });

const k8sControllerSection = z
  .strictObject({
    enabled: z.boolean().default(false).describe("Run the registration controller in this server."),
    cluster: z
      .string()
      .min(1)
      .describe("The cluster's name: a cluster of `plugins.NodeAttestor.k8s_psat`, so that entries are parented to `spiffe://<td>/spire/agent/k8s_psat/<cluster>/<node UID>`."),
    kube_config_file: z
      .string()
      .min(1)
      .optional()
      .describe("Kubeconfig for the cluster's API server (its current context). Default: the `kube_config_file` of the `k8s_psat` cluster, else the server pod's in-cluster config."),
    class_name: z.string().default("").describe("Reconcile only the `ClusterSPIFFEID`s whose `spec.className` is this (empty: those without a className)."),
    default_cluster_spiffe_id: z
      .boolean()
      .default(true)
      .describe("Give every pod `spiffe://<td>/ns/<namespace>/sa/<service account>` without any `ClusterSPIFFEID` (a built-in rule selecting every pod)."),
    resync_interval: duration({ minMs: 1_000 }).prefault("10s").describe("How often the controller reconciles without a change on its watches, repairing entries changed by others."),
    ignore_namespaces: z.array(namespaceName).default(["kube-system", "kube-public", "sigil"]).describe("Namespaces whose pods are never registered."),
    entry_id_prefix: z
      .string()
      .regex(/^[A-Za-z0-9._~-]{1,100}$/, { error: "must be 1-100 of A-Z a-z 0-9 . _ ~ -" })
      .refine((p) => p.includes("."), { error: "must contain a \".\", which generated entry IDs never do, so that no other entry can start with it" })
      .optional()
      .describe("Prefix of the IDs of the entries the controller creates, and the mark of the entries it owns: it never reads, changes or deletes an entry without it. Must contain a `.` (generated entry IDs never do). Default `k8s.<cluster>.`; never give hand-made entries such IDs."),
    cluster_domain: z.string().min(1).default("cluster.local").describe("The cluster's DNS domain, `{{ .ClusterDomain }}` in templates."),
  })
  .transform((c) => ({ ...c, entry_id_prefix: c.entry_id_prefix ?? `k8s.${c.cluster}.` }))
  .describe("The automatic registration controller: registration entries for the pods of one Kubernetes cluster from `ClusterSPIFFEID` resources (docs/kubernetes.md).");

/** A SPIFFE ID (`spiffe://<td>/<path>`), checked by the SPIFFE parser. */
const spiffeIdString = z.string().superRefine((value, ctx) => {
  try {
    parseSpiffeId(value);
  } catch (e) {
    if (!isSigilError(e)) throw e;
    ctx.addIssue({ code: "custom", message: `invalid SPIFFE ID: ${e.message}` });
  }
});

const bundleEndpointSection = z
  .strictObject({
    address: host.default("0.0.0.0").describe("Address the bundle endpoint listens on (SPIRE's `address`)."),
    port: port.default(8443).describe("Port of the bundle endpoint (HTTPS)."),
    path: httpPath.default("/").describe("URL path the bundle is served on; every other path answers 404."),
    refresh_hint: duration({ minMs: 1_000 })
      .refine((ms) => ms % 1_000 === 0, { error: "must be a whole number of seconds (spiffe_refresh_hint is an integer)" })
      .prefault("5m")
      .describe("`spiffe_refresh_hint` of the served bundle, in whole seconds: how often federated servers should poll. Also the hint the CA stores in the trust domain's own bundle."),
    profile: z
      .strictObject({
        https_spiffe: z
          .strictObject({
            endpoint_spiffe_id: spiffeIdString
              .optional()
              .describe("SPIFFE ID of the X509-SVID the endpoint serves with; must be in this trust domain. Default: the server's own ID, `spiffe://<td>/spire/server`."),
          })
          .optional()
          .describe("Serve with an X509-SVID of this trust domain's CA (SPIRE's `https_spiffe`); federated servers authenticate it with this trust domain's bundle."),
        https_web: z
          .strictObject({
            serving_cert_file: z
              .strictObject({
                cert_file_path: z.string().min(1).describe("PEM file with the serving certificate, followed by its intermediates."),
                key_file_path: z.string().min(1).describe("PEM file with the serving certificate's private key."),
                file_sync_interval: duration({ minMs: 1_000 })
                  .prefault("1h")
                  .describe("How often the files are re-read in addition to reloading on change; a file that fails to load keeps the previous certificate."),
              })
              .describe("Certificate and key files, reloaded when they change."),
          })
          .optional()
          .describe("Serve with a WebPKI certificate (SPIRE's `https_web`); its SAN must name the host federated servers connect to."),
      })
      .refine((p) => (p.https_spiffe === undefined) !== (p.https_web === undefined), { error: "set exactly one of https_spiffe and https_web" })
      .optional()
      .describe("How the endpoint authenticates itself. Default: `https_spiffe` with the server's own ID."),
  })
  .describe("The SPIFFE bundle endpoint: serves this trust domain's bundle over HTTPS to federated trust domains (docs/federation.md).");

const federatesWithEntry = z
  .strictObject({
    bundle_endpoint_url: z.string().min(1).describe("`https://` URL of the trust domain's bundle endpoint (no userinfo). Every refresh starts from it; redirects are followed but never remembered."),
    bundle_endpoint_profile: z
      .strictObject({
        https_web: z.strictObject({}).optional().describe("The endpoint has a WebPKI certificate for the URL's host, checked against the system's trusted CAs (and `NODE_EXTRA_CA_CERTS`)."),
        https_spiffe: z
          .strictObject({
            endpoint_spiffe_id: z.string().min(1).describe("SPIFFE ID of the X509-SVID the endpoint serves with (SPIRE's default: `spiffe://<td>/spire/server`)."),
          })
          .optional()
          .describe("The endpoint serves with an X509-SVID, checked against the latest bundle held for the endpoint ID's trust domain."),
      })
      .refine((p) => (p.https_spiffe === undefined) !== (p.https_web === undefined), { error: "set exactly one of https_web and https_spiffe" })
      .describe("How the endpoint authenticates itself (no fallback from one profile to the other)."),
    trust_domain_bundle_path: z
      .string()
      .min(1)
      .optional()
      .describe("File with an initial bundle of the trust domain, stored when none is held yet. Required for a self-serving `https_spiffe` endpoint (its ID in this trust domain) whose bundle is not held."),
    trust_domain_bundle_format: z.enum(["spiffe", "pem"]).default("spiffe").describe("Format of `trust_domain_bundle_path`: a SPIFFE bundle document or PEM certificates."),
  })
  .describe("One relationship: where and how to fetch the trust domain's bundle.");

const federationSection = z
  .strictObject({
    bundle_endpoint: bundleEndpointSection.optional(),
    federates_with: z
      .record(z.string(), federatesWithEntry)
      .default({})
      .describe("Trust domains whose bundles this server fetches, keyed by trust-domain name (SPIRE's `federates_with`). Applied at every start; they win over relationships made through the admin API, which cannot change or delete them."),
    min_refresh_interval: duration({ minMs: 1_000 }).prefault("30s").describe("Shortest time between two fetches of one endpoint, whatever its bundle's `spiffe_refresh_hint` says."),
    max_refresh_interval: duration({ minMs: 1_000 }).prefault("1h").describe("Longest time between two fetches of one endpoint: a large refresh hint does not delay new keys beyond this."),
  })
  .refine((f) => f.min_refresh_interval <= f.max_refresh_interval, { error: "min_refresh_interval must not be longer than max_refresh_interval", path: ["min_refresh_interval"] })
  .describe("SPIFFE federation with other trust domains (docs/federation.md).");

const healthChecksSection = healthChecks({
  listenerEnabled: "Serve the HTTP health endpoints (for Kubernetes probes, which cannot reach a Unix socket).",
  readyPath: "Readiness path: 200 when the server can issue (CA active, datastore reachable), else 503 with the reasons.",
});

/** Generated from the plugin catalog: each plugin's schema lives in its own folder. */
const pluginsSection = pluginsConfigSchema("server");

/**
 * The Sigil server config file schema. Parse with `loadServerConfig`; the
 * result is a {@link ServerConfig}.
 */
export const serverConfigSchema = z
  .strictObject({
    $schema: z.string().optional().describe("JSON Schema reference for editors; ignored by the server."),
    version: z.literal("v1").default("v1").describe("Config format version."),
    server: serverSection,
    health_checks: healthChecksSection.prefault({}),
    telemetry: telemetrySection.optional(),
    k8s_controller: k8sControllerSection.optional(),
    federation: federationSection.optional(),
    oidc_discovery: oidcDiscoverySection.optional(),
    transparency_log: transparencyLogSection.optional(),
    plugins: pluginsSection,
  })
  .superRefine((c, ctx) => {
    for (const [name, r] of Object.entries(c.federation?.federates_with ?? {})) {
      const base = configRelationshipFieldNames(name).trustDomain;
      try {
        validateRelationship(
          { trustDomain: name, bundleEndpointUrl: r.bundle_endpoint_url, profile: r.bundle_endpoint_profile.https_web ? "https_web" : "https_spiffe", endpointSpiffeId: r.bundle_endpoint_profile.https_spiffe?.endpoint_spiffe_id },
          parseTrustDomain(c.server.trust_domain),
          configRelationshipFieldNames(name),
        );
      } catch (e) {
        if (!isSigilError(e)) throw e;
        // The message starts with the field's key path (`<base>.bundle_endpoint_url: …`); the issue carries it as its path.
        const [field = base, ...rest] = e.message.split(": ");
        const sub = field.startsWith(`${base}.`) ? field.slice(base.length + 1).split(".") : [];
        ctx.addIssue({ code: "custom", path: ["federation", "federates_with", name, ...sub], message: rest.join(": ") });
      }
    }
  })
  .superRefine((c, ctx) => {
    const endpointId = c.federation?.bundle_endpoint?.profile?.https_spiffe?.endpoint_spiffe_id;
    if (endpointId !== undefined && !endpointId.startsWith(`spiffe://${c.server.trust_domain}/`)) {
      ctx.addIssue({
        code: "custom",
        path: ["federation", "bundle_endpoint", "profile", "https_spiffe", "endpoint_spiffe_id"],
        message: `${endpointId} is not in the trust domain ${c.server.trust_domain}: the endpoint's SVID is signed by this server's CA`,
      });
    }
  })
  .superRefine((c, ctx) => {
    // The discovery document's issuer must be the `iss` the tokens carry.
    if (c.oidc_discovery?.enabled === true && c.server.jwt_issuer === undefined) {
      ctx.addIssue({ code: "custom", path: ["server", "jwt_issuer"], message: "is required when oidc_discovery.enabled is true: it is the issuer relying parties check JWT-SVIDs against" });
    }
    const issuerProblem = c.oidc_discovery?.enabled === true && c.server.jwt_issuer !== undefined ? oidcIssuerProblem(c.server.jwt_issuer) : undefined;
    if (issuerProblem !== undefined) ctx.addIssue({ code: "custom", path: ["server", "jwt_issuer"], message: issuerProblem });
  })
  .describe("Sigil server configuration.");

/**
 * A validated server config, with defaults applied: durations are numbers of
 * milliseconds, `log_level` is lower case, `agent_ttl` and `jwt_key_type` are
 * resolved, and plugins without settings are `{}`.
 */
export type ServerConfig = z.output<typeof serverConfigSchema>;

/** The server config as written in the file (before defaults and parsing). */
export type ServerConfigInput = z.input<typeof serverConfigSchema>;
