/**
 * `sigil-server`: run the server, validate its config, check its health, and
 * administer it over the local admin socket (SPIRE's noun-verb shape).
 * Exit status: 0 success, 1 the operation failed, 2 usage error.
 */
import path from "node:path";
import { pathToFileURL } from "node:url";
import { Command, CommanderError } from "commander";
import { registerAdminCommands, OperationFailed, DEFAULT_ADMIN_SOCKET } from "./admin-commands.js";
import { UsageError } from "./output.js";
import { isSigilError } from "../../spiffe/errors.js";

/** Builds the command tree (exported for tests). */
export function buildProgram(): Command {
  const program = new Command("sigil-server")
    .description("Sigil server: SPIFFE trust-domain CA, registration and node attestation")
    .exitOverride()
    .showHelpAfterError(false);
  let configTrustDomain: string | undefined;

  program
    .command("run")
    .description("run the server")
    .requiredOption("-c, --config <path>", "server config file (YAML or JSON)")
    .option("--expand-env", "expand ${VAR} references in the config")
    .action(async (o: { config: string; expandEnv?: boolean }) => {
      const { loadServerConfig } = await import("../config/load.js");
      const { runServer } = await import("../main.js");
      const config = loadServerConfig(o.config, { expandEnv: Boolean(o.expandEnv) });
      configTrustDomain = config.server.trust_domain;
      await runServer(config);
    });

  program
    .command("k8s-controller")
    .description("run the Kubernetes registration controller (k8s_controller in the config) as its own process, writing entries through the server's admin socket")
    .requiredOption("-c, --config <path>", "server config file (YAML or JSON)")
    .option("--expand-env", "expand ${VAR} references in the config")
    .option("-s, --socket-path <path>", "the server's admin API socket (default: server.socket_path of the config)")
    .action(async (o: { config: string; expandEnv?: boolean; socketPath?: string }) => {
      const { loadServerConfig } = await import("../config/load.js");
      const { runK8sControllerProcess } = await import("../k8s-controller/process.js");
      const config = loadServerConfig(o.config, { expandEnv: Boolean(o.expandEnv) });
      await runK8sControllerProcess(config, { socketPath: o.socketPath });
    });

  program
    .command("oidc-discovery")
    .description("serve OIDC discovery (/.well-known/openid-configuration, /keys) for JWT-SVIDs as a workload of a local agent, from the JWT bundles of its Workload API")
    .requiredOption("-c, --config <path>", "oidc-discovery config file (YAML or JSON; issuer, listener, workload_api)")
    .option("--expand-env", "expand ${VAR} references in the config")
    .action(async (o: { config: string; expandEnv?: boolean }) => {
      const { loadOidcProcessConfig, runOidcProcess } = await import("../oidc/process.js");
      await runOidcProcess(loadOidcProcessConfig(o.config, { expandEnv: Boolean(o.expandEnv) }));
    });

  program
    .command("validate")
    .description("validate a config file and print every problem")
    .requiredOption("-c, --config <path>", "server config file (YAML or JSON)")
    .option("--expand-env", "expand ${VAR} references in the config")
    .action(async (o: { config: string; expandEnv?: boolean }) => {
      const { loadServerConfig } = await import("../config/load.js");
      loadServerConfig(o.config, { expandEnv: Boolean(o.expandEnv) });
      process.stdout.write("configuration is valid\n");
    });

  program
    .command("healthcheck")
    .description("exit 0 when the server answers on its admin socket and is serving")
    .option("-s, --socket-path <path>", "admin API socket", DEFAULT_ADMIN_SOCKET)
    .option("--verbose", "print details")
    .action(async (o: { socketPath: string; verbose?: boolean }) => {
      const { checkHealthOverSocket } = await import("../../common/health/check.js");
      const ok = await checkHealthOverSocket(o.socketPath, "");
      if (!ok) throw new OperationFailed("server is unhealthy");
      process.stdout.write("Server is healthy.\n");
    });

  registerAdminCommands(program, () => configTrustDomain);
  return program;
}

/** Runs the CLI with `argv` (without node and script); returns the exit status. */
export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv], { from: "user" });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed" || e.code === "commander.version" || e.code === "commander.help") return 0;
      return 2;
    }
    if (e instanceof UsageError) {
      process.stderr.write(`error: ${e.message}\n`);
      return 2;
    }
    if (e instanceof OperationFailed) {
      process.stderr.write(`error: ${e.message}\n`);
      return 1;
    }
    const grpcDetails = (e as { details?: unknown }).details;
    const message = isSigilError(e) ? e.message : typeof grpcDetails === "string" && grpcDetails ? grpcDetails : (e as Error).message;
    process.stderr.write(`error: ${message}\n`);
    return 1;
  }
}

const isEntry = process.argv[1] !== undefined && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href;
if (isEntry) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
