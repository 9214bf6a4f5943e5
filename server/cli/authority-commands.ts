/**
 * `sigil-server authority list|prepare|activate|taint|revoke` and
 * `sigil-server inventory --key-id K`: the CA authorities of the admin API's
 * AuthorityAdmin (docs/incident-response.md), with `--output json` on every command.
 */
import path from "node:path";
import { credentials } from "@grpc/grpc-js";
import type { Command } from "commander";
import {
  ActivateAuthorityResponseSchema,
  AuthorityAdmin,
  AuthoritySchema,
  InventoryResponseSchema,
  ListAuthoritiesResponseSchema,
  RevokeAuthorityResponseSchema,
  TaintAuthorityResponseSchema,
  type Authority,
} from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { createUnaryClient, type UnaryClient } from "../../common/rpc/unary-client.js";
import { addCommon } from "./admin-commands.js";
import { messageJson, parseOutputFormat, printJson, printPretty, UsageError, type OutputFormat } from "./output.js";

type Opts = Record<string, unknown> & { socketPath: string; output: string };
type Client = UnaryClient<(typeof AuthorityAdmin)["method"]>;

async function withClient<T>(opts: Opts, fn: (c: Client, out: OutputFormat) => Promise<T>): Promise<T> {
  const out = parseOutputFormat(opts.output);
  const c = createUnaryClient(AuthorityAdmin, `unix:${path.resolve(opts.socketPath)}`, credentials.createInsecure());
  try {
    return await fn(c, out);
  } finally {
    c.close();
  }
}

const iso = (ms: bigint): string => new Date(Number(ms)).toISOString();

/** Pretty rows of an authority. */
export function authorityRows(a: Authority): [string, string][] {
  return [
    ["Key ID", a.keyId],
    ["Kind", a.kind + (a.upstream ? " (upstream-signed intermediate)" : "")],
    ["Status", a.status],
    ["Server", a.serverId || "(unnamed)"],
    ["Slot", a.slotId],
    ["Not before", iso(a.notBefore)],
    ["Not after", iso(a.notAfter)],
    ["SPKI SHA-256", a.spkiSha256],
    ["Live SVIDs", String(a.liveSvids)],
  ];
}

function kindOption(o: Opts, required: boolean): string {
  const kind = (o.kind as string | undefined) ?? "";
  if (required && kind === "") throw new UsageError("--kind is required (x509 or jwt)");
  if (kind !== "" && kind !== "x509" && kind !== "jwt") throw new UsageError(`--kind must be x509 or jwt, got ${JSON.stringify(kind)}`);
  return kind;
}

function keyIdOption(o: Opts): string {
  const keyId = o.keyId as string | undefined;
  if (!keyId) throw new UsageError("--key-id is required (see \"sigil-server authority list\")");
  return keyId;
}

