/**
 * `sigil-server federation create|list|show|update|delete|refresh`: the
 * federation relationships of the admin API (SPIRE's `federation` commands,
 * with `--output json` on every command).
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import type { Command } from "commander";
import {
  FederationAdmin,
  FederationRelationshipSchema,
  ListFederationRelationshipsResponseSchema,
  type FederationRelationship,
} from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { createUnaryClient, type UnaryClient } from "../../common/rpc/unary-client.js";
import { addCommon } from "./admin-commands.js";
import { messageJson, parseOutputFormat, printJson, printPretty, UsageError, type OutputFormat } from "./output.js";

type Opts = Record<string, unknown> & { socketPath: string; output: string };
type Client = UnaryClient<(typeof FederationAdmin)["method"]>;

async function withClient<T>(opts: Opts, fn: (c: Client, out: OutputFormat) => Promise<T>): Promise<T> {
  const out = parseOutputFormat(opts.output);
  const c = createUnaryClient(FederationAdmin, `unix:${path.resolve(opts.socketPath)}`, credentials.createInsecure());
  try {
    return await fn(c, out);
  } finally {
    c.close();
  }
}

const fmtMs = (ms: bigint): string => (ms === 0n ? "never" : new Date(Number(ms)).toISOString());

/** Pretty rows of a relationship and its fetch status. */
export function relationshipRows(r: FederationRelationship): [string, string][] {
  const rows: [string, string][] = [
    ["Trust domain", r.trustDomain],
    ["Bundle endpoint URL", r.bundleEndpointUrl],
    ["Bundle endpoint profile", r.bundleEndpointProfile],
  ];
  if (r.endpointSpiffeId) rows.push(["Endpoint SPIFFE ID", r.endpointSpiffeId]);
  rows.push(["Source", r.source]);
  const s = r.status;
  rows.push(["Bundle sequence", s?.sequence || "none held"]);
  rows.push(["Last attempt", fmtMs(s?.lastAttempt ?? 0n)], ["Last success", fmtMs(s?.lastSuccess ?? 0n)]);
  if (s?.lastResult) rows.push(["Last result", s.lastResult]);
  if (s?.lastError) rows.push(["Last error", s.lastError]);
  if (s?.nextRefresh) rows.push(["Next refresh", fmtMs(s.nextRefresh)]);
  return rows;
}

function print(relationships: readonly FederationRelationship[], out: OutputFormat, single: boolean): void {
  if (out === "json") {
    const [only] = relationships;
    if (single && only) printJson(messageJson(FederationRelationshipSchema, only));
    else printJson(messageJson(ListFederationRelationshipsResponseSchema, create(ListFederationRelationshipsResponseSchema, { relationships: [...relationships] })));
    return;
  }
  if (!single) process.stdout.write(`Found ${relationships.length} federation relationship${relationships.length === 1 ? "" : "s"}\n\n`);
  for (const r of relationships) printPretty(relationshipRows(r));
}

/** The trust domain from the positional argument or `--trust-domain`. */
function trustDomainOf(arg: string | undefined, o: Opts): string {
  const td = arg ?? (o.trustDomain as string | undefined);
  if (!td) throw new UsageError("give the trust domain (argument or --trust-domain)");
  if (arg !== undefined && o.trustDomain !== undefined && arg !== o.trustDomain) throw new UsageError("the argument and --trust-domain name different trust domains");
  return td;
}

function definitionOptions(cmd: Command): Command {
  return cmd
    .option("--trust-domain <td>", "the foreign trust domain (never taken from the URL)")
    .option("--bundle-endpoint-url <url>", "https URL of its bundle endpoint")
    .option("--bundle-endpoint-profile <profile>", "https_web or https_spiffe")
    .option("--endpoint-spiffe-id <id>", "https_spiffe: the SPIFFE ID the endpoint serves with")
    .option("--trust-domain-bundle-path <file>", "initial bundle of the trust domain (needed for a self-serving https_spiffe endpoint)")
    .option("--trust-domain-bundle-format <format>", "spiffe (default) or pem");
}

function initialBundle(o: Opts): { trustDomainBundle: string; trustDomainBundleFormat: string } {
  if (o.trustDomainBundlePath === undefined) {
    if (o.trustDomainBundleFormat !== undefined) throw new UsageError("--trust-domain-bundle-format needs --trust-domain-bundle-path");
    return { trustDomainBundle: "", trustDomainBundleFormat: "" };
  }
  return { trustDomainBundle: readFileSync(String(o.trustDomainBundlePath), "utf8"), trustDomainBundleFormat: (o.trustDomainBundleFormat as string | undefined) ?? "spiffe" };
}

