/**
 * The CA as a service (`ca`): creates the KeyManager and UpstreamAuthority
 * plugins and the {@link CaManager}, and starts it (slots restored from the CA
 * journal, one rotation step, the bundle published). Ready while an active,
 * unexpired X.509 CA can sign.
 */
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import type { Service } from "../../common/service.js";
import { createPlugins, PLUGIN_CATALOG, type PluginSection } from "../../plugins/catalog.js";
import { OwnedPlugins } from "../../plugins/descriptor.js";
import type { SigningPool } from "../../plugins/keymanager/signing-pool.js";
import { SigilError } from "../../spiffe/errors.js";
import type { TrustDomain } from "../../spiffe/id.js";
import type { ServerConfig } from "../config/schema.js";
import type { Datastore } from "../datastore/index.js";
import type { KeyManager } from "../../plugins/keymanager/types.js";
import { CaManager, type AuthorityEvent, type CaSettings } from "./manager.js";

/**
 * The CA settings of a server config's `server` section. `refreshHintSeconds`
 * is the bundle endpoint's `refresh_hint`, so the stored and published own
 * bundle carries the hint the endpoint serves (the CA's default otherwise);
 * `serverId` is this instance's name in the CA journal (`serverInstanceId`).
 */
export function caSettings(s: ServerConfig["server"], trustDomain: TrustDomain, refreshHintSeconds?: number, serverId?: string): CaSettings {
  return {
    trustDomain,
    ...(serverId !== undefined ? { serverId } : {}),
    caTtlMs: s.ca_ttl,
    caKeyType: s.ca_key_type,
    jwtKeyType: s.jwt_key_type ?? s.ca_key_type,
    caSubject: s.ca_subject
      ? {
          ...(s.ca_subject.country?.[0] ? { country: s.ca_subject.country[0] } : {}),
          ...(s.ca_subject.organization?.[0] ? { organization: s.ca_subject.organization[0] } : {}),
          ...(s.ca_subject.common_name ? { commonName: s.ca_subject.common_name } : {}),
        }
      : undefined,
    jwtIssuer: s.jwt_issuer,
    refreshHintSeconds,
  };
}

/** Dependencies of the {@link CaService}. */
export interface CaServiceDeps {
  readonly settings: CaSettings;
  /** `plugins.KeyManager` and `plugins.UpstreamAuthority` of the server config. */
  readonly plugins: { readonly KeyManager?: PluginSection | undefined; readonly UpstreamAuthority?: PluginSection | undefined };
  /** The datastore service (the CA journal and the own bundle live there), started before this one. */
  readonly datastore: { readonly datastore: Datastore };
  /** Signing threads handed to the key manager; none signs in-line. */
  readonly signingPool: SigningPool | undefined;
  readonly clock: Clock;
  /** Receives the CA expiry gauges. */
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Told of every authority state change (the transparency log); unset: nobody is. */
  readonly onAuthorityEvent?: ((e: AuthorityEvent) => Promise<void>) | undefined;
  /** A signing request found the active authority expired: the rotation job should run now. */
  readonly onActiveExpired?: (() => void) | undefined;
}

/** How often the live-SVIDs-per-authority gauge is recomputed. */
export const LIVE_SVIDS_INTERVAL_MS = 10_000;

/** The `ca` service; see the module comment. */
export class CaService implements Service {
  readonly name = "ca";
  readonly #d: CaServiceDeps;
  #manager: CaManager | undefined;
  #keyManager: KeyManager | undefined;
  /** The KeyManager and UpstreamAuthority instances. */
  readonly #plugins: OwnedPlugins;
  /** Recomputes `sigil_ca_live_svids` every {@link LIVE_SVIDS_INTERVAL_MS}. */
  #liveTimer: NodeJS.Timeout | undefined;

  constructor(deps: CaServiceDeps) {
    this.#d = deps;
    this.#plugins = new OwnedPlugins(deps.log);
  }

