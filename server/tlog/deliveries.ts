/**
 * Pick-up reporting, server side. An agent reports in its SyncAuthorized
 * call when it first handed each SVID to a workload; for each first delivery
 * of a credential the log holds, this module appends one `delivered` entry
 * referencing the credential's own entry (docs/transparency.md). A credential
 * with an issuance entry and no `delivered` entry was never picked up.
 *
 * A report is believed only as far as the log backs it:
 * - the credential must be an `x509-svid` or `jwt-svid` entry issued to the
 *   reporting agent: an agent cannot log deliveries of another agent's SVIDs
 *   (nor of ones the log does not hold);
 * - `delivered_at` is clamped into [issuedAt, now]; more than
 *   {@link DELIVERY_CLOCK_SKEW_S} outside it, the report is ignored;
 * - a credential already logged as delivered is not logged again.
 * - a credential whose issuance entry cannot be decoded (a log written by
 *   another Sigil version) is skipped with a warning.
 * Refused reports are logged (a foreign serial as a warning) and otherwise
 * ignored: the sync itself goes on. A malformed report (a bad serial or
 * digest, no time) or more than {@link MAX_DELIVERIES_PER_SYNC} of them makes
 * the whole call InvalidArgument before anything is recorded.
 *
 * Recording is off the sync's path: each agent's reports are recorded one
 * call after another (so two reports of one credential never both pass the
 * duplicate check: only the agent it was issued to can log it), agents in
 * parallel, and the sync does not wait for it. At most
 * {@link MAX_QUEUED_DELIVERIES_PER_AGENT} reports wait per agent and
 * {@link MAX_QUEUED_DELIVERIES} in all; more are dropped (a warning and
 * `sigil_tlog_deliveries_dropped_total{reason="queue_full"}`), and a
 * recording that fails is logged and counted (`reason="error"`), never
 * failing a sync. An agent flooding reports delays only its own.
 *
 * Without the transparency log the reports are checked and dropped.
 */
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import { SigilError } from "../../spiffe/errors.js";
import { credentialLookupKey, decodeLogEntry, deliveredLookupKey, type LogDeliveredEntry } from "../../spiffe/tlog/sigil-entry.js";
import type { Delivery } from "../../proto/gen/sigil/agent/v1/agent_pb.js";
import type { Datastore } from "../datastore/index.js";
import { toTlogInput } from "./entry.js";

/** Most deliveries one SyncAuthorized call may report. */
export const MAX_DELIVERIES_PER_SYNC = 1000;
/** Most reports waiting to be recorded for one agent (two syncs' worth); more are dropped. */
export const MAX_QUEUED_DELIVERIES_PER_AGENT = 2 * MAX_DELIVERIES_PER_SYNC;
/** Most reports waiting to be recorded for all agents together; more are dropped. */
export const MAX_QUEUED_DELIVERIES = 20 * MAX_DELIVERIES_PER_SYNC;
/** How far (seconds) a reported time may lie after now or before issuance and still be clamped rather than refused. */
export const DELIVERY_CLOCK_SKEW_S = 30;

/** One checked report: which credential, and when (Unix seconds). */
export interface DeliveryReport {
  readonly credential: { readonly serial: string } | { readonly jwtSha256: string };
  readonly deliveredAt: number;
}

/** What became of one report. */
export type DeliveryOutcome =
  | "logged"
  | "duplicate"
  | "unknown"
  | "not-a-workload-svid"
  | "foreign"
  | "future"
  | "before-issuance"
  /** The credential's issuance entry cannot be decoded. */
  | "undecodable"
  /** Not recorded: too many reports were waiting. */
  | "dropped"
  /** Not recorded: recording failed (logged). */
  | "failed";

