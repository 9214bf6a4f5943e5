/**
 * The `federation` service: applies the config's relationships at start, then
 * fetches each relationship's bundle from its endpoint on its own schedule and
 * stores it where agents pick it up (SyncAuthorized sends every bundle an
 * entry federates with).
 *
 * - Schedule (FED-3, FED-25): the next fetch is one refresh interval after the
 *   last attempt, successful or not: the bundle's `spiffe_refresh_hint`
 *   (5 minutes without one) clamped to `[min_refresh_interval,
 *   max_refresh_interval]`. A failed fetch keeps the last good bundle and
 *   retries at the next interval, never in a tight loop. A relationship
 *   created, changed or refreshed through the admin API is fetched at once.
 * - Ordering (FED-4, our policy): a bundle with a lower `spiffe_sequence` than
 *   the held one is refused; the same sequence with different content is
 *   refused too (a publisher must bump the sequence); without a sequence the
 *   latest fetched bundle wins. The write is a compare-and-set on the held
 *   sequence, so a concurrent change is never overwritten unseen.
 * - FED-5: a bundle set locally (admin API `bundle set`, a relationship's
 *   initial bundle) counts until the next poll, which replaces it whatever its
 *   sequence. The poller tells its own writes from others' by the sequence and
 *   time it stored; a bundle held at start counts as its own.
 * - `https_spiffe` (FED-23, FED-24): the endpoint is authenticated with the
 *   bundle held for the endpoint SPIFFE ID's trust domain, read from the
 *   datastore at every fetch, so a foreign root rotation is followed.
 * - Every fetch is logged with URL, trust domain and sequence (FED-29) and
 *   counted in `sigil_federation_fetch_total{trust_domain,result}`;
 *   `sigil_federation_last_success_timestamp_seconds{trust_domain}` tells how
 *   stale a bundle is.
 */