  /** The started CA manager, for the services started after this one. */
  get manager(): CaManager {
    if (!this.#manager) throw new SigilError("ERR_UNAVAILABLE", "ca: not started");
    return this.#manager;
  }

  /** The started KeyManager plugin (the transparency log keeps its key there too). */
  get keyManager(): KeyManager {
    if (!this.#keyManager) throw new SigilError("ERR_UNAVAILABLE", "ca: not started");
    return this.#keyManager;
  }

  start(): Promise<void> {
    return this.#plugins.starting(() => this.#start());
  }

  async #start(): Promise<void> {
    const { plugins, metrics } = this.#d;
    const [keyManager] = this.#plugins.add(createPlugins("server", PLUGIN_CATALOG.KeyManager, plugins.KeyManager, { signingPool: this.#d.signingPool }));
    if (keyManager === undefined) throw new SigilError("ERR_INVALID_ARGUMENT", "server: plugins.KeyManager: one KeyManager plugin must be configured");
    this.#keyManager = keyManager;
    const [upstream] = this.#plugins.add(createPlugins("server", PLUGIN_CATALOG.UpstreamAuthority, plugins.UpstreamAuthority, {}));
    const manager = new CaManager(this.#d.settings, {
      keyManager,
      store: this.#d.datastore.datastore,
      clock: this.#d.clock,
      upstream,
      log: this.#d.log,
      onAuthorityEvent: this.#d.onAuthorityEvent,
      onActiveExpired: this.#d.onActiveExpired,
      // Revoke is refused while the inventory still counts live SVIDs under the key.
      countLiveSvids: async (caKeyId) => (await this.#d.datastore.datastore.issuanceInventory({ caKeyId, now: this.#d.clock.now(), limit: 0, countOnly: true })).live,
      onAuthoritiesChanged: (x509, jwt) => {
        for (const slot of ["A", "B"]) {
          metrics.setCaX509Expiry(slot, x509.find((a) => a.slotId === slot)?.notAfter);
          metrics.setCaJwtKeyExpiry(slot, jwt.find((a) => a.slotId === slot)?.notAfter);
        }
      },
    });
    await manager.start();
    this.#manager = manager;
    this.#startLiveGauge(manager);
  }

  /**
   * `sigil_ca_live_svids{kind, key_id}`: the inventory's live count of every
   * unexpired authority in the journal (every server's), recomputed every 10 s
   * rather than on scrape (one `COUNT(*)` per key, `countOnly`).
   */
  #startLiveGauge(manager: CaManager): void {
    const gauge = this.#d.metrics.gauge({ name: "sigil_ca_live_svids", help: "Live SVIDs (unexpired, not superseded) signed by each CA key, from the issuance log.", labelNames: ["kind", "key_id"] });
    let running = false;
    const refresh = async () => {
      if (running) return;
      running = true;
      try {
        const ds = this.#d.datastore.datastore;
        const now = this.#d.clock.now();
        const views = (await manager.list()).filter((a) => a.status !== "revoked");
        const counts = await Promise.all(views.map(async (a) => (await ds.issuanceInventory({ caKeyId: a.keyId, now, limit: 0, countOnly: true })).live));
        gauge.reset();
        views.forEach((a, i) => gauge.set({ kind: a.kind, key_id: a.keyId }, counts[i] ?? 0));
      } catch (e) {
        this.#d.log.warn({ err: (e as Error).message }, "ca: counting live SVIDs per authority failed");
      } finally {
        running = false;
      }
    };
    void refresh();
    this.#liveTimer = setInterval(() => void refresh(), LIVE_SVIDS_INTERVAL_MS);
    this.#liveTimer.unref();
  }

  /** Closes the KeyManager and UpstreamAuthority plugins (keys stay with the key manager, state in the datastore). */
  stop(): Promise<void> {
    clearInterval(this.#liveTimer);
    this.#manager?.stop();
    return this.#plugins.close();
  }

  /** Not ready without an active, unexpired X.509 CA. */
  readiness(): string[] {
    const now = this.#d.clock.now().getTime();
    return this.manager.x509Authorities().some((a) => a.status === "active" && a.notAfter.getTime() > now) ? [] : ["no active X.509 CA"];
  }
}