/** Dependencies of {@link DeliveryLog}. */
export interface DeliveryLogDeps {
  /** Where entries are looked up and appended, and who is told of appended ones; unset without the transparency log. */
  readonly tlog?:
    | {
        readonly datastore: Pick<Datastore, "findTlogEntry" | "recordIssuances">;
        readonly sink: { appended(count: number): void };
      }
    | undefined;
  readonly now: () => Date;
  readonly log: Logger;
  /** Where dropped reports are counted; unset: not counted. */
  readonly metrics?: Metrics | undefined;
  /** Most reports waiting per agent (default {@link MAX_QUEUED_DELIVERIES_PER_AGENT}). */
  readonly maxQueuedPerAgent?: number | undefined;
  /** Most reports waiting in all (default {@link MAX_QUEUED_DELIVERIES}). */
  readonly maxQueued?: number | undefined;
}

const bad = (message: string): SigilError => new SigilError("ERR_INVALID_ARGUMENT", `sync authorized: ${message}`);

/**
 * Checks the wire reports of one call and puts them in canonical form.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the first bad report, or for too many.
 */
/** Refused reports of one call logged one by one; the rest are counted in one line. */
const MAX_REFUSALS_LOGGED_PER_CALL = 5;

/** The longest serial a report may name: 20 octets (RFC 5280), in hex. */
const MAX_SERIAL_HEX_DIGITS = 40;

export function parseDeliveries(deliveries: readonly Delivery[]): DeliveryReport[] {
  if (deliveries.length > MAX_DELIVERIES_PER_SYNC) throw bad(`${deliveries.length} deliveries is more than the maximum ${MAX_DELIVERIES_PER_SYNC}`);
  return deliveries.map((d, i) => {
    const c = d.credential;
    if (c.case === undefined) throw bad(`deliveries[${i}]: a serial or jwt_sha256 is required`);
    // Checked before anything reads or logs it: a certificate serial is at most 20 octets (RFC 5280 4.1.2.2).
    if (c.case === "serial" && c.value.length > MAX_SERIAL_HEX_DIGITS) throw bad(`deliveries[${i}]: serial is longer than ${MAX_SERIAL_HEX_DIGITS} hex digits (20 octets)`);
    const credential = c.case === "serial" ? { serial: c.value } : { jwtSha256: c.value };
    // The same spelling rules as the log's lookups: serial hex, or a 64-digit digest.
    const key = ((): string => {
      try {
        return credentialLookupKey(credential);
      } catch (e) {
        throw new SigilError("ERR_INVALID_ARGUMENT", `sync authorized: deliveries[${i}]: ${(e as Error).message.replace(/^tlog: /, "")}`, { cause: e });
      }
    })();
    if (d.deliveredAt <= 0n || d.deliveredAt > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`deliveries[${i}]: delivered_at must be a positive Unix time in seconds, got ${d.deliveredAt}`);
    const canonical = key.startsWith("serial:") ? { serial: key.slice("serial:".length) } : { jwtSha256: key.slice("jwt:".length) };
    return { credential: canonical, deliveredAt: Number(d.deliveredAt) };
  });
}

/** One agent's recordings: the last one queued, and how many reports wait in them. */
interface AgentQueue {
  tail: Promise<unknown>;
  queued: number;
}

/** See the module comment. */
export class DeliveryLog {
  readonly #d: DeliveryLogDeps;
  readonly #maxPerAgent: number;
  readonly #max: number;
  readonly #agents = new Map<string, AgentQueue>();
  #queued = 0;
  readonly #dropped: { inc(labels: { reason: string }, n: number): void } | undefined;

