/**
 * The agent's connection to the server as a service (`server-connection`):
 * the server is trusted through the stored bundle, or on first start through
 * the bootstrap source (`trust_bundle_path`, `trust_bundle_url`, or
 * `insecure_bootstrap`); the channel is closed at stop. The server addresses
 * are resolved at start (see `server-addresses.ts`).
 */
import type { Clock } from "../../common/clock.js";
import { subsystemLogger, type Logger } from "../../common/log.js";
import type { Service } from "../../common/service.js";
import { SigilError } from "../../spiffe/errors.js";
import type { TrustDomain } from "../../spiffe/id.js";
import type { LoadedAgentState } from "../storage/agent-state-store.js";
import { resolveServerTargets, type HostPort, type HostResolver } from "./server-addresses.js";
import { createServerClient, type GrpcServerClient } from "./server-client.js";
import { loadBootstrapTrust, type TrustBootstrapConfig, type TrustBootstrapDeps } from "./trust-bootstrap.js";

/** Dependencies of the {@link ServerConnectionService}. */
export interface ServerConnectionDeps {
  /** `server_addresses`, or `server_address` and `server_port`. */
  readonly servers: readonly HostPort[];
  /** DNS (tests inject one). */
  readonly resolve?: HostResolver | undefined;
  /** The bootstrap settings of the agent config, used when no bundle is stored. */
  readonly bootstrap: TrustBootstrapConfig;
  /** Bootstrap I/O (tests inject `fetch` for `trust_bundle_url`). */
  readonly bootstrapIo?: TrustBootstrapDeps | undefined;
  /** The state store service, started before this one: its stored bundle, if any, is trusted. */
  readonly state: { readonly loaded: LoadedAgentState };
  readonly trustDomain: TrustDomain;
  readonly clock: Clock;
  readonly log: Logger;
}

/** The `server-connection` service; see the module comment. */
export class ServerConnectionService implements Service {
  readonly name = "server-connection";
  readonly #d: ServerConnectionDeps;
  #client: GrpcServerClient | undefined;

  constructor(deps: ServerConnectionDeps) {
    this.#d = deps;
  }

  /** The server client, once started. */
  get client(): GrpcServerClient {
    if (this.#client === undefined) throw new SigilError("ERR_UNAVAILABLE", "server client: not connected yet");
    return this.#client;
  }

  /** @throws SigilError when no bundle is stored and the bootstrap source cannot be read */
  async start(): Promise<void> {
    const { log, trustDomain } = this.#d;
    let roots: readonly Uint8Array[] = this.#d.state.loaded.bundle?.x509Authorities ?? [];
    let insecure = false;
    if (roots.length === 0) {
      const trust = await loadBootstrapTrust(this.#d.bootstrap, trustDomain, this.#d.bootstrapIo);
      if (trust.kind === "roots") {
        roots = trust.roots;
        log.info({ source: trust.source, authorities: roots.length }, "bootstrap: trusting the server with the bootstrap bundle");
      } else {
        insecure = true;
        log.warn({}, "bootstrap: insecure_bootstrap is set: the server will not be authenticated on first contact (development only)");
      }
    }
    const address = await resolveServerTargets(this.#d.servers, this.#d.resolve);
    if (address.length > 1) log.info({ servers: address }, "server client: spreading across several servers");
    this.#client = createServerClient({
      address,
      trustDomain,
      clock: this.#d.clock,
      roots,
      insecureBootstrap: insecure,
      log: subsystemLogger(log, "server_client"),
    });
  }

  stop(): void {
    this.#client?.close();
  }
}
