/**
 * `sigil-agent`: run the agent, and talk to a Workload API as a workload
 * would (`api fetch x509|jwt`, `api validate jwt`, `api watch`; `api fetch jwt
 * --output token` and `--write <file> [--refresh]` for CI jobs), plus
 * `validate` (a config file) and `healthcheck`. Exit status: 0 success, 1 the operation failed, 2 usage.
 */
import type { X509Bundle } from "../../spiffe/bundle/x509-bundle.js";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { Command, CommanderError } from "commander";
import { writeFileAtomic } from "../../common/atomic-file.js";
import { ensureSecureDirectory } from "../../common/secure-dir.js";
import { isSigilError } from "../../spiffe/errors.js";
import { encodePemCertificates } from "../../spiffe/pem.js";
import { createWorkloadApiClient, type WorkloadApiClient } from "../../spiffe/workloadapi/client.js";
import type { WorkloadJwtSvid } from "../../spiffe/workloadapi/jwt-context.js";
import type { X509Context } from "../../spiffe/workloadapi/x509-context.js";
import { keepTokenFileFresh, writeTokenFile } from "./jwt-token-file.js";
import { DEFAULT_AGENT_SOCKET_PATH as DEFAULT_WORKLOAD_API_SOCKET_PATH } from "../config/schema.js";

type Output = "json" | "pretty";

class UsageError extends Error {
  override readonly name = "UsageError";
}

function output(v: string): Output {
  if (v !== "json" && v !== "pretty") throw new UsageError(`--output must be "json" or "pretty", got ${JSON.stringify(v)}`);
  return v;
}

/** `--output` of `api fetch jwt`, which also takes `token`. */
function jwtOutput(v: string): Output | "token" {
  if (v !== "json" && v !== "pretty" && v !== "token") throw new UsageError(`--output must be "json", "pretty" or "token", got ${JSON.stringify(v)}`);
  return v;
}

function client(socketPath: string | undefined): WorkloadApiClient {
  // Explicit flag first, then SPIFFE_ENDPOINT_SOCKET, then the default socket.
  const address = socketPath
    ? `unix://${path.resolve(socketPath)}`
    : process.env.SPIFFE_ENDPOINT_SOCKET ?? `unix://${DEFAULT_WORKLOAD_API_SOCKET_PATH}`;
  return createWorkloadApiClient({ address });
}

function x509Json(ctx: X509Context): unknown {
  return {
    svids: ctx.svids.map((s) => ({
      spiffe_id: s.id.toString(),
      hint: s.hint,
      expires_at: new Date(s.leaf.validTo).toISOString(),
      chain_pem: encodePemCertificates(s.certificateDers),
    })),
    bundles: Object.fromEntries([...ctx.bundles].map(([td, b]) => [td, encodePemCertificates(b.authorityDers)])),
  };
}

/**
 * Writes svid.N.pem / svid.N.key / bundle.N.pem / federated_bundle.N.M.pem like `spire-agent api fetch x509 -write`,
 * each atomically, into a directory created 0700 or one of the caller's that
 * nobody else can write to: another user's directory could hand the private
 * key to a file of theirs, or the writes to a link of theirs.
 */
function writeX509(dir: string, ctx: X509Context): string[] {
  ensureSecureDirectory(dir, 0o700, "api fetch x509 --write");
  const written: string[] = [];
  ctx.svids.forEach((s, i) => {
    const files: [string, string, number][] = [
      [`svid.${i}.pem`, encodePemCertificates(s.certificateDers), 0o644],
      [`svid.${i}.key`, s.privateKey.export({ format: "pem", type: "pkcs8" }).toString(), 0o600],
      [`bundle.${i}.pem`, encodePemCertificates(ctx.bundles.get(s.id.trustDomain.name)?.authorityDers ?? []), 0o644],
      // Every other trust domain's bundle, in name order, as `spire-agent` writes them.
      ...federatedBundles(ctx, s.id.trustDomain.name).map(([, b], j): [string, string, number] => [`federated_bundle.${i}.${j}.pem`, encodePemCertificates(b.authorityDers), 0o644]),
    ];
    for (const [name, body, mode] of files) {
      writeFileAtomic(path.join(dir, name), body, mode, { subsystem: "api fetch x509 --write" });
      written.push(path.join(dir, name));
    }
  });
  return written;
}

