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
 * accepted as a client certificate.
 *
 * With an `issue` hook (the transparency log on) each SVID is recorded and
 * logged (`server-svid` entry) before it is put into service: the start
 * waits for the first, and a renewal that cannot be recorded keeps the
 * current SVID in service and is retried with backoff. Without one it is
 * signed in-process and not recorded. Each `issue` call is given at most
 * `issueTimeoutMs` (30 s): a hung datastore counts as a failed renewal and
 * is retried with backoff, never blocking renewals for good. While a retry
 * is pending, `refresh()` calls (the rotation job's, every 10 s) only serve
 * changed roots: the backoff, not the rotation tick, paces the attempts.
 *
 * `sigil_server_svid_expiry_timestamp_seconds` is the served SVID's
 * notAfter; once it has passed, {@link ServerSvidService.readiness} reports
 * it and `onExpiryChange(true)` is called (the server turns gRPC health
 * NOT_SERVING), and `onExpiryChange(false)` once a renewed SVID is served.
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import type { Service } from "../../common/service.js";
import type { SpiffeId } from "../../spiffe/id.js";
import { SigilError } from "../../spiffe/errors.js";
import { encodePemCertificates } from "../../spiffe/pem.js";
import { generateKeyPair } from "../../spiffe/signer.js";
import type { CaManager, IssuedX509, X509SvidRequest } from "../ca/manager.js";
import { MemoryCertificateProvider } from "./cert-provider.js";

/** First wait before a failed renewal is tried again; doubled each failure up to {@link MAX_RETRY_MS}. */
const FIRST_RETRY_MS = 1_000;
/** Longest wait between two renewal attempts after failures. */
const MAX_RETRY_MS = 30_000;
/** Default longest time one `issue` call may take. */
const DEFAULT_ISSUE_TIMEOUT_MS = 30_000;

/** Dependencies of the {@link ServerSvidService}. */
export interface ServerSvidDeps {
  /** The CA service, started before this one. */
  readonly ca: { readonly manager: CaManager };
  readonly serverId: SpiffeId;
  /** `server.default_x509_svid_ttl`. */
  readonly ttlMs: number;
  readonly clock: Clock;
  /**
   * Signs and records an SVID, resolving once its record (and log entry) is
   * committed; unset: signed by the CA directly and not recorded.
   */
  readonly issue?: ((req: X509SvidRequest) => Promise<IssuedX509>) | undefined;
  /** Where failed renewals are reported. */
  readonly log?: Logger | undefined;
  /** Longest time one `issue` call may take before the attempt counts as failed (default 30 s). */
  readonly issueTimeoutMs?: number | undefined;
  /** Where `sigil_server_svid_expiry_timestamp_seconds` is kept. */
  readonly metrics?: Metrics | undefined;
  /** Called with true when the served SVID has expired, and with false once a renewed one is served. */
  readonly onExpiryChange?: ((expired: boolean) => void) | undefined;
}

/**
 * How long to wait before renewal attempt number `failures + 1` after
 * `failures` consecutive failures: 1 s doubling to at most 30 s.
 */
export function renewalRetryDelayMs(failures: number): number {
  return Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** Math.max(0, Math.min(failures - 1, 16)));
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
  /** The renewal in progress; refresh calls during it run once more after it. */
  #running: Promise<void> | undefined;
  #again = false;
  #failures = 0;
  /** notAfter of the SVID in service. */
  #notAfter: Date | undefined;
  /** When the pending retry after a failure is due (ms); refresh calls before it do not issue. */
  #retryAt = 0;
  #expired = false;
  #expiryTimer: NodeJS.Timeout | undefined;
  readonly #expiryGauge: ReturnType<Metrics["gauge"]> | undefined;

  constructor(deps: ServerSvidDeps) {
    this.#d = deps;
    this.#expiryGauge = deps.metrics?.gauge({ name: "sigil_server_svid_expiry_timestamp_seconds", help: "Expiry (notAfter) of the X509-SVID the agent API serves, as a Unix timestamp." });
  }

  /** True when the served SVID's notAfter has passed (renewals kept failing). */
  expired(): boolean {
    return this.#notAfter !== undefined && this.#d.clock.now().getTime() >= this.#notAfter.getTime();
  }

  /** Not ready once the served SVID has expired. */
  readiness(): string[] {
    return this.expired() ? [`server svid: the served SVID expired at ${this.#notAfter?.toISOString()}; renewals are failing`] : [];
  }

  /** Issues (and records) the first SVID; rejects when it cannot, so nothing serves without one. */
  async start(): Promise<void> {
    await this.#renew();
    this.#unsubscribe = this.#d.ca.manager.onBundleChange(() => {
      // After the manager's change is done (its listeners run inside it).
      setImmediate(() => void this.refresh());
    });
  }

  /** Stops the renewal timer. */
  stop(): void {
    this.#stopped = true;
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
  }

  /**
   * Serves the current roots and re-issues the SVID if the roots changed or
   * half its lifetime has passed. Never rejects: a failure is logged, the
   * current SVID stays in service, and the renewal is retried with backoff.
   * Resolves once this attempt (and any it had to wait for) is done.
   */
  refresh(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    // Backing off after a failure: serve changed roots, leave the attempt to the retry timer.
    if (this.#failures > 0 && this.#d.clock.now().getTime() < this.#retryAt && !this.#running) {
      this.#serveRoots();
      return Promise.resolve();
    }
    return this.#attempt();
  }

  /** One renewal attempt (and any asked for meanwhile), regardless of backoff. */
  #attempt(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    const run = async (): Promise<void> => {
      do {
        this.#again = false;
        try {
          await this.#renew();
          this.#failures = 0;
        } catch (err) {
          this.#failures++;
          const delay = renewalRetryDelayMs(this.#failures);
          this.#d.log?.error(
            { err, spiffe_id: this.#d.serverId.toString(), failures: this.#failures, retry_in_ms: delay, current_not_after: this.#notAfter?.toISOString() },
            "server svid: cannot renew; the current SVID stays in service",
          );
          this.#retryAt = this.#d.clock.now().getTime() + delay;
          this.#schedule(delay, true);
          this.#watchExpiry();
          return;
        }
      } while (this.#again && !this.#stopped);
    };
    this.#running = run().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  /** Runs {@link refresh} (a retry: {@link #attempt}) again in `delayMs` (at least 100 ms). */
  #schedule(delayMs: number, retry = false): void {
    clearTimeout(this.#timer);
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void (retry ? this.#attempt() : this.refresh()), Math.max(100, delayMs));
    this.#timer.unref();
  }

  /** Reports expiry now, or arms a timer for the served SVID's notAfter. */
  #watchExpiry(): void {
    clearTimeout(this.#expiryTimer);
    if (this.#stopped || this.#notAfter === undefined) return;
    if (this.expired()) {
      if (!this.#expired) {
        this.#expired = true;
        this.#d.log?.error({ spiffe_id: this.#d.serverId.toString(), not_after: this.#notAfter.toISOString() }, "server svid: the served SVID has expired; agents cannot connect until a renewal succeeds");
        this.#d.onExpiryChange?.(true);
      }
      return;
    }
    this.#expiryTimer = setTimeout(() => this.#watchExpiry(), Math.max(100, this.#notAfter.getTime() - this.#d.clock.now().getTime()));
    this.#expiryTimer.unref();
  }

  /** Serves the bundle's current roots; true when they changed. */
  #serveRoots(): boolean {
    const roots = this.#d.ca.manager.bundle().x509Authorities;
    const rootsKey = roots.map((r) => Buffer.from(r).toString("base64")).join(",");
    if (rootsKey === this.#servedRoots) return false;
    this.certificates.setCaCertificates(encodePemCertificates(roots));
    this.#servedRoots = rootsKey;
    return true;
  }

  /** `issue(req)`, failing after `issueTimeoutMs`. */
  async #issueWithTimeout(req: X509SvidRequest): Promise<IssuedX509> {
    const issue = this.#d.issue;
    if (!issue) return this.#d.ca.manager.signX509Svid(req);
    const ms = this.#d.issueTimeoutMs ?? DEFAULT_ISSUE_TIMEOUT_MS;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        issue(req),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new SigilError("ERR_UNAVAILABLE", `server svid: issuing and recording the SVID took more than ${ms} ms`)), ms);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The one renewal step; throws when there is no active CA or the SVID cannot be recorded. */
  async #renew(): Promise<void> {
    const now = this.#d.clock.now().getTime();
    if (this.#serveRoots()) this.#renewAt = 0; // a new CA may be active: re-issue
    if (now < this.#renewAt) {
      // A timer may fire a moment early: wait the rest.
      this.#schedule(this.#renewAt - now);
      return;
    }
    const { privateKey, publicKey } = generateKeyPair("ec-p256");
    const req: X509SvidRequest = {
      spiffeId: this.#d.serverId,
      publicKeyDer: new Uint8Array(publicKey.export({ format: "der", type: "spki" })),
      ttlMs: this.#d.ttlMs,
    };
    const issued = await this.#issueWithTimeout(req);
    if (this.#stopped) return;
    this.certificates.setIdentity(encodePemCertificates(issued.chain), privateKey.export({ format: "pem", type: "pkcs8" }).toString());
    this.#notAfter = issued.notAfter;
    this.#expiryGauge?.set(issued.notAfter.getTime() / 1000);
    if (this.#expired) {
      this.#expired = false;
      this.#d.onExpiryChange?.(false);
    }
    this.#watchExpiry();
    this.#renewAt = now + (issued.notAfter.getTime() - now) / 2;
    this.#schedule(this.#renewAt - now);
  }
}
