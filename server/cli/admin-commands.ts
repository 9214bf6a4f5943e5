/**
 * The admin noun-verb commands of `sigil-server` (entry, agent, token, bundle,
 * x509, jwt, issuance, federation), talking to the admin API over the local Unix socket.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import type { Command } from "commander";
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import {
  AgentAdmin,
  BundleAdmin,
  EntryAdmin,
  SvidAdmin,
  ListEntriesResponseSchema,
  ListAgentsResponseSchema,
  ListFederatedBundlesResponseSchema,
  IssuanceSchema,
  ListIssuancesResponseSchema,
  type Issuance,
} from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { AgentSchema, BundleSchema, EntrySchema, type Entry, type Selector } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { SelectorSchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { writeFileAtomic } from "../../common/atomic-file.js";
import { SERVER_PATH } from "../../common/reserved-ids.js";
import { ensureSecureDirectory } from "../../common/secure-dir.js";
import { createUnaryClient, type UnaryClient } from "../../common/rpc/unary-client.js";
import { parseSelector } from "../../common/selector.js";
import { buildCsr } from "../../spiffe/csr.js";
import { decodePemCertificates, toPem } from "../../spiffe/pem.js";
import { parseSpiffeBundle, toX509Bundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { parseSpiffeId } from "../../spiffe/id.js";
import { StaticX509BundleSource } from "../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../spiffe/x509/verify.js";
import { parseDuration } from "../../common/config/duration.js";
import { DEFAULT_SERVER_SOCKET_PATH } from "../config/schema.js";
import { registerAuthorityCommands } from "./authority-commands.js";
import { registerFederationCommands } from "./federation-commands.js";
import { registerLogCommands } from "./log-commands.js";
import {
  agentRows,
  entryRows,
  issuanceRows,
  messageJson,
  parseOutputFormat,
  printJson,
  printPretty,
  UsageError,
  type OutputFormat,
} from "./output.js";

/** Default admin socket, as in the server config schema. */
export const DEFAULT_ADMIN_SOCKET = DEFAULT_SERVER_SOCKET_PATH;

interface Clients {
  entry: UnaryClient<(typeof EntryAdmin)["method"]>;
  agent: UnaryClient<(typeof AgentAdmin)["method"]>;
  bundle: UnaryClient<(typeof BundleAdmin)["method"]>;
  svid: UnaryClient<(typeof SvidAdmin)["method"]>;
  close(): void;
}

function connect(socketPath: string): Clients {
  const target = `unix:${path.resolve(socketPath)}`;
  const creds = credentials.createInsecure();
  const entry = createUnaryClient(EntryAdmin, target, creds);
  const agent = createUnaryClient(AgentAdmin, target, creds);
  const bundle = createUnaryClient(BundleAdmin, target, creds);
  const svid = createUnaryClient(SvidAdmin, target, creds);
  return { entry, agent, bundle, svid, close: () => [entry, agent, bundle, svid].forEach((c) => c.close()) };
}

type Opts = Record<string, unknown> & { socketPath: string; output: string };

/** Runs `fn` with admin clients for the command's socket, closing them afterwards. */
async function withClients<T>(opts: Opts, fn: (c: Clients, out: OutputFormat) => Promise<T>): Promise<T> {
  const out = parseOutputFormat(opts.output);
  const c = connect(opts.socketPath);
  try {
    return await fn(c, out);
  } finally {
    c.close();
  }
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

function intOption(name: string, v: unknown): number {
  if (v === undefined) return 0;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`${name} must be a non-negative integer of seconds, got ${JSON.stringify(v)}`);
  return n;
}

function ttlOption(name: string, v: unknown): number {
  if (v === undefined) return 0;
  if (typeof v === "string" && /^\d+$/.test(v)) return Number(v);
  try {
    return Math.round(parseDuration(String(v)) / 1000);
  } catch {
    throw new UsageError(`${name} must be seconds or a duration like "1h", got ${JSON.stringify(v)}`);
  }
}