/** Registers `federation …` on `program`. */
export function registerFederationCommands(program: Command): void {
  const federation = program.command("federation").description("federation relationships: foreign trust domains whose bundles the server fetches");

  addCommon(definitionOptions(federation.command("create").description("create a federation relationship")), false).action(async (o: Opts) =>
    withClient(o, async (c, out) => {
      if (!o.trustDomain) throw new UsageError("--trust-domain is required");
      if (!o.bundleEndpointUrl) throw new UsageError("--bundle-endpoint-url is required");
      if (!o.bundleEndpointProfile) throw new UsageError("--bundle-endpoint-profile is required (https_web or https_spiffe)");
      const r = await c.createFederationRelationship({
        relationship: {
          trustDomain: String(o.trustDomain),
          bundleEndpointUrl: String(o.bundleEndpointUrl),
          bundleEndpointProfile: String(o.bundleEndpointProfile),
          endpointSpiffeId: (o.endpointSpiffeId as string | undefined) ?? "",
          ...initialBundle(o),
        },
      });
      print([r], out, true);
    }),
  );

  addCommon(federation.command("list").description("list federation relationships with their fetch status"), true).action(async (o: Opts) =>
    withClient(o, async (c, out) => print((await c.listFederationRelationships({})).relationships, out, false)),
  );

  addCommon(federation.command("show").description("show one federation relationship and its fetch status").argument("[trust-domain]").option("--trust-domain <td>", "the trust domain"), true).action(
    async (arg: string | undefined, o: Opts) => withClient(o, async (c, out) => print([await c.getFederationRelationship({ trustDomain: trustDomainOf(arg, o) })], out, true)),
  );

  addCommon(definitionOptions(federation.command("update").description("change a federation relationship (options not given keep their value)")), false).action(async (o: Opts) =>
    withClient(o, async (c, out) => {
      if (!o.trustDomain) throw new UsageError("--trust-domain is required");
      const current = await c.getFederationRelationship({ trustDomain: String(o.trustDomain) });
      const profile = (o.bundleEndpointProfile as string | undefined) ?? current.bundleEndpointProfile;
      const r = await c.updateFederationRelationship({
        relationship: {
          trustDomain: current.trustDomain,
          bundleEndpointUrl: (o.bundleEndpointUrl as string | undefined) ?? current.bundleEndpointUrl,
          bundleEndpointProfile: profile,
          // Switching to https_web drops the endpoint ID unless one is given (which the server then refuses).
          endpointSpiffeId: (o.endpointSpiffeId as string | undefined) ?? (profile === "https_web" ? "" : current.endpointSpiffeId),
          ...initialBundle(o),
        },
      });
      print([r], out, true);
    }),
  );

  addCommon(
    federation.command("delete").description("end a federation relationship and delete the trust domain's bundle").argument("[trust-domain]").option("--trust-domain <td>", "the trust domain")
      .option("--mode <mode>", "restrict (refuse while entries federate with it) or dissociate (remove it from them)", "restrict"),
    false,
  ).action(async (arg: string | undefined, o: Opts) =>
    withClient(o, async (c, out) => {
      const trustDomain = trustDomainOf(arg, o);
      await c.deleteFederationRelationship({ trustDomain, mode: String(o.mode) });
      if (out === "json") printJson({ trust_domain: trustDomain, result: "deleted" });
      else process.stdout.write(`Federation relationship with ${trustDomain} deleted\n`);
    }),
  );

  addCommon(federation.command("refresh").description("fetch the trust domain's bundle now").argument("[trust-domain]").option("--trust-domain <td>", "the trust domain"), true).action(
    async (arg: string | undefined, o: Opts) =>
      withClient(o, async (c, out) => {
        const r = await c.refreshFederationRelationship({ trustDomain: trustDomainOf(arg, o) });
        if (out === "json") printJson(messageJson(FederationRelationshipSchema, r));
        else process.stdout.write(`Bundle of ${r.trustDomain} refreshed: ${r.status?.lastResult ?? ""}, sequence ${r.status?.sequence || "none"}\n`);
      }),
  );
}