/** Registers `authority …` and `inventory` on `program`. */
export function registerAuthorityCommands(program: Command): void {
  const authority = program.command("authority").description("CA authorities (X.509 CAs and JWT keys): list, prepare, activate, taint, revoke");

  addCommon(authority.command("list").description("list every server's authorities with their state and live SVIDs"), true).action(async (o: Opts) =>
    withClient(o, async (c, out) => {
      const r = await c.listAuthorities({});
      if (out === "json") return printJson(messageJson(ListAuthoritiesResponseSchema, r));
      process.stdout.write(`Found ${r.authorities.length} authorit${r.authorities.length === 1 ? "y" : "ies"}\n\n`);
      for (const a of r.authorities) printPretty(authorityRows(a));
    }),
  );

  addCommon(authority.command("prepare").description("prepare the next authority now (published at once, not signing)").option("--kind <kind>", "x509 or jwt"), false).action(async (o: Opts) =>
    withClient(o, async (c, out) => {
      const a = await c.prepareAuthority({ kind: kindOption(o, true) });
      if (out === "json") return printJson(messageJson(AuthoritySchema, a));
      process.stdout.write(`Prepared ${a.kind} authority ${a.keyId}\n\n`);
      printPretty(authorityRows(a));
    }),
  );

  addCommon(authority.command("activate").description("activate the prepared authority now").option("--kind <kind>", "x509 or jwt"), false).action(async (o: Opts) =>
    withClient(o, async (c, out) => {
      const r = await c.activateAuthority({ kind: kindOption(o, true) });
      if (out === "json") return printJson(messageJson(ActivateAuthorityResponseSchema, r));
      process.stdout.write(`Activated ${r.activated?.kind ?? ""} authority ${r.activated?.keyId ?? ""}${r.previous ? ` (${r.previous.keyId} is now old)` : ""}\n`);
    }),
  );

  addCommon(
    authority.command("taint").description("stop signing with a key and have agents replace what it signed; it stays in the bundle until revoked").option("--key-id <id>", "the authority's key ID").option("--kind <kind>", "x509 or jwt (default: found by key ID)"),
    false,
  ).action(async (o: Opts) =>
    withClient(o, async (c, out) => {
      const r = await c.taintAuthority({ kind: kindOption(o, false), keyId: keyIdOption(o) });
      if (out === "json") return printJson(messageJson(TaintAuthorityResponseSchema, r));
      const t = r.tainted;
      process.stdout.write(`Tainted ${t?.kind ?? ""} authority ${t?.keyId ?? ""} (server ${t?.serverId || "(unnamed)"}); ${t?.liveSvids ?? 0n} live SVIDs still chain to it\n`);
      if (r.activated) process.stdout.write(`${r.preparedFirst ? "Prepared and activated" : "Activated"} ${r.activated.keyId} in its place\n`);
      else if (t?.serverId) process.stdout.write(`Its server stops signing with it at its next rotation step (within 10 s)\n`);
    }),
  );

  addCommon(
    authority.command("revoke").description("take a tainted key out of the bundle everywhere (refused while live SVIDs chain to it, unless --force); an upstream-signed intermediate is not in the bundle (its upstream root is), so what it signed still verifies").option("--key-id <id>", "the authority's key ID").option("--kind <kind>", "x509 or jwt (default: found by key ID)").option("--force", "revoke even while live SVIDs chain to it"),
    false,
  ).action(async (o: Opts) =>
    withClient(o, async (c, out) => {
      const r = await c.revokeAuthority({ kind: kindOption(o, false), keyId: keyIdOption(o), force: o.force === true });
      if (r.warning) process.stderr.write(`WARNING: ${r.warning}\n`);
      if (out === "json") return printJson(messageJson(RevokeAuthorityResponseSchema, r));
      const a = r.revoked;
      // An upstream-signed intermediate never was in the bundle (its upstream root is): the warning above says what that leaves.
      const effect = a?.upstream ? "this trust domain no longer serves it; the trust bundle is unchanged (it holds the upstream root)" : "it is no longer in the trust bundle";
      process.stdout.write(`Revoked ${a?.kind ?? ""} authority ${a?.keyId ?? ""}: ${effect}\n`);
    }),
  );

  addCommon(
    program.command("inventory").description("live SVIDs signed by a key: how many, for which SPIFFE IDs, held by which agents").option("--key-id <id>", "the authority's key ID").option("--limit <n>", "most SVIDs listed (0: default 100, -1: counts only)", "0"),
    true,
  ).action(async (o: Opts) =>
    withClient(o, async (c, out) => {
      const limit = Number(o.limit);
      if (!Number.isInteger(limit)) throw new UsageError(`--limit must be an integer, got ${JSON.stringify(o.limit)}`);
      const r = await c.inventory({ keyId: keyIdOption(o), limit });
      if (out === "json") return printJson(messageJson(InventoryResponseSchema, r));
      process.stdout.write(`${r.live} live SVIDs chain to ${r.keyId}, held by ${r.agents.length} agent${r.agents.length === 1 ? "" : "s"}\n`);
      if (r.agents.length > 0) printPretty(r.agents.map((a) => [a.agentId || "(admin mints)", String(a.count)] as [string, string]));
      if (r.spiffeIds.length > 0) printPretty(r.spiffeIds.map((s) => [s.spiffeId, String(s.count)] as [string, string]));
      const pickup = (s: (typeof r.svids)[number]): string =>
        s.pickup === "picked-up" ? `  picked up ${iso(s.deliveredAt)}` : s.pickup === "never-picked-up" ? "  NEVER PICKED UP" : "";
      for (const s of r.svids) process.stdout.write(`${s.serial}  ${s.kind}  ${s.spiffeId}  ${s.agentId || "-"}  until ${iso(s.notAfter)}${pickup(s)}\n`);
    }),
  );
}