function selectorsOption(values: unknown): Selector[] {
  const list = (values as string[] | undefined) ?? [];
  return list.map((s) => {
    try {
      const sel = parseSelector(s);
      return create(SelectorSchema, { type: sel.type, value: sel.value });
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  });
}

/** Adds `--socket-path` and `--output` to a command. */
export function addCommon(cmd: Command, read: boolean): Command {
  cmd.option("-s, --socket-path <path>", "admin API socket", DEFAULT_ADMIN_SOCKET);
  cmd.option("-o, --output <format>", read ? "json or pretty" : "json or pretty (result)", "pretty");
  return cmd;
}

function printEntries(entries: readonly Entry[], out: OutputFormat, extra?: Record<string, unknown>): void {
  if (out === "json") {
    printJson({ entries: entries.map((e) => messageJson(EntrySchema, e)), ...extra });
    return;
  }
  process.stdout.write(`Found ${entries.length} entr${entries.length === 1 ? "y" : "ies"}\n`);
  for (const e of entries) printPretty(entryRows(e));
}

function entryFromOptions(o: Opts): Entry {
  return create(EntrySchema, {
    id: (o.entryId as string | undefined) ?? "",
    spiffeId: (o.spiffeId as string | undefined) ?? "",
    parentId: (o.parentId as string | undefined) ?? "",
    selectors: selectorsOption(o.selector),
    x509SvidTtl: ttlOption("--x509-svid-ttl", o.x509SvidTtl),
    jwtSvidTtl: ttlOption("--jwt-svid-ttl", o.jwtSvidTtl),
    dnsNames: (o.dns as string[] | undefined) ?? [],
    federatesWith: (o.federatesWith as string[] | undefined) ?? [],
    admin: Boolean(o.admin),
    downstream: Boolean(o.downstream),
    hint: (o.hint as string | undefined) ?? "",
    expiresAt: BigInt(intOption("--entry-expiry", o.entryExpiry)),
  });
}

function entryDefinitionOptions(cmd: Command): Command {
  return cmd
    .option("--spiffe-id <id>", "SPIFFE ID of the workload")
    .option("--parent-id <id>", "SPIFFE ID of the parent (an agent or node alias)")
    .option("--node", "register a node alias (parent is the server)")
    .option("--selector <type:value>", "selector (repeatable)", collect)
    .option("--x509-svid-ttl <ttl>", "X509-SVID TTL (seconds or duration)")
    .option("--jwt-svid-ttl <ttl>", "JWT-SVID TTL (seconds or duration)")
    .option("--dns <name>", "DNS SAN (repeatable)", collect)
    .option("--federates-with <td>", "trust domain whose bundle the workload gets (repeatable)", collect)
    .option("--admin", "the SVID may call the admin API")
    .option("--downstream", "the SVID may act as a downstream CA")
    .option("--hint <hint>", "hint for workloads with several SVIDs")
    .option("--entry-expiry <unix>", "unix time after which the entry is ignored")
    .option("--data <file>", "JSON file with {\"entries\": [...]} to create in one batch");
}

function failIfAnyFailed(results: readonly { status?: { code: number; message: string } | undefined }[]): void {
  const failed = results.filter((r) => r.status && r.status.code !== 0);
  if (failed.length) {
    for (const f of failed) process.stderr.write(`error: ${f.status?.message}\n`);
    throw new OperationFailed(`${failed.length} of ${results.length} failed`);
  }
}

/** An operation that ran but failed: exit status 1, message already printed. */
export class OperationFailed extends Error {
  override readonly name = "OperationFailed";
}

/** Registers the admin commands on `program`. */
export function registerAdminCommands(program: Command, serverTrustDomain: () => string | undefined): void {
  const entry = program.command("entry").description("manage registration entries");

  addCommon(entryDefinitionOptions(entry.command("create").description("create registration entries")), false).action(
    async (o: Opts) =>
      withClients(o, async (c, out) => {
        let entries: Entry[];
        if (o.data) {
          const doc = JSON.parse(readFileSync(String(o.data), "utf8")) as { entries?: unknown[] };
          if (!Array.isArray(doc.entries)) throw new UsageError(`${String(o.data)}: expected {"entries": [...]}`);
          entries = doc.entries.map((e) => create(EntrySchema, e as never));
        } else {
          if (!o.spiffeId) throw new UsageError("--spiffe-id is required");
          if (!o.parentId && !o.node) throw new UsageError("--parent-id or --node is required");
          if (!o.selector) throw new UsageError("at least one --selector is required");
          const e = entryFromOptions(o);
          if (o.node) {
            const td = serverTrustDomain() ?? new URL(e.spiffeId).host;
            e.parentId = `spiffe://${td}${SERVER_PATH}`;
          }
          entries = [e];
        }
        const res = await c.entry.batchCreateEntry({ entries });
        const ok = res.results.filter((r) => r.status?.code === 0 && r.entry).map((r) => r.entry as Entry);
        printEntries(ok, out);
        failIfAnyFailed(res.results);
      }),
  );

  addCommon(entryDefinitionOptions(entry.command("update").description("update a registration entry")).requiredOption("--entry-id <id>", "entry to update"), false).action(
    async (o: Opts) =>
      withClients(o, async (c, out) => {
        const e = entryFromOptions(o);
        const mask: string[] = [];
        if (o.spiffeId !== undefined) mask.push("spiffe_id");
        if (o.parentId !== undefined) mask.push("parent_id");
        if (o.selector !== undefined) mask.push("selectors");
        if (o.x509SvidTtl !== undefined) mask.push("x509_svid_ttl");
        if (o.jwtSvidTtl !== undefined) mask.push("jwt_svid_ttl");
        if (o.dns !== undefined) mask.push("dns_names");
        if (o.federatesWith !== undefined) mask.push("federates_with");
        if (o.admin !== undefined) mask.push("admin");
        if (o.downstream !== undefined) mask.push("downstream");
        if (o.hint !== undefined) mask.push("hint");
        if (o.entryExpiry !== undefined) mask.push("expires_at");
        if (mask.length === 0) throw new UsageError("nothing to update: give at least one field option");
        const res = await c.entry.batchUpdateEntry({ entries: [e], mask });
        printEntries(res.results.filter((r) => r.entry && r.status?.code === 0).map((r) => r.entry as Entry), out);
        failIfAnyFailed(res.results);
      }),
  );

  addCommon(entry.command("delete").description("delete a registration entry").requiredOption("--entry-id <id>", "entry to delete"), false).action(
    async (o: Opts) =>
      withClients(o, async (c, out) => {
        const res = await c.entry.batchDeleteEntry({ ids: [String(o.entryId)] });
        if (out === "json") printJson({ results: res.results.map((r) => ({ id: r.id, code: r.status?.code ?? 0, message: r.status?.message ?? "" })) });
        else if (res.results.every((r) => (r.status?.code ?? 0) === 0)) process.stdout.write(`Deleted entry with ID: ${String(o.entryId)}\n`);
        failIfAnyFailed(res.results);
      }),
  );

  const filterOptions = (cmd: Command) =>
    cmd
      .option("--entry-id <id>", "show one entry")
      .option("--spiffe-id <id>", "filter by SPIFFE ID")
      .option("--parent-id <id>", "filter by parent ID")
      .option("--selector <type:value>", "filter by selector (repeatable)", collect)
      .option("--match-selectors-on <mode>", "exact, subset, superset or any", "superset")
      .option("--federates-with <td>", "filter by federated trust domain")
      .option("--hint <hint>", "filter by hint")
      .option("--downstream", "only downstream entries");
  const filterFrom = (o: Opts) => {
    const mode = String(o.matchSelectorsOn);
    if (!["exact", "subset", "superset", "any"].includes(mode)) throw new UsageError(`--match-selectors-on must be exact, subset, superset or any`);
    return {
      bySpiffeId: (o.spiffeId as string | undefined) ?? "",
      byParentId: (o.parentId as string | undefined) ?? "",
      bySelectors: selectorsOption(o.selector),
      selectorMatch: mode,
      byFederatesWith: (o.federatesWith as string | undefined) ?? "",
      byHint: (o.hint as string | undefined) ?? "",
      byDownstream: o.downstream ? "true" : "",
    };
  };

  addCommon(filterOptions(entry.command("show").description("show registration entries")), true).action(async (o: Opts) =>
    withClients(o, async (c, out) => {
      if (o.entryId) {
        printEntries([await c.entry.getEntry({ id: String(o.entryId) })], out);
        return;
      }
      const all: Entry[] = [];
      let pageToken = "";
      do {
        const res = await c.entry.listEntries({ filter: filterFrom(o), pageSize: 500, pageToken });
        all.push(...res.entries);
        pageToken = res.nextPageToken;
      } while (pageToken);
      printEntries(all, out);
    }),
  );

  addCommon(filterOptions(entry.command("count").description("count registration entries")), true).action(async (o: Opts) =>
    withClients(o, async (c, out) => {
      const res = await c.entry.countEntries({ filter: filterFrom(o) });
      if (out === "json") printJson({ count: Number(res.count) });
      else process.stdout.write(`${res.count} registration entries\n`);
    }),
  );

  const agent = program.command("agent").description("manage attested agents");
  addCommon(agent.command("list").description("list attested agents").option("--attestation-type <type>", "filter by node attestor").option("--banned <bool>", "filter by banned state"), true).action(
    async (o: Opts) =>
      withClients(o, async (c, out) => {
        const agents = [];
        let pageToken = "";
        do {
          const res = await c.agent.listAgents({ byAttestationType: (o.attestationType as string | undefined) ?? "", byBanned: (o.banned as string | undefined) ?? "", pageSize: 500, pageToken });
          agents.push(...res.agents);
          pageToken = res.nextPageToken;
        } while (pageToken);
        if (out === "json") printJson(messageJson(ListAgentsResponseSchema, create(ListAgentsResponseSchema, { agents })));
        else {
          process.stdout.write(`Found ${agents.length} attested agent${agents.length === 1 ? "" : "s"}:\n\n`);
          for (const a of agents) printPretty(agentRows(a));
        }
      }),
  );
  for (const verb of ["show", "ban", "evict"] as const) {
    addCommon(agent.command(verb).description(`${verb} an attested agent`).requiredOption("--spiffe-id <id>", "the agent's SPIFFE ID"), verb === "show").action(async (o: Opts) =>
      withClients(o, async (c, out) => {
        const spiffeId = String(o.spiffeId);
        if (verb === "show") {
          const a = await c.agent.getAgent({ spiffeId });
          if (out === "json") printJson(messageJson(AgentSchema, a));
          else printPretty(agentRows(a));
        } else {
          if (verb === "ban") await c.agent.banAgent({ spiffeId });
          else await c.agent.evictAgent({ spiffeId });
          if (out === "json") printJson({ spiffe_id: spiffeId, result: verb === "ban" ? "banned" : "evicted" });
          else process.stdout.write(`Agent ${verb === "ban" ? "banned" : "evicted"} successfully\n`);
        }
      }),
    );
  }
  addCommon(agent.command("count").description("count attested agents"), true).action(async (o: Opts) =>
    withClients(o, async (c, out) => {
      const res = await c.agent.countAgents({});
      if (out === "json") printJson({ count: Number(res.count) });
      else process.stdout.write(`${res.count} attested agents\n`);
    }),
  );

  addCommon(
    program.command("token").description("join tokens").command("generate").description("generate a single-use join token")
      .option("--ttl <ttl>", "token lifetime (seconds or duration)", "600")
      .option("--spiffe-id <id>", "SPIFFE ID the agent will get, under spiffe://<td>/spire/agent/ (default spiffe://<td>/spire/agent/join_token/<token>)"),
    true,
  ).action(async (o: Opts) =>
    withClients(o, async (c, out) => {
      const res = await c.agent.createJoinToken({ ttl: ttlOption("--ttl", o.ttl), agentId: (o.spiffeId as string | undefined) ?? "" });
      if (out === "json") printJson({ value: res.token, expires_at: Number(res.expiresAt), agent_id: res.agentId });
      else process.stdout.write(`Token: ${res.token}\n`);
    }),
  );

  const bundle = program.command("bundle").description("trust bundles");
  addCommon(bundle.command("show").description("show the server's own bundle").option("--format <format>", "pem or spiffe", "pem"), true).action(async (o: Opts) =>
    withClients(o, async (c, out) => {
      const b = await c.bundle.getBundle({});
      if (out === "json") printJson(messageJson(BundleSchema, b));
      else process.stdout.write(o.format === "spiffe" ? `${b.spiffeBundleJson}\n` : bundlePem(b.spiffeBundleJson));
    }),
  );
  addCommon(bundle.command("list").description("list federated bundles").option("--id <td>", "only this trust domain"), true).action(async (o: Opts) =>
    withClients(o, async (c, out) => {
      const res = await c.bundle.listFederatedBundles({});
      const bundles = o.id ? res.bundles.filter((b) => b.trustDomain === o.id) : res.bundles;
      if (out === "json") printJson(messageJson(ListFederatedBundlesResponseSchema, create(ListFederatedBundlesResponseSchema, { bundles })));
      else for (const b of bundles) process.stdout.write(`****************************************\n* ${b.trustDomain}\n****************************************\n${bundlePem(b.spiffeBundleJson)}\n`);
    }),
  );
  addCommon(bundle.command("set").description("set a federated bundle (SPIFFE bundle JSON)").requiredOption("--id <td>", "trust domain name").requiredOption("--path <file>", "SPIFFE bundle JSON file"), false).action(
    async (o: Opts) =>
      withClients(o, async (c, out) => {
        const json = readFileSync(String(o.path), "utf8");
        const b = await c.bundle.setFederatedBundle({ bundle: { trustDomain: String(o.id), spiffeBundleJson: json } });
        if (out === "json") printJson(messageJson(BundleSchema, b));
        else process.stdout.write("bundle set\n");
      }),
  );
  addCommon(bundle.command("delete").description("delete a federated bundle").requiredOption("--id <td>", "trust domain name"), false).action(async (o: Opts) =>
    withClients(o, async (c, out) => {
      await c.bundle.deleteFederatedBundle({ trustDomain: String(o.id) });
      if (out === "json") printJson({ trust_domain: String(o.id), result: "deleted" });
      else process.stdout.write("bundle deleted\n");
    }),
  );

  addCommon(
    program.command("x509").description("X509-SVIDs").command("mint").description("mint an X509-SVID (key generated locally)")
      .requiredOption("--spiffe-id <id>", "SPIFFE ID").option("--ttl <ttl>", "lifetime").option("--dns <name>", "DNS SAN (repeatable)", collect)
      .option("--write <dir>", "write svid.pem, svid.key and bundle.pem to this directory (created 0700; an existing one must be yours, not writable by group or others)"),
    true,
  ).action(async (o: Opts) =>
    withClients(o, async (c, out) => {
      // Checked before minting: a directory another user can write to could hand root's writes a file or link of theirs.
      if (o.write) ensureSecureDirectory(String(o.write), 0o700, "x509 mint --write");
      const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
      const csr = buildCsr(privateKey);
      const res = await c.svid.mintX509SVID({ csr, spiffeId: String(o.spiffeId), ttl: ttlOption("--ttl", o.ttl), dnsNames: (o.dns as string[] | undefined) ?? [] });
      const svidPem = (res.svid?.certChain ?? []).map((d) => toPem("CERTIFICATE", d)).join("");
      const keyPem = privateKey.export({ format: "pem", type: "pkcs8" }).toString();
      const bundlePemText = res.bundle.map((d) => toPem("CERTIFICATE", d)).join("");
      if (o.write) {
        const dir = String(o.write);
        const opts = { subsystem: "x509 mint --write" };
        writeFileAtomic(path.join(dir, "svid.pem"), svidPem, 0o644, opts);
        writeFileAtomic(path.join(dir, "svid.key"), keyPem, 0o600, opts);
        writeFileAtomic(path.join(dir, "bundle.pem"), bundlePemText, 0o644, opts);
      }
      if (out === "json") printJson({ spiffe_id: res.svid?.spiffeId, expires_at: Number(res.svid?.expiresAt ?? 0n), svid_pem: svidPem, bundle_pem: bundlePemText, ...(o.write ? { written_to: String(o.write) } : { key_pem: keyPem }) });
      else if (o.write) process.stdout.write(`X509-SVID written to ${String(o.write)}\n`);
      else process.stdout.write(`X509-SVID:\n${svidPem}\nPrivate key:\n${keyPem}\nRoot CAs:\n${bundlePemText}`);
    }),
  );

  addCommon(
    program.command("jwt").description("JWT-SVIDs").command("mint").description("mint a JWT-SVID")
      .requiredOption("--spiffe-id <id>", "SPIFFE ID").requiredOption("--audience <aud>", "audience (repeatable)", collect).option("--ttl <ttl>", "lifetime"),
    true,
  ).action(async (o: Opts) =>
    withClients(o, async (c, out) => {
      const res = await c.svid.mintJWTSVID({ spiffeId: String(o.spiffeId), audience: o.audience as string[], ttl: ttlOption("--ttl", o.ttl) });
      if (out === "json") printJson({ token: res.token, expires_at: Number(res.expiresAt) });
      else process.stdout.write(`${res.token}\n`);
    }),
  );

  addIssuanceCommands(program);
  registerFederationCommands(program);
  registerAuthorityCommands(program);
  registerLogCommands(program);
}

/** `issuance list|show`: the issuance log, read page by page (newest first). */
function addIssuanceCommands(program: Command): void {
  const issuance = program.command("issuance").description("the issuance log: every credential the server signed");
  addCommon(
    issuance.command("list").description("list issued credentials, newest first")
      .option("--spiffe-id <id>", "only credentials for this SPIFFE ID")
      .option("--entry-id <id>", "only credentials issued for this entry")
      .option("--agent-id <id>", "only credentials this agent asked for")
      .option("--live", "only credentials valid now")
      .option("--limit <n>", "at most this many (newest first)"),
    true,
  ).action(async (o: Opts) =>
    withClients(o, async (c, out) => {
      const limit = o.limit === undefined ? Number.POSITIVE_INFINITY : Number(o.limit);
      if (!Number.isInteger(limit) && limit !== Number.POSITIVE_INFINITY) throw new UsageError(`--limit must be a whole number, got ${JSON.stringify(o.limit)}`);
      if (limit < 1) throw new UsageError("--limit must be at least 1");
      const found: Issuance[] = [];
      let pageToken = "";
      do {
        const res = await c.svid.listIssuances({
          bySpiffeId: (o.spiffeId as string | undefined) ?? "",
          byEntryId: (o.entryId as string | undefined) ?? "",
          byAgentId: (o.agentId as string | undefined) ?? "",
          live: Boolean(o.live),
          pageSize: Math.min(500, limit - found.length),
          pageToken,
        });
        found.push(...res.issuances);
        pageToken = res.nextPageToken;
        if (out !== "json" && pageToken && found.length % 5000 < 500) process.stderr.write(`read ${found.length} records…\n`);
      } while (pageToken && found.length < limit);
      if (out === "json") printJson(messageJson(ListIssuancesResponseSchema, create(ListIssuancesResponseSchema, { issuances: found })));
      else {
        process.stdout.write(`Found ${found.length} issued credential${found.length === 1 ? "" : "s"}:\n\n`);
        for (const i of found) printPretty(issuanceRows(i));
      }
    }),
  );
  addCommon(
    issuance.command("show").description("show the record of one credential, by serial or from its certificate")
      .option("--serial <hex>", "its serial number (any hex spelling)")
      .option("--cert <file>", "a PEM X509-SVID (leaf first): find its record and check that the certificate matches it and chains to the bundle"),
    true,
  ).action(async (o: Opts) =>
    withClients(o, async (c, out) => {
      if ((o.serial === undefined) === (o.cert === undefined)) throw new UsageError("give exactly one of --serial or --cert");
      let chain: Uint8Array[] = [];
      let serial = String(o.serial ?? "");
      if (o.cert !== undefined) {
        chain = decodePemCertificates(readFileSync(String(o.cert), "utf8"));
        if (chain.length === 0) throw new OperationFailed(`issuance: ${String(o.cert)} holds no PEM certificate`);
        serial = new X509Certificate(Buffer.from(chain[0] as Uint8Array)).serialNumber;
      }
      const res = await c.svid.listIssuances({ bySerial: serial, pageSize: 10 });
      const record = res.issuances[0];
      if (!record) throw new OperationFailed(`issuance: no credential with serial ${serial} is in the log`);
      if (chain.length === 0) {
        if (out === "json") printJson(messageJson(IssuanceSchema, record));
        else printPretty(issuanceRows(record));
        return;
      }
      const checks = checkCertificateAgainstRecord(chain, record, (await c.bundle.getBundle({})).spiffeBundleJson);
      const matches = checks.every((k) => k.ok);
      if (out === "json") printJson({ issuance: messageJson(IssuanceSchema, record), matches, checks });
      else {
        printPretty([...issuanceRows(record), ...checks.map((k): [string, string] => [`Check ${k.check}`, `${k.ok ? "ok" : "FAILED"}: ${k.detail}`])]);
        process.stdout.write(matches ? "The certificate matches its issuance record.\n" : "");
      }
      if (!matches) throw new OperationFailed(`issuance: the certificate does not match its record (${checks.filter((k) => !k.ok).map((k) => k.check).join(", ")})`);
    }),
  );
}

/** One comparison of a certificate with its issuance record. */
interface RecordCheck {
  readonly check: string;
  readonly ok: boolean;
  readonly detail: string;
}

/** Compares a presented X509-SVID with the record the server wrote when it signed it. */
function checkCertificateAgainstRecord(chain: readonly Uint8Array[], record: Issuance, spiffeBundleJson: string): RecordCheck[] {
  const leaf = new X509Certificate(Buffer.from(chain[0] as Uint8Array));
  const uri = /URI:(spiffe:\/\/[^,\s]+)/.exec(leaf.subjectAltName ?? "")?.[1] ?? "";
  const notAfter = BigInt(Math.floor(Date.parse(leaf.validTo) / 1000));
  const checks: RecordCheck[] = [
    { check: "spiffe_id", ok: uri === record.spiffeId, detail: `certificate ${uri || "(none)"}, record ${record.spiffeId}` },
    { check: "not_after", ok: notAfter === record.notAfter, detail: `certificate ${leaf.validTo}, record ${new Date(Number(record.notAfter) * 1000).toUTCString()}` },
  ];
  // Signed by this trust domain's CA: verified as of the certificate's own notBefore, so an expired SVID still proves its origin.
  try {
    const id = parseSpiffeId(record.spiffeId);
    const bundle = toX509Bundle(parseSpiffeBundle(spiffeBundleJson, id.trustDomain).bundle);
    verifyX509Svid(chain, new StaticX509BundleSource([bundle]), { now: new Date(Date.parse(leaf.validFrom) + 1000) });
    checks.push({ check: "signature", ok: true, detail: `chains to the current bundle of ${id.trustDomain.name}` });
  } catch (e) {
    checks.push({ check: "signature", ok: false, detail: `does not chain to the current bundle: ${(e as Error).message}` });
  }
  return checks;
}

function bundlePem(spiffeBundleJson: string): string {
  try {
    const doc = JSON.parse(spiffeBundleJson) as { keys?: { use?: string; x5c?: string[] }[] };
    return (doc.keys ?? [])
      .filter((k) => k.use === "x509-svid" && k.x5c?.[0])
      .map((k) => toPem("CERTIFICATE", Buffer.from(k.x5c?.[0] as string, "base64")))
      .join("");
  } catch {
    return spiffeBundleJson;
  }
}
