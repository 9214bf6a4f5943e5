/**
 * `sigil-server k8s-controller`: the registration controller as its own
 * process (a sidecar of the server, say), reading the server's config file
 * and writing entries through the admin API on the server's admin socket,
 * which validates them as it does any operator's. Run it instead of
 * `k8s_controller.enabled` in the server, not beside it.
 */
import path from "node:path";
import { createLogger, subsystemLogger } from "../../common/log.js";
import { ServiceGroup } from "../../common/service.js";
import { waitForStopSignal } from "../../common/signals.js";
import { SigilError } from "../../spiffe/errors.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import type { ServerConfig } from "../config/schema.js";
import { K8sController } from "./controller.js";
import { adminApiEntryStore } from "./entry-store.js";
import { k8sControllerSettings } from "./settings.js";

/** Options of {@link runK8sControllerProcess}. */
export interface K8sControllerProcessOptions {
  /** The server's admin socket; default `server.socket_path` of the config. */
  readonly socketPath?: string | undefined;
}

/**
 * Runs the controller until SIGINT/SIGTERM.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` when the config has no usable `k8s_controller` section.
 */
export async function runK8sControllerProcess(config: ServerConfig, options: K8sControllerProcessOptions = {}): Promise<void> {
  const stopSignal = waitForStopSignal();
  const s = config.server;
  const log = createLogger({ level: s.log_level, format: s.log_format });
  const settings = k8sControllerSettings(config);
  if (settings === undefined) throw new SigilError("ERR_INVALID_ARGUMENT", "k8s_controller: the config has no k8s_controller section (cluster, and the rest as for the server)");
  if (config.k8s_controller?.enabled === true) {
    log.warn({}, "k8s controller: k8s_controller.enabled is true, so the server runs the controller as well; set it to false when the controller runs as its own process");
  }
  const socketPath = path.resolve(options.socketPath ?? s.socket_path);
  const controller = new K8sController({ settings, trustDomain: parseTrustDomain(s.trust_domain), entries: adminApiEntryStore(socketPath), log: subsystemLogger(log, "k8s_controller") });
  const services = new ServiceGroup([controller], log);
  await services.start();
  log.info({ cluster: settings.cluster, admin_socket: socketPath }, "k8s controller process started");
  const signal = await stopSignal;
  log.info({ signal }, "k8s controller process: shutting down");
  await services.stop();
}