import { readFileSync } from "node:fs";
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import type { Service } from "../../common/service.js";
import { parseSpiffeBundle, serializeSpiffeBundle, toX509Bundle, type SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { SigilError, isSigilError } from "../../spiffe/errors.js";
import { fetchBundle as defaultFetchBundle, type EndpointProfile, type FetchBundleOptions, type FetchedBundle } from "../../spiffe/federation/bundle-endpoint-client.js";
import type { TrustDomain } from "../../spiffe/id.js";
import type { ServerConfig } from "../config/schema.js";
import type { Datastore } from "../datastore/datastore.js";
import type { StoredBundle } from "../datastore/bundle.js";
import {
  checkEndpointAuthenticable,
  configRelationshipFieldNames,
  foreignAuthorityProblem,
  parseInitialBundle,
  relationshipInput,
  storedRelationshipSpec,
  validateRelationship,
  type RelationshipSpec,
} from "./relationships.js";

/** Interval without a refresh hint (SPIFFE Federation §6.2: about every 5 minutes). */
export const DEFAULT_REFRESH_INTERVAL_MS = 5 * 60_000;
/** Default `federation.min_refresh_interval`. */
export const DEFAULT_MIN_REFRESH_INTERVAL_MS = 30_000;
/** Default `federation.max_refresh_interval`. */
export const DEFAULT_MAX_REFRESH_INTERVAL_MS = 3_600_000;
/** How long one fetch may take. */
export const FETCH_TIMEOUT_MS = 30_000;
/** Warnings about one fetched bundle that are logged one by one. */
const MAX_LOGGED_WARNINGS = 5;

/** The client function the poller calls (the bundle endpoint client's `fetchBundle`). */
export type FetchBundleFn = (o: FetchBundleOptions) => Promise<FetchedBundle>;

/** Outcome of the last fetch of a relationship. */
export type FetchResult = "updated" | "unchanged" | "error";

/** What the poller knows of one relationship, for `federation show`. */
export interface RelationshipStatus {
  readonly lastAttempt?: Date;
  readonly lastSuccess?: Date;
  readonly lastResult?: FetchResult;
  /** The last fetch's error, until a fetch succeeds. */
  readonly lastError?: string;
  /** `spiffe_sequence` of the held bundle (decimal). */
  readonly sequence?: string;
  readonly nextRefresh?: Date;
}

/** What the admin API asks of the poller. */
export interface FederationControl {
  /** The relationship's fetch status, or `undefined` when it is not polled. */
  status(trustDomain: string): RelationshipStatus | undefined;
  /** A relationship was created or changed: (re)start polling it now. */
  relationshipChanged(trustDomain: string): void;
  /** A relationship was deleted: stop polling it. */
  relationshipDeleted(trustDomain: string): void;
  /**
   * Fetches now and waits for the outcome.
   * @throws SigilError `ERR_NOT_FOUND` (no such relationship), `ERR_UNAVAILABLE` with the fetch error.
   */
  refreshNow(trustDomain: string): Promise<RelationshipStatus>;
}

/** The refresh interval for a bundle's hint (seconds; absent or 0: the 5-minute default), clamped to the bounds. Pure. */
export function refreshIntervalMs(hintSeconds: number | undefined, minMs: number, maxMs: number): number {
  const ms = hintSeconds === undefined || hintSeconds <= 0 ? DEFAULT_REFRESH_INTERVAL_MS : hintSeconds * 1000;
  return Math.min(maxMs, Math.max(minMs, ms));
}

/**
 * Whether a fetched bundle replaces the held one (FED-4): `store`, `unchanged`
 * (same sequence and same content), or a refusal message. `heldIsLocal`: the
 * held bundle was set locally and yields to any fetched one (FED-5). Pure.
 */
export function compareFetched(held: StoredBundle | undefined, heldIsLocal: boolean, fetched: SpiffeBundle): "store" | "unchanged" | { readonly refused: string } {
  if (held === undefined || heldIsLocal || fetched.sequenceNumber === undefined) return "store";
  const heldSeq = BigInt(held.sequence);
  if (fetched.sequenceNumber > heldSeq) return "store";
  if (fetched.sequenceNumber < heldSeq) return { refused: `sequence ${fetched.sequenceNumber} is lower than the held bundle's ${heldSeq}; the held bundle is kept (FED-4)` };
  let same: boolean;
  try {
    same = serializeSpiffeBundle(parseSpiffeBundle(held.document, fetched.trustDomain).bundle) === serializeSpiffeBundle(fetched);
  } catch {
    same = false;
  }
  return same ? "unchanged" : { refused: `sequence ${heldSeq} is unchanged but the bundle's content differs; the held bundle is kept until the sequence increases (FED-4)` };
}

/** Dependencies of the {@link FederationPoller}. */
export interface FederationPollerDeps {
  readonly trustDomain: TrustDomain;
  /** The datastore service, started before this one. */
  readonly datastore: { readonly datastore: Datastore };
  /** This trust domain's current bundle (an endpoint whose ID is in the own trust domain is authenticated with it). */
  readonly ownBundle: () => SpiffeBundle;
  /** The `federation` config section (relationships applied at start, refresh bounds). */
  readonly config?: ServerConfig["federation"];
  readonly clock: Clock;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Default: the bundle endpoint client's `fetchBundle`. */
  readonly fetchBundle?: FetchBundleFn;
  /** Tests only: CAs an `https_web` endpoint's certificate may chain to instead of the system's (processes use `NODE_EXTRA_CA_CERTS`). */
  readonly trustedCas?: readonly Uint8Array[] | string;
  /** Tests only: how long one fetch may take instead of {@link FETCH_TIMEOUT_MS}. */
  readonly fetchTimeoutMs?: number;
  /** Reads `trust_domain_bundle_path` (default `fs.readFileSync`). */
  readonly readFile?: (path: string) => string;
}

interface PollState {
  readonly trustDomain: string;
  timer: NodeJS.Timeout | undefined;
  inFlight: Promise<void> | undefined;
  /** The bundle this poller stored or found at start; another one held was set locally (FED-5). */
  own: { sequence: string; updatedAtMs: number } | undefined;
  lastAttempt?: Date;
  lastSuccess?: Date;
  lastResult?: FetchResult;
  lastError?: string;
  sequence?: string | undefined;
  nextRefresh?: Date;
}

/** The `federation` service; see the module comment. */
export class FederationPoller implements Service, FederationControl {
  readonly name = "federation";
  readonly #d: FederationPollerDeps;
  readonly #fetch: FetchBundleFn;
  readonly #minMs: number;
  readonly #maxMs: number;
  readonly #states = new Map<string, PollState>();
  readonly #abort = new AbortController();
  readonly #fetches;
  readonly #lastSuccess;
  #stopped = false;

  constructor(deps: FederationPollerDeps) {
    this.#d = deps;
    this.#fetch = deps.fetchBundle ?? defaultFetchBundle;
    this.#minMs = deps.config?.min_refresh_interval ?? DEFAULT_MIN_REFRESH_INTERVAL_MS;
    this.#maxMs = deps.config?.max_refresh_interval ?? DEFAULT_MAX_REFRESH_INTERVAL_MS;
    this.#fetches = deps.metrics.counter<"trust_domain" | "result">({
      name: "sigil_federation_fetch_total",
      help: "Bundle endpoint fetches, by federated trust domain and result (updated, unchanged, error).",
      labelNames: ["trust_domain", "result"],
    });
    this.#lastSuccess = deps.metrics.gauge<"trust_domain">({
      name: "sigil_federation_last_success_timestamp_seconds",
      help: "Unix time of the last successful fetch of a federated trust domain's bundle (time() minus this is its staleness).",
      labelNames: ["trust_domain"],
    });
  }

  get #ds(): Datastore {
    return this.#d.datastore.datastore;
  }

  async start(): Promise<void> {
    await this.#applyConfig();
    for (const r of await this.#ds.listFederationRelationships()) {
      const held = await this.#ds.getBundle(r.trustDomain);
      const state = this.#state(r.trustDomain);
      // A bundle held at start counts as fetched: a restart does not lower the sequence guard.
      if (held) state.own = { sequence: held.sequence, updatedAtMs: held.updatedAt.getTime() };
      state.sequence = held?.sequence;
      this.#schedule(state, 0);
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#abort.abort();
    for (const s of this.#states.values()) clearTimeout(s.timer);
    await Promise.allSettled([...this.#states.values()].map((s) => s.inFlight));
  }

  status(trustDomain: string): RelationshipStatus | undefined {
    const s = this.#states.get(trustDomain);
    if (s === undefined) return undefined;
    const { lastAttempt, lastSuccess, lastResult, lastError, sequence, nextRefresh } = s;
    return {
      ...(lastAttempt ? { lastAttempt } : {}),
      ...(lastSuccess ? { lastSuccess } : {}),
      ...(lastResult ? { lastResult } : {}),
      ...(lastError !== undefined ? { lastError } : {}),
      ...(sequence !== undefined ? { sequence } : {}),
      ...(nextRefresh ? { nextRefresh } : {}),
    };
  }

  relationshipChanged(trustDomain: string): void {
    if (this.#stopped) return;
    this.#schedule(this.#state(trustDomain), 0);
  }

  relationshipDeleted(trustDomain: string): void {
    const s = this.#states.get(trustDomain);
    if (s === undefined) return;
    clearTimeout(s.timer);
    this.#states.delete(trustDomain);
    this.#lastSuccess.remove({ trust_domain: trustDomain });
  }

  async refreshNow(trustDomain: string): Promise<RelationshipStatus> {
    if ((await this.#ds.getFederationRelationship(trustDomain)) === undefined) {
      throw new SigilError("ERR_NOT_FOUND", `federation: no relationship with ${trustDomain}`);
    }
    const state = this.#state(trustDomain);
    await this.#run(state);
    if (state.lastResult === "error") throw new SigilError("ERR_UNAVAILABLE", `federation: fetching the bundle of ${trustDomain} failed: ${state.lastError ?? "unknown error"}`);
    return this.status(trustDomain) ?? {};
  }

  #state(trustDomain: string): PollState {
    let s = this.#states.get(trustDomain);
    if (s === undefined) {
      s = { trustDomain, timer: undefined, inFlight: undefined, own: undefined };
      this.#states.set(trustDomain, s);
    }
    return s;
  }

  #schedule(state: PollState, delayMs: number): void {
    clearTimeout(state.timer);
    if (this.#stopped) return;
    state.nextRefresh = new Date(this.#d.clock.now().getTime() + delayMs);
    state.timer = setTimeout(() => {
      this.#run(state).catch((err: unknown) => {
        // #poll records fetch failures itself; this is a datastore failure around it.
        this.#d.log.error({ err, trust_domain: state.trustDomain }, "federation: polling failed; retrying at the longest interval");
        this.#schedule(state, this.#maxMs);
      });
    }, delayMs);
    state.timer.unref();
  }

  /** One fetch of `state`'s relationship, after any under way; then the next one is scheduled. */
  async #run(state: PollState): Promise<void> {
    while (state.inFlight) await state.inFlight;
    if (this.#stopped || this.#states.get(state.trustDomain) !== state) return;
    clearTimeout(state.timer);
    const p = this.#poll(state).finally(() => {
      state.inFlight = undefined;
    });
    state.inFlight = p;
    await p;
  }

  async #poll(state: PollState): Promise<void> {
    const td = state.trustDomain;
    const rel = await this.#ds.getFederationRelationship(td);
    if (rel === undefined) {
      // Deleted by another writer: nothing left to poll.
      this.relationshipDeleted(td);
      return;
    }
    const spec = storedRelationshipSpec(rel);
    const log = this.#d.log;
    state.lastAttempt = this.#d.clock.now();
    let hint: number | undefined;
    try {
      const profile = await this.#profile(spec);
      const res = await this.#fetch({ url: spec.bundleEndpointUrl, trustDomain: spec.trustDomain, profile, timeoutMs: this.#d.fetchTimeoutMs ?? FETCH_TIMEOUT_MS, signal: this.#abort.signal });
      // The endpoint chooses how many warnings there are (a 1 MiB body holds 100k skipped keys): a few are logged.
      for (const w of res.warnings.slice(0, MAX_LOGGED_WARNINGS)) log.warn({ trust_domain: td, url: spec.bundleEndpointUrl }, `federation: ${w}`);
      if (res.warnings.length > MAX_LOGGED_WARNINGS) {
        log.warn({ trust_domain: td, url: spec.bundleEndpointUrl }, `federation: ${res.warnings.length - MAX_LOGGED_WARNINGS} more warnings about the bundle not logged`);
      }
      if (res.bundle.x509Authorities.length === 0 && res.bundle.jwtAuthorities.size === 0) throw new SigilError("ERR_BUNDLE_INVALID", "the bundle has no X.509 or JWT authorities");
      const foreign = await foreignAuthorityProblem(res.bundle, this.#d.ownBundle(), this.#ds);
      if (foreign !== undefined) throw new SigilError("ERR_BUNDLE_INVALID", `${foreign}; the held bundle is kept`);
      hint = res.bundle.refreshHintSeconds;
      // The fetch took a while: a relationship deleted or changed meanwhile must not get this bundle (it would outlive the deletion).
      const current = await this.#ds.getFederationRelationship(td);
      if (this.#states.get(td) !== state) return;
      if (current === undefined) return this.relationshipDeleted(td);
      if (current.updatedAt.getTime() !== rel.updatedAt.getTime() || current.createdAt.getTime() !== rel.createdAt.getTime()) return this.#schedule(state, 0);
      const held = await this.#ds.getBundle(td);
      const heldIsLocal = held !== undefined && (state.own === undefined || state.own.sequence !== held.sequence || state.own.updatedAtMs !== held.updatedAt.getTime());
      const decision = compareFetched(held, heldIsLocal, res.bundle);
      if (typeof decision === "object") throw new SigilError("ERR_BUNDLE_INVALID", decision.refused);
      let sequence = held?.sequence;
      if (decision === "store") {
        const saved = await this.#ds.setBundle(
          // What was understood, not the body: skipped keys and unknown members are not kept or sent to agents.
          { trustDomain: td, document: serializeSpiffeBundle(res.bundle), sequence: res.bundle.sequenceNumber ?? 0n },
          // Checked again in the write's transaction: a deletion through another server in between must win.
          { expectedSequence: held?.sequence ?? null, relationshipUpdatedAt: rel.updatedAt },
        ).catch((e: unknown) => (isSigilError(e, "ERR_FAILED_PRECONDITION") ? undefined : Promise.reject(e)));
        if (saved === undefined) return this.#schedule(state, 0);
        state.own = { sequence: saved.sequence, updatedAtMs: saved.updatedAt.getTime() };
        sequence = saved.sequence;
      }
      const now = this.#d.clock.now();
      Object.assign(state, { lastSuccess: now, lastResult: decision === "store" ? "updated" : "unchanged", sequence });
      delete state.lastError;
      this.#fetches.inc({ trust_domain: td, result: state.lastResult as FetchResult });
      this.#lastSuccess.set({ trust_domain: td }, now.getTime() / 1000);
      log.info(
        { trust_domain: td, url: spec.bundleEndpointUrl, final_url: res.finalUrl, sequence: res.bundle.sequenceNumber?.toString() ?? "none", result: state.lastResult },
        "federation: fetched bundle",
      );
    } catch (e) {
      if (this.#stopped) return;
      const message = isSigilError(e) || e instanceof Error ? e.message : String(e);
      state.lastResult = "error";
      state.lastError = message;
      this.#fetches.inc({ trust_domain: td, result: "error" });
      const held = await this.#ds.getBundle(td).catch(() => undefined);
      state.sequence = held?.sequence;
      hint = held === undefined ? undefined : hintOf(held, spec.trustDomain);
      log.warn({ trust_domain: td, url: spec.bundleEndpointUrl, sequence: held?.sequence ?? "none", error: message }, "federation: fetching bundle failed; the held bundle is kept");
    }
    this.#schedule(state, refreshIntervalMs(hint, this.#minMs, this.#maxMs));
  }

  /** How the endpoint is authenticated, with the latest bundle held for the endpoint's trust domain (FED-23, FED-24). */
  async #profile(spec: RelationshipSpec): Promise<EndpointProfile> {
    if (spec.profile === "https_web") return { kind: "https_web", ...(this.#d.trustedCas !== undefined ? { trustedCas: this.#d.trustedCas } : {}) };
    const id = spec.endpointSpiffeId;
    if (id === undefined) throw new SigilError("ERR_INTERNAL", "federation: https_spiffe relationship without an endpoint SPIFFE ID");
    let bundle: SpiffeBundle;
    if (id.trustDomain.equals(this.#d.trustDomain)) bundle = this.#d.ownBundle();
    else {
      const held = await this.#ds.getBundle(id.trustDomain.name);
      if (held === undefined) throw new SigilError("ERR_FAILED_PRECONDITION", `no bundle of ${id.trustDomain.name} is held to authenticate the endpoint ${id.toString()}`);
      bundle = parseSpiffeBundle(held.document, id.trustDomain).bundle;
    }
    return { kind: "https_spiffe", endpointSpiffeId: id, bundle: toX509Bundle(bundle) };
  }

  /**
   * Upserts `federation.federates_with` (source `config`; the initial bundle
   * only when none is held), then checks every https_spiffe one can be
   * authenticated. A config relationship no longer in the file is ended; when
   * entries still federate with it, it is kept as an API relationship instead.
   *
   * @throws SigilError naming the config key.
   */
  async #applyConfig(): Promise<void> {
    const own = this.#d.trustDomain;
    const configured = Object.entries(this.#d.config?.federates_with ?? {});
    const read = this.#d.readFile ?? ((p: string) => readFileSync(p, "utf8"));
    const specs: Array<{ spec: RelationshipSpec; hasInitial: boolean; key: string }> = [];
    for (const [key, r] of configured) {
      const names = configRelationshipFieldNames(key);
      const spec = validateRelationship(
        { trustDomain: key, bundleEndpointUrl: r.bundle_endpoint_url, profile: r.bundle_endpoint_profile.https_web ? "https_web" : "https_spiffe", endpointSpiffeId: r.bundle_endpoint_profile.https_spiffe?.endpoint_spiffe_id },
        own,
        names,
      );
      let initial;
      if (r.trust_domain_bundle_path !== undefined) {
        let text: string;
        try {
          text = read(r.trust_domain_bundle_path);
        } catch (e) {
          throw new SigilError("ERR_INVALID_ARGUMENT", `${names.initialBundle}: cannot read ${r.trust_domain_bundle_path}: ${(e as Error).message}`, { cause: e });
        }
        initial = parseInitialBundle(text, r.trust_domain_bundle_format, spec.trustDomain, names.initialBundle);
        const foreign = await foreignAuthorityProblem(initial.bundle, this.#d.ownBundle(), this.#ds);
        if (foreign !== undefined) throw new SigilError("ERR_INVALID_ARGUMENT", `${names.initialBundle}: ${foreign}`);
      }
      await this.#ds.putFederationRelationship(relationshipInput(spec, "config"), initial ? { initialBundle: { document: initial.document, sequence: initial.sequence, onlyIfAbsent: true } } : {});
      specs.push({ spec, hasInitial: initial !== undefined, key });
    }
    for (const { spec, hasInitial, key } of specs) await checkEndpointAuthenticable(spec, own, hasInitial, this.#ds, configRelationshipFieldNames(key));
    const names = new Set(specs.map((s) => s.spec.trustDomain.name));
    for (const r of await this.#ds.listFederationRelationships()) {
      if (r.source !== "config" || names.has(r.trustDomain)) continue;
      try {
        await this.#ds.deleteFederationRelationship(r.trustDomain, "restrict");
        this.#d.log.info({ trust_domain: r.trustDomain }, "federation: relationship removed from the config; ended it and deleted its bundle");
      } catch (e) {
        if (!isSigilError(e, "ERR_FAILED_PRECONDITION")) throw e;
        await this.#ds.updateFederationRelationship({ ...r, source: "api" });
        this.#d.log.warn({ trust_domain: r.trustDomain, error: e.message }, "federation: relationship removed from the config is still used by entries; kept as an admin API relationship (delete it with `federation delete`)");
      }
    }
  }
}

/** A held bundle's refresh hint, if it parses. */
function hintOf(held: StoredBundle, td: TrustDomain): number | undefined {
  try {
    return parseSpiffeBundle(held.document, td).bundle.refreshHintSeconds;
  } catch {
    return undefined;
  }
}
