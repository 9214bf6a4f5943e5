/**
 * The server's own X509-SVID (`server-svid` service): the TLS identity the
 * agent API presents, `spiffe://<td>/spire/server`, on a fresh P-256 key,
 * with the CA roots client certificates are requested against. Issued at
 * start; {@link ServerSvidService.refresh} (run after each CA rotation step,
 * and by its own timer at half life: with an SVID TTL as short as the 10 s
 * between rotation steps, waiting for the next step let it expire) re-issues
 * it at half life and whenever the roots change. A bundle change (an authority
 * prepared and activated at once by an operator's taint) refreshes it at once
 * as well: until the roots are served, an agent SVID under the new CA is not
 * accepted as a client certificate. It is signed
 * in-process and not recorded in the issuance log.
 */
import type { Clock } from "../../common/clock.js";
import type { Service } from "../../common/service.js";
import type { SpiffeId } from "../../spiffe/id.js";
import { encodePemCertificates } from "../../spiffe/pem.js";
import { generateKeyPair } from "../../spiffe/signer.js";
import type { CaManager } from "../ca/manager.js";
import { MemoryCertificateProvider } from "./cert-provider.js";

/** Dependencies of the {@link ServerSvidService}. */
export interface ServerSvidDeps {
  /** The CA service, started before this one. */
  readonly ca: { readonly manager: CaManager };
  readonly serverId: SpiffeId;
  /** `server.default_x509_svid_ttl`. */
  readonly ttlMs: number;
  readonly clock: Clock;
}

/** The `server-svid` service; see the module comment. */
export class ServerSvidService implements Service {
  readonly name = "server-svid";
  /** What the agent API's TLS credentials read the identity and the roots from. */
  readonly certificates = new MemoryCertificateProvider();
  readonly #d: ServerSvidDeps;
  #renewAt = 0;
  #servedRoots = "";
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  #unsubscribe: (() => void) | undefined;

  constructor(deps: ServerSvidDeps) {
    this.#d = deps;
  }

  start(): void {
    this.refresh();
    // After the manager's change is done (its listeners run inside it).
    this.#unsubscribe = this.#d.ca.manager.onBundleChange(() => {
      setImmediate(() => {
        if (this.#stopped) return;
        try {
          this.refresh();
        } catch {
          this.#schedule(1_000);
        }
      });
    });
  }

  /** Stops the renewal timer. */
  stop(): void {
    this.#stopped = true;
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** Runs {@link refresh} again in `delayMs` (at least 100 ms); a failure is retried a second later. */
  #schedule(delayMs: number): void {
    clearTimeout(this.#timer);
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      try {
        this.refresh();
      } catch {
        // No active CA at this moment: the rotation job repairs that and calls refresh itself.
        this.#schedule(1_000);
      }
    }, Math.max(100, delayMs));
    this.#timer.unref();
  }

  /** Serves the current roots and re-issues the SVID if the roots changed or half its lifetime has passed. */
  refresh(): void {
    const ca = this.#d.ca.manager;
    const now = this.#d.clock.now().getTime();
    const roots = ca.bundle().x509Authorities;
    const rootsKey = roots.map((r) => Buffer.from(r).toString("base64")).join(",");
    if (rootsKey !== this.#servedRoots) {
      this.certificates.setCaCertificates(encodePemCertificates(roots));
      this.#servedRoots = rootsKey;
      this.#renewAt = 0; // a new CA may be active: re-issue
    }
    if (now < this.#renewAt) {
      // A timer may fire a moment early: wait the rest.
      this.#schedule(this.#renewAt - now);
      return;
    }
    const { privateKey, publicKey } = generateKeyPair("ec-p256");
    const issued = ca.signX509Svid({
      spiffeId: this.#d.serverId,
      publicKeyDer: new Uint8Array(publicKey.export({ format: "der", type: "spki" })),
      ttlMs: this.#d.ttlMs,
    });
    this.certificates.setIdentity(encodePemCertificates(issued.chain), privateKey.export({ format: "pem", type: "pkcs8" }).toString());
    this.#renewAt = now + (issued.notAfter.getTime() - now) / 2;
    this.#schedule(this.#renewAt - now);
  }
}
