/**
 * Pick-up reporting, agent side: the first time each SVID is handed to a
 * workload (an X509-SVID by its serial, a JWT-SVID by the SHA-256 of the
 * token), over any API on the Workload Endpoint. The sync loop sends the
 * pending deliveries with its next SyncAuthorized call and forgets them once
 * that call succeeds; the server logs them (`server/tlog/deliveries.ts`).
 *
 * Memory is bounded: at most {@link MAX_PENDING_DELIVERIES} wait for the
 * server (later first deliveries are dropped, counted and logged, while it is
 * away that long), and at most {@link MAX_REMEMBERED_DELIVERIES} credentials
 * are remembered as already reported (oldest forgotten first; a credential
 * reported again is a duplicate the server ignores). An X509-SVID object is
 * recognised without decoding its certificate again, so a stream pushing the
 * same SVIDs costs a set lookup each.
 */
import { createHash } from "node:crypto";
import type { Clock } from "../../common/clock.js";
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import { decodeCertificate } from "../../spiffe/x509/decode-certificate.js";
import { canonicalSerialHex } from "../../spiffe/x509/serial.js";
import type { CachedX509Svid } from "./types.js";

/** Most first deliveries waiting to be reported. */
export const MAX_PENDING_DELIVERIES = 10_000;
/** Most credentials remembered as already delivered. */
export const MAX_REMEMBERED_DELIVERIES = 50_000;
/** Most deliveries sent with one sync (the server takes at most 1,000). */
export const DEFAULT_DELIVERIES_PER_SYNC = 500;

/** What the endpoints tell: credentials handed to a workload now. */
export interface DeliveryRecorder {
  /** X509-SVIDs about to be sent to a workload. */
  x509(svids: Iterable<CachedX509Svid>): void;
  /** A JWT-SVID (compact token) about to be sent to a workload. */
  jwt(token: string): void;
}

/** One first delivery waiting to be reported. */
export interface PendingDelivery {
  /** Lower-case hex serial (X509-SVID) or SHA-256 of the token (JWT-SVID). */
  readonly credential: { readonly serial: string } | { readonly jwtSha256: string };
  readonly deliveredAt: Date;
}

/** Options of {@link DeliveryTracker}. */
export interface DeliveryTrackerOptions {
  readonly clock: Clock;
  readonly log?: Logger | undefined;
  /** Where `sigil_agent_deliveries_pending` and `sigil_agent_deliveries_dropped_total` are registered. */
  readonly metrics?: Metrics | undefined;
  /** Default {@link MAX_PENDING_DELIVERIES}. */
  readonly maxPending?: number | undefined;
  /** Default {@link MAX_REMEMBERED_DELIVERIES}. */
  readonly maxRemembered?: number | undefined;
}

/** See the module comment. */
export class DeliveryTracker implements DeliveryRecorder {
  readonly #o: DeliveryTrackerOptions;
  /** SVID objects already seen (the cache replaces an SVID's object when it rotates). */
  readonly #seenSvids = new WeakSet<CachedX509Svid>();
  /** Keys of credentials delivered (pending or reported), oldest first. */
  readonly #remembered = new Set<string>();
  readonly #pending = new Map<string, PendingDelivery>();
  #dropped = 0;
  readonly #pendingGauge: { set(n: number): void } | undefined;
  readonly #droppedCounter: { inc(): void } | undefined;

  constructor(options: DeliveryTrackerOptions) {
    this.#o = options;
    this.#pendingGauge = options.metrics?.gauge({ name: "sigil_agent_deliveries_pending", help: "First deliveries of SVIDs to workloads waiting to be reported to the server." });
    this.#droppedCounter = options.metrics?.counter({
      name: "sigil_agent_deliveries_dropped_total",
      help: "First deliveries of SVIDs to workloads never reported because too many waited for the server (those SVIDs look never picked up).",
    });
  }

  x509(svids: Iterable<CachedX509Svid>): void {
    for (const svid of svids) {
      if (this.#seenSvids.has(svid)) continue;
      this.#seenSvids.add(svid);
      const leaf = svid.chain[0];
      if (leaf === undefined) continue;
      let serial: string;
      try {
        serial = canonicalSerialHex(Buffer.from(decodeCertificate(leaf).serial).toString("hex"));
      } catch (e) {
        this.#o.log?.warn({ err: e }, "deliveries: cannot read the serial of an SVID handed out; its delivery is not reported");
        continue;
      }
      this.#add(`serial:${serial}`, { serial });
    }
  }

  jwt(token: string): void {
    const jwtSha256 = createHash("sha256").update(token).digest("hex");
    this.#add(`jwt:${jwtSha256}`, { jwtSha256 });
  }

  /** Up to `max` pending deliveries, oldest first (they stay pending until {@link acknowledge}d). */
  pending(max: number = DEFAULT_DELIVERIES_PER_SYNC): PendingDelivery[] {
    const out: PendingDelivery[] = [];
    for (const d of this.#pending.values()) {
      if (out.length >= max) break;
      out.push(d);
    }
    return out;
  }

  /** Forgets deliveries the server has taken (the sync that carried them succeeded). */
  acknowledge(reported: readonly PendingDelivery[]): void {
    for (const d of reported) this.#pending.delete(keyOf(d.credential));
    this.#pendingGauge?.set(this.#pending.size);
    if (this.#dropped > 0 && this.#pending.size === 0) {
      this.#o.log?.warn({ dropped: this.#dropped }, "deliveries: first deliveries were not reported: too many waited for the server");
      this.#dropped = 0;
    }
  }

  /** Deliveries waiting to be reported. */
  get pendingCount(): number {
    return this.#pending.size;
  }

  /** First deliveries dropped since the pending ones were last all reported. */
  get dropped(): number {
    return this.#dropped;
  }

  #add(key: string, credential: PendingDelivery["credential"]): void {
    if (this.#remembered.has(key) || this.#pending.has(key)) return;
    if (this.#pending.size >= (this.#o.maxPending ?? MAX_PENDING_DELIVERIES)) {
      this.#dropped++;
      this.#droppedCounter?.inc();
      return;
    }
    this.#remembered.add(key);
    if (this.#remembered.size > (this.#o.maxRemembered ?? MAX_REMEMBERED_DELIVERIES)) this.#remembered.delete(this.#remembered.values().next().value as string);
    this.#pending.set(key, { credential, deliveredAt: this.#o.clock.now() });
    this.#pendingGauge?.set(this.#pending.size);
  }
}

function keyOf(credential: PendingDelivery["credential"]): string {
  return "serial" in credential ? `serial:${credential.serial}` : `jwt:${credential.jwtSha256}`;
}