/** The bundles of `ctx` other than `own`'s, sorted by trust-domain name. */
function federatedBundles(ctx: X509Context, own: string): [string, X509Bundle][] {
  return [...ctx.bundles].filter(([td]) => td !== own).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Builds the command tree (exported for tests). */
export function buildProgram(): Command {
  const program = new Command("sigil-agent").description("Sigil agent: node attestation, SVID cache and the SPIFFE Workload API").exitOverride();

  program
    .command("run")
    .description("run the agent")
    .requiredOption("-c, --config <path>", "agent config file (YAML or JSON)")
    .option("--join-token <token>", "join token for the first attestation (overrides the config)")
    .option("--expand-env", "expand ${VAR} references in the config")
    .action(async (o: { config: string; joinToken?: string; expandEnv?: boolean }) => {
      const { runAgent } = await import("../main.js");
      await runAgent(o.config, { expandEnv: Boolean(o.expandEnv), ...(o.joinToken ? { joinToken: o.joinToken } : {}) });
    });

  program
    .command("validate")
    .description("validate a config file and print every problem")
    .requiredOption("-c, --config <path>", "agent config file (YAML or JSON)")
    .option("--expand-env", "expand ${VAR} references in the config")
    .action(async (o: { config: string; expandEnv?: boolean }) => {
      const { loadAgentConfig } = await import("../config/load.js");
      loadAgentConfig(o.config, { expandEnv: Boolean(o.expandEnv) });
      process.stdout.write("configuration is valid\n");
    });

  program
    .command("healthcheck")
    .description("exit 0 when the agent's Workload API socket answers and is serving; else print why (e.g. the agent was evicted) and exit 1")
    .option("-s, --socket-path <path>", "Workload API socket", DEFAULT_WORKLOAD_API_SOCKET_PATH)
    .action(async (o: { socketPath: string }) => {
      const { checkHealth } = await import("../../common/health/check.js");
      const r = await checkHealth(`unix:${path.resolve(o.socketPath)}`);
      if (!r.healthy) throw new Error(`agent is unhealthy: ${r.detail}`);
      process.stdout.write("Agent is healthy.\n");
    });

  const api = program.command("api").description("call the Workload API as a workload");
  const fetch = api.command("fetch").description("fetch SVIDs");
  const common = (c: Command) => c.option("-s, --socket-path <path>", "Workload API socket (default: SPIFFE_ENDPOINT_SOCKET, then the agent default)").option("-o, --output <format>", "json or pretty", "pretty");

  common(fetch.command("x509").description("fetch X509-SVIDs and bundles").option("-w, --write <dir>", "write PEM files to this directory (created 0700; an existing one must be yours, not writable by group or others)")).action(
    async (o: { socketPath?: string; output: string; write?: string }) => {
      const out = output(o.output);
      const c = client(o.socketPath);
      try {
        const ctx = await c.fetchX509Context();
        const written = o.write ? writeX509(o.write, ctx) : [];
        if (out === "json") process.stdout.write(`${JSON.stringify({ ...(x509Json(ctx) as object), ...(o.write ? { written } : {}) }, null, 2)}\n`);
        else {
          process.stdout.write(`Received ${ctx.svids.length} svid${ctx.svids.length === 1 ? "" : "s"}\n\n`);
          for (const s of ctx.svids) {
            process.stdout.write(`SPIFFE ID:\t\t${s.id}\nSVID Valid After:\t${new Date(s.leaf.validFrom).toISOString()}\nSVID Valid Until:\t${new Date(s.leaf.validTo).toISOString()}\n`);
            if (s.hint) process.stdout.write(`Hint:\t\t\t${s.hint}\n`);
            process.stdout.write("\n");
          }
          if (o.write) process.stdout.write(`Wrote ${written.length} files to ${o.write}\n`);
        }
      } finally {
        c.close();
      }
    },
  );

  fetch
    .command("jwt")
    .description(
      "fetch JWT-SVIDs. With several identities, --output token and --write use the default one (the first the agent returns) unless --spiffe-id chooses; " +
        "--write puts the token in a file (atomically, mode 0600, in a directory only you can write to) and prints nothing on stdout; " +
        "--refresh keeps replacing it before it expires until SIGTERM/SIGINT, logging each write on stderr",
    )
    .requiredOption("-a, --audience <aud...>", "audience(s)")
    .option("--spiffe-id <id>", "only this identity")
    .option("-s, --socket-path <path>", "Workload API socket (default: SPIFFE_ENDPOINT_SOCKET, then the agent default)")
    .option("-o, --output <format>", "json, pretty, or token (just the token, one line)", "pretty")
    .option("-w, --write <file>", "write the token to this file (atomically, mode 0600) instead of printing it")
    .option("--refresh", "with --write: keep running and rewrite the file before the token expires, until SIGTERM/SIGINT")
    .action(async (o: { socketPath?: string; output: string; audience: string[]; spiffeId?: string; write?: string; refresh?: boolean }) => {
      const out = jwtOutput(o.output);
      if (o.refresh && !o.write) throw new UsageError("--refresh needs --write <file>");
      const c = client(o.socketPath);
      const params = { audience: o.audience, ...(o.spiffeId ? { spiffeId: o.spiffeId } : {}) };
      try {
        if (o.write) {
          const file = path.resolve(o.write);
          const fetchOne = async () => (await c.fetchJwtSvids(params))[0] as WorkloadJwtSvid;
          const report = (line: string): void => void process.stderr.write(`${line}\n`);
          if (!o.refresh) {
            const svid = await fetchOne();
            writeTokenFile(file, svid.token);
            report(`wrote ${file}: JWT-SVID of ${svid.spiffeId.toString()}, expires ${svid.expiresAt.toISOString()}`);
            return;
          }
          const stop = new AbortController();
          const onSignal = (): void => stop.abort();
          process.once("SIGINT", onSignal);
          process.once("SIGTERM", onSignal);
          try {
            await keepTokenFileFresh(file, { fetch: fetchOne, report, signal: stop.signal });
          } finally {
            process.off("SIGINT", onSignal);
            process.off("SIGTERM", onSignal);
          }
          return;
        }
        const svids = await c.fetchJwtSvids(params);
        if (out === "token") {
          process.stdout.write(`${(svids[0] as WorkloadJwtSvid).token}\n`);
        } else if (out === "json") {
          process.stdout.write(`${JSON.stringify({ svids: svids.map((s) => ({ spiffe_id: s.spiffeId.toString(), token: s.token, hint: s.hint, expires_at: s.expiresAt.toISOString() })) }, null, 2)}\n`);
        } else {
          for (const s of svids) process.stdout.write(`token(${s.spiffeId}):\n\t${s.token}\n\n`);
        }
      } finally {
        c.close();
      }
    });

  common(api.command("validate").description("validate tokens").command("jwt").description("validate a JWT-SVID through the Workload API").requiredOption("-a, --audience <aud>", "expected audience").requiredOption("--svid <token>", "the JWT-SVID")).action(
    async (o: { socketPath?: string; output: string; audience: string; svid: string }) => {
      const out = output(o.output);
      const c = client(o.socketPath);
      try {
        const v = await c.validateJwtSvid(o.svid, o.audience);
        if (out === "json") process.stdout.write(`${JSON.stringify({ spiffe_id: v.id.toString(), claims: v.claims }, null, 2)}\n`);
        else process.stdout.write(`SVID is valid.\nSPIFFE ID : ${v.id}\nClaims    : ${JSON.stringify(v.claims)}\n`);
      } finally {
        c.close();
      }
    },
  );

  common(api.command("watch").description("print every X.509 update until interrupted")).action(async (o: { socketPath?: string; output: string }) => {
    const out = output(o.output);
    const c = client(o.socketPath);
    await new Promise<void>((resolve, reject) => {
      const w = c.watchX509Context(
        (ctx) => {
          if (out === "json") process.stdout.write(`${JSON.stringify(x509Json(ctx))}\n`);
          else process.stdout.write(`${new Date().toISOString()} received ${ctx.svids.length} svid(s): ${ctx.svids.map((s) => s.id.toString()).join(", ")}\n`);
        },
        (err, info) => {
          process.stderr.write(`watch: ${err.message}\n`);
          if (info.terminal) reject(err);
        },
      );
      const stop = () => {
        w.close();
        resolve();
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
    }).finally(() => c.close());
  });

  return program;
}

/** Runs the CLI with `argv` (without node and script); returns the exit status. */
export async function main(argv: readonly string[]): Promise<number> {
  try {
    await buildProgram().parseAsync([...argv], { from: "user" });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.code === "commander.helpDisplayed" || e.code === "commander.help" ? 0 : 2;
    if (e instanceof UsageError) {
      process.stderr.write(`error: ${e.message}\n`);
      return 2;
    }
    process.stderr.write(`error: ${isSigilError(e) ? e.message : (e as Error).message}\n`);
    return 1;
  }
}

const isEntry = process.argv[1] !== undefined && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href;
if (isEntry) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