  constructor(deps: DeliveryLogDeps) {
    this.#d = deps;
    this.#maxPerAgent = deps.maxQueuedPerAgent ?? MAX_QUEUED_DELIVERIES_PER_AGENT;
    this.#max = deps.maxQueued ?? MAX_QUEUED_DELIVERIES;
    this.#dropped = deps.metrics?.counter({
      name: "sigil_tlog_deliveries_dropped_total",
      help: "Pick-up reports of agents not recorded in the transparency log: too many were waiting (queue_full) or recording failed (error).",
      labelNames: ["reason"],
    });
  }

  /**
   * Checks an agent's wire reports at once and queues the logging of the
   * first deliveries among them behind the agent's earlier reports. The
   * promise gives the outcome of each, in order, once recorded; it never
   * rejects (a failure is logged, and its reports are `failed`), so a caller
   * need not wait for it.
   *
   * @throws SigilError `ERR_INVALID_ARGUMENT` for malformed reports (nothing is queued then).
   */
  report(agentId: string, deliveries: readonly Delivery[]): Promise<DeliveryOutcome[]> {
    if (deliveries.length === 0) return Promise.resolve([]);
    const reports = parseDeliveries(deliveries);
    const log = this.#d.log;
    const q = this.#agents.get(agentId) ?? { tail: Promise.resolve(), queued: 0 };
    const room = Math.max(0, Math.min(this.#maxPerAgent - q.queued, this.#max - this.#queued));
    const kept = reports.slice(0, room);
    const dropped: DeliveryOutcome[] = reports.slice(room).map(() => "dropped");
    if (dropped.length > 0) {
      log.warn({ agent_id: agentId, dropped: dropped.length, agent_queued: q.queued, queued: this.#queued }, "tlog: too many delivery reports waiting; these are not logged");
      this.#dropped?.inc({ reason: "queue_full" }, dropped.length);
    }
    if (kept.length === 0) return Promise.resolve(dropped);
    q.queued += kept.length;
    this.#queued += kept.length;
    this.#agents.set(agentId, q);
    const run = q.tail
      .then(() => this.record(agentId, kept))
      .catch((e: unknown): DeliveryOutcome[] => {
        log.error({ err: e, agent_id: agentId, reports: kept.length }, "tlog: logging delivery reports failed; they are not logged");
        this.#dropped?.inc({ reason: "error" }, kept.length);
        return kept.map(() => "failed");
      })
      .finally(() => {
        q.queued -= kept.length;
        this.#queued -= kept.length;
        if (q.queued === 0 && this.#agents.get(agentId) === q) this.#agents.delete(agentId);
      });
    q.tail = run;
    return run.then((outcomes) => [...outcomes, ...dropped]);
  }

  /** Logs the first deliveries among checked reports (see the module comment); the outcome of each, in order. */
  async record(agentId: string, reports: readonly DeliveryReport[]): Promise<DeliveryOutcome[]> {
    const tlog = this.#d.tlog;
    if (tlog === undefined) return reports.map(() => "unknown");
    const log = this.#d.log;
    const nowS = Math.floor(this.#d.now().getTime() / 1000);
    const entries: LogDeliveredEntry[] = [];
    const seen = new Set<string>();
    const outcomes: DeliveryOutcome[] = [];
    // The first refusals of a call are logged one by one; the rest only counted, in one line at the end.
    const unlogged = new Map<DeliveryOutcome, number>();
    let refusalsLogged = 0;
    for (const r of reports) {
      const name = "serial" in r.credential ? { serial: r.credential.serial } : { jwt_sha256: r.credential.jwtSha256 };
      const refuse = (outcome: DeliveryOutcome, message: string, fields: Record<string, unknown> = {}): void => {
        outcomes.push(outcome);
        if (outcome !== "duplicate" && refusalsLogged >= MAX_REFUSALS_LOGGED_PER_CALL) {
          unlogged.set(outcome, (unlogged.get(outcome) ?? 0) + 1);
          return;
        }
        if (outcome !== "duplicate") refusalsLogged++;
        if (outcome === "duplicate") log.debug({ agent_id: agentId, ...name, ...fields }, message);
        else if (outcome === "unknown") log.info({ agent_id: agentId, ...name, ...fields }, message);
        else log.warn({ agent_id: agentId, ...name, ...fields }, message);
      };
      const deliveredKey = deliveredLookupKey(r.credential);
      if (seen.has(deliveredKey) || (await tlog.datastore.findTlogEntry(deliveredKey)) !== undefined) {
        refuse("duplicate", "tlog: delivery already logged; ignored");
        continue;
      }
      const issued = await tlog.datastore.findTlogEntry(credentialLookupKey(r.credential));
      if (issued === undefined) {
        refuse("unknown", "tlog: delivery reported for a credential the log does not hold; ignored");
        continue;
      }
      let entry;
      try {
        entry = decodeLogEntry(issued.entry);
      } catch (e) {
        refuse("undecodable", "tlog: delivery reported for a credential whose log entry cannot be decoded; ignored", { issuance_index: issued.index, err: e });
        continue;
      }
      if (entry.kind !== "x509-svid" && entry.kind !== "jwt-svid") {
        refuse("not-a-workload-svid", `tlog: delivery reported for a credential of kind ${entry.kind}, not a workload SVID; ignored`, { issuance_index: issued.index });
        continue;
      }
      if (entry.agentId !== agentId) {
        refuse("foreign", "tlog: an agent reported the delivery of an SVID issued to another agent; ignored", { issued_to: entry.agentId ?? null, issuance_index: issued.index });
        continue;
      }
      if (r.deliveredAt > nowS + DELIVERY_CLOCK_SKEW_S) {
        refuse("future", `tlog: delivery time is more than ${DELIVERY_CLOCK_SKEW_S} s in the future; ignored`, { delivered_at: r.deliveredAt, now: nowS });
        continue;
      }
      if (r.deliveredAt < entry.issuedAt - DELIVERY_CLOCK_SKEW_S) {
        refuse("before-issuance", `tlog: delivery time is more than ${DELIVERY_CLOCK_SKEW_S} s before the credential was issued; ignored`, { delivered_at: r.deliveredAt, issued_at: entry.issuedAt });
        continue;
      }
      seen.add(deliveredKey);
      outcomes.push("logged");
      entries.push({
        v: 1,
        kind: "delivered",
        ...r.credential,
        spiffeId: entry.spiffeId,
        agentId,
        // Clocks within the skew: the time is kept inside [issuedAt, now].
        deliveredAt: Math.max(entry.issuedAt, Math.min(r.deliveredAt, nowS)),
        issuanceIndex: issued.index,
      });
    }
    if (unlogged.size > 0) {
      log.warn({ agent_id: agentId, refused: Object.fromEntries(unlogged) }, `tlog: more delivery reports of this call refused; only the first ${MAX_REFUSALS_LOGGED_PER_CALL} were logged one by one`);
    }
    if (entries.length > 0) {
      await tlog.datastore.recordIssuances([], entries.map(toTlogInput));
      tlog.sink.appended(entries.length);
      log.debug({ agent_id: agentId, logged: entries.length }, "tlog: deliveries logged");
    }
    return outcomes;
  }
}

/** What the log says of an X509-SVID's pick-up. */
export interface Pickup {
  readonly pickedUp: boolean;
  /** When a workload first got it, when picked up. */
  readonly deliveredAt?: Date | undefined;
}

/**
 * The pick-up of each X509-SVID by serial, from its `delivered` entry (one
 * indexed lookup each): for the inventory's "never picked up".
 */
export async function pickupsOf(datastore: Pick<Datastore, "findTlogEntry">, serials: readonly string[]): Promise<Map<string, Pickup>> {
  const out = new Map<string, Pickup>();
  for (const serial of serials) {
    const found = await datastore.findTlogEntry(deliveredLookupKey({ serial }));
    const entry = found === undefined ? undefined : decodeLogEntry(found.entry);
    out.set(serial, entry?.kind === "delivered" ? { pickedUp: true, deliveredAt: new Date(entry.deliveredAt * 1000) } : { pickedUp: false });
  }
  return out;
}
