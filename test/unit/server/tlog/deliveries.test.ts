import { create } from "@bufbuild/protobuf";
import { beforeEach, describe, expect, it } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { DeliverySchema, type Delivery } from "../../../../proto/gen/sigil/agent/v1/agent_pb.js";
import type { TlogEntryInput } from "../../../../server/datastore/index.js";
import { DeliveryLog, MAX_DELIVERIES_PER_SYNC, parseDeliveries } from "../../../../server/tlog/deliveries.js";
import { credentialEntry, toTlogInput } from "../../../../server/tlog/entry.js";
import { canonicalJson, decodeLogEntry } from "../../../../spiffe/tlog/sigil-entry.js";
import { Metrics } from "../../../../common/metrics.js";
import { createHash } from "node:crypto";

const AGENT = "spiffe://example.org/spire/agent/join_token/a";
const OTHER = "spiffe://example.org/spire/agent/join_token/b";
const ISSUED = new Date("2030-01-01T00:00:00Z");
const ISSUED_S = ISSUED.getTime() / 1000;
const TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy93In0.c2ln";
const TOKEN_SHA = createHash("sha256").update(TOKEN).digest("hex");

/** The two datastore calls the delivery log makes, over an array. */
class MemoryLogStore {
  readonly entries: TlogEntryInput[] = [];
  appended = 0;
  async findTlogEntry(key: string) {
    const index = this.entries.findIndex((e) => e.lookupKey === key);
    return index < 0 ? undefined : { index, entry: (this.entries[index] as TlogEntryInput).entry };
  }
  async recordIssuances(records: readonly unknown[], log: readonly TlogEntryInput[] = []) {
    expect(records).toEqual([]);
    const first = this.entries.length;
    this.entries.push(...log);
    return log.length > 0 ? first : undefined;
  }
  issue(kind: "x509-svid" | "jwt-svid" | "agent-svid", serial: string, agentId: string): void {
    this.entries.push(
      toTlogInput(
        credentialEntry({
          record: {
            serial, kind, spiffeId: kind === "agent-svid" ? agentId : "spiffe://example.org/w", entryId: kind === "agent-svid" ? null : "e1", agentId, caKeyId: "x509-CA-A",
            notBefore: ISSUED, notAfter: new Date(ISSUED.getTime() + 3_600_000), issuedAt: ISSUED, selectors: [], requestedBy: `agent:${agentId}`,
            ...(kind === "jwt-svid" ? { audience: ["db"] } : {}),
          },
          ...(kind === "jwt-svid" ? { jwt: TOKEN } : { certDer: Buffer.from([0x30, 0x00]) }),
        }),
      ),
    );
  }
  delivered() {
    return this.entries.filter((e) => e.lookupKey.startsWith("delivered:")).map((e) => decodeLogEntry(e.entry));
  }
}

const x509 = (serial: string, at: number): Delivery => create(DeliverySchema, { credential: { case: "serial", value: serial }, deliveredAt: BigInt(at) });
const jwt = (sha: string, at: number): Delivery => create(DeliverySchema, { credential: { case: "jwtSha256", value: sha }, deliveredAt: BigInt(at) });

describe("delivery reports (server)", () => {
  let store: MemoryLogStore;
  let lines: string[];
  let now: Date;
  let deliveries: DeliveryLog;

  beforeEach(() => {
    store = new MemoryLogStore();
    lines = [];
    now = new Date(ISSUED.getTime() + 60_000);
    const log = createLogger({ level: "debug", destination: { write: (l) => void lines.push(l) } });
    deliveries = new DeliveryLog({ tlog: { datastore: store, sink: { appended: (n) => void (store.appended += n) } }, now: () => now, log });
    store.issue("x509-svid", "1a2b", AGENT);
    store.issue("jwt-svid", "77", AGENT);
    store.issue("x509-svid", "3c4d", OTHER);
    store.issue("agent-svid", "9999", AGENT);
  });

  const warnings = (): string[] => lines.map((l) => JSON.parse(l) as { level: string; msg: string; serial?: string }).filter((l) => l.level === "warn").map((l) => `${l.serial ?? ""} ${l.msg}`);

  it("logs one delivered entry per first delivery, referencing the issuance entry", async () => {
    expect(await deliveries.report(AGENT, [x509("001A2B", ISSUED_S + 5), jwt(TOKEN_SHA.toUpperCase(), ISSUED_S + 7)])).toEqual(["logged", "logged"]);
    expect(store.delivered()).toEqual([
      { v: 1, kind: "delivered", serial: "1a2b", spiffeId: "spiffe://example.org/w", agentId: AGENT, deliveredAt: ISSUED_S + 5, issuanceIndex: 0 },
      { v: 1, kind: "delivered", jwtSha256: TOKEN_SHA, spiffeId: "spiffe://example.org/w", agentId: AGENT, deliveredAt: ISSUED_S + 7, issuanceIndex: 1 },
    ]);
    expect(store.entries.slice(4).map((e) => e.lookupKey)).toEqual(["delivered:1a2b", `delivered:jwt:${TOKEN_SHA}`]);
    expect(store.appended).toBe(2);
  });

  it("ignores a second report of the same credential, in the same call or a later one", async () => {
    expect(await deliveries.report(AGENT, [x509("1a2b", ISSUED_S + 5), x509("1a2b", ISSUED_S + 6)])).toEqual(["logged", "duplicate"]);
    expect(await deliveries.report(AGENT, [x509("1a2b", ISSUED_S + 9)])).toEqual(["duplicate"]);
    expect(store.delivered()).toHaveLength(1);
    expect(store.delivered()[0]).toMatchObject({ deliveredAt: ISSUED_S + 5 });
    expect(store.appended).toBe(1);
  });

  it("refuses, with a warning, a delivery of an SVID issued to another agent, and of the agent's own SVID", async () => {
    expect(await deliveries.report(AGENT, [x509("3c4d", ISSUED_S + 5), x509("9999", ISSUED_S + 5)])).toEqual(["foreign", "not-a-workload-svid"]);
    expect(store.delivered()).toEqual([]);
    expect(warnings()).toEqual([
      "3c4d tlog: an agent reported the delivery of an SVID issued to another agent; ignored",
      "9999 tlog: delivery reported for a credential of kind agent-svid, not a workload SVID; ignored",
    ]);
    // The agent it was issued to can still report it.
    expect(await deliveries.report(OTHER, [x509("3c4d", ISSUED_S + 5)])).toEqual(["logged"]);
  });

  it("ignores a serial the log does not hold", async () => {
    expect(await deliveries.report(AGENT, [x509("abcdef", ISSUED_S + 5)])).toEqual(["unknown"]);
    expect(store.delivered()).toEqual([]);
  });

  it("logs the first five refusals of a call one by one and counts the rest in one line", async () => {
    const serials = Array.from({ length: 40 }, (_, i) => (0x1000 + i).toString(16));
    const outcomes = await deliveries.report(AGENT, serials.map((s) => x509(s, ISSUED_S + 5)));
    expect(outcomes).toEqual(Array(40).fill("unknown"));
    const refusals = lines.filter((l) => l.includes("does not hold"));
    expect(refusals).toHaveLength(5);
    const summary = lines.filter((l) => l.includes("only the first 5 were logged one by one"));
    expect(summary).toHaveLength(1);
    expect(JSON.parse(summary[0] as string)).toMatchObject({ agent_id: AGENT, refused: { unknown: 35 } });
  });

  it("clamps a time a little in the future to now and refuses one further ahead", async () => {
    const nowS = now.getTime() / 1000;
    expect(await deliveries.report(AGENT, [x509("1a2b", nowS + 20), jwt(TOKEN_SHA, nowS + 3600)])).toEqual(["logged", "future"]);
    expect(store.delivered()).toEqual([expect.objectContaining({ serial: "1a2b", deliveredAt: nowS })]);
    expect(warnings()).toEqual([" tlog: delivery time is more than 30 s in the future; ignored"]);
  });

  it("clamps a time a little before issuance to the issue time and refuses one well before it", async () => {
    expect(await deliveries.report(AGENT, [x509("1a2b", ISSUED_S - 10), jwt(TOKEN_SHA, ISSUED_S - 600)])).toEqual(["logged", "before-issuance"]);
    expect(store.delivered()).toEqual([expect.objectContaining({ serial: "1a2b", deliveredAt: ISSUED_S })]);
  });

  it("refuses malformed reports as InvalidArgument before recording anything", async () => {
    const thrown = (d: Delivery[]): unknown => {
      try {
        void deliveries.report(AGENT, d);
      } catch (e) {
        return e;
      }
      return undefined;
    };
    // Thrown at once, so the sync can answer InvalidArgument without waiting for any recording.
    expect(thrown([x509("1a2b", ISSUED_S), x509("xyz", ISSUED_S)])).toMatchObject({ code: "ERR_INVALID_ARGUMENT", message: expect.stringMatching(/^sync authorized: deliveries\[1\]: serial must be hex/) });
    expect(thrown([jwt("abc", ISSUED_S)])).toMatchObject({ code: "ERR_INVALID_ARGUMENT", message: expect.stringContaining("deliveries[0]: jwtSha256 must be 64 hex digits") });
    expect(thrown([x509("1a2b", 0)])).toMatchObject({ message: "sync authorized: deliveries[0]: delivered_at must be a positive Unix time in seconds, got 0" });
    // A serial past 20 octets is refused without being echoed (a 3 MiB one must not reach a log line).
    const long = thrown([x509("f".repeat(41), ISSUED_S)]) as Error;
    expect(long).toMatchObject({ code: "ERR_INVALID_ARGUMENT", message: "sync authorized: deliveries[0]: serial is longer than 40 hex digits (20 octets)" });
    expect(parseDeliveries([x509("f".repeat(40), ISSUED_S)])).toHaveLength(1);
    expect(thrown([create(DeliverySchema, { deliveredAt: 5n })])).toMatchObject({ message: "sync authorized: deliveries[0]: a serial or jwt_sha256 is required" });
    await deliveries.report(AGENT, [x509("abcdef", ISSUED_S)]);
    expect(store.delivered()).toEqual([]);
  });

  it("refuses more than the per-call maximum", () => {
    const many = Array.from({ length: MAX_DELIVERIES_PER_SYNC + 1 }, (_, i) => x509((i + 1).toString(16), ISSUED_S));
    expect(() => parseDeliveries(many)).toThrow(`sync authorized: ${MAX_DELIVERIES_PER_SYNC + 1} deliveries is more than the maximum ${MAX_DELIVERIES_PER_SYNC}`);
    expect(parseDeliveries(many.slice(1))).toHaveLength(MAX_DELIVERIES_PER_SYNC);
  });

  it("checks reports but logs nothing without the transparency log", async () => {
    const off = new DeliveryLog({ now: () => now, log: createLogger({ level: "error", destination: { write: () => undefined } }) });
    expect(await off.report(AGENT, [x509("1a2b", ISSUED_S)])).toEqual(["unknown"]);
    expect(() => off.report(AGENT, [x509("-1", ISSUED_S)])).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
    expect(store.delivered()).toEqual([]);
  });

  it("skips, with a warning, a credential whose issuance entry cannot be decoded, and logs the others", async () => {
    // An entry another Sigil version wrote that this one cannot read (here: an unknown field).
    store.entries.push({ ...(store.entries[0] as TlogEntryInput), lookupKey: "serial:5e", entry: Buffer.from('{"future":1,"kind":"x509-svid","v":1}') });
    expect(await deliveries.report(AGENT, [x509("5e", ISSUED_S + 5), x509("1a2b", ISSUED_S + 5)])).toEqual(["undecodable", "logged"]);
    expect(store.delivered()).toEqual([expect.objectContaining({ serial: "1a2b" })]);
    expect(warnings()).toEqual(["5e tlog: delivery reported for a credential whose log entry cannot be decoded; ignored"]);
  });

  it("logs the deliveries of a JWT-SVID whose entry predates the audience caps", async () => {
    const sha = "ab".repeat(32);
    const old = { v: 1, kind: "jwt-svid", jwtSha256: sha, spiffeId: "spiffe://example.org/w", agentId: AGENT, authorityKeyId: "k", notBefore: ISSUED_S, notAfter: ISSUED_S + 60, issuedAt: ISSUED_S, requestedBy: `agent:${AGENT}`, audience: ["https://api.example.com/" + "a".repeat(280)] };
    store.entries.push({ ...(store.entries[0] as TlogEntryInput), lookupKey: `jwt:${sha}`, entry: Buffer.from(canonicalJson(old)) });
    expect(await deliveries.report(AGENT, [jwt(sha, ISSUED_S + 5)])).toEqual(["logged"]);
    expect(store.delivered()).toEqual([expect.objectContaining({ jwtSha256: sha, issuanceIndex: 4 })]);
  });

  it("never rejects when recording fails: the reports come back failed, logged and counted", async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    store.recordIssuances = () => Promise.reject(new Error("database is gone"));
    const failing = new DeliveryLog({ tlog: { datastore: store, sink: { appended: () => undefined } }, now: () => now, log: createLogger({ level: "debug", destination: { write: (l) => void lines.push(l) } }), metrics });
    expect(await failing.report(AGENT, [x509("1a2b", ISSUED_S + 5)])).toEqual(["failed"]);
    expect(lines.map((l) => JSON.parse(l) as { level: string; msg: string }).filter((l) => l.level === "error").map((l) => l.msg)).toEqual(["tlog: logging delivery reports failed; they are not logged"]);
    expect(await metrics.registry.getSingleMetricAsString("sigil_tlog_deliveries_dropped_total")).toContain('sigil_tlog_deliveries_dropped_total{reason="error"} 1');
    // The agent's next report is recorded once the store is back.
    store.recordIssuances = MemoryLogStore.prototype.recordIssuances;
    expect(await failing.report(AGENT, [x509("1a2b", ISSUED_S + 5)])).toEqual(["logged"]);
  });

  it("an agent flooding reports delays only itself: another agent's report is logged while its lookups hang, and its excess is dropped", async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    // A slow datastore: the flooding agent's lookups wait until released.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let stalled = 0;
    const find = store.findTlogEntry.bind(store);
    store.findTlogEntry = async (key: string) => {
      if (/^(delivered:)?serial:f|^delivered:f/.test(key)) {
        stalled++;
        await gate;
      }
      return find(key);
    };
    const bounded = new DeliveryLog({
      tlog: { datastore: store, sink: { appended: () => undefined } },
      now: () => now,
      log: createLogger({ level: "debug", destination: { write: (l) => void lines.push(l) } }),
      metrics,
      maxQueuedPerAgent: 1500,
      maxQueued: 2000,
    });
    const junk = (k: number): Delivery[] => Array.from({ length: 1000 }, (_, i) => x509(`f${(k * 1000 + i).toString(16)}`, ISSUED_S));
    const flood = [bounded.report(OTHER, junk(0)), bounded.report(OTHER, junk(1)), bounded.report(OTHER, junk(2))];
    // The honest agent's report does not wait behind the flooder's hanging lookups.
    expect(await bounded.report(AGENT, [x509("1a2b", ISSUED_S + 5)])).toEqual(["logged"]);
    expect(store.delivered()).toEqual([expect.objectContaining({ serial: "1a2b", agentId: AGENT })]);
    expect(stalled).toBe(1);
    // 1500 of the flooder's 3000 reports wait; the rest are dropped, with a warning and a count.
    expect(lines.map((l) => JSON.parse(l) as { level: string; msg: string; dropped?: number }).filter((l) => l.level === "warn").map((l) => [l.msg, l.dropped])).toEqual([
      ["tlog: too many delivery reports waiting; these are not logged", 500],
      ["tlog: too many delivery reports waiting; these are not logged", 1000],
    ]);
    expect(await metrics.registry.getSingleMetricAsString("sigil_tlog_deliveries_dropped_total")).toContain('sigil_tlog_deliveries_dropped_total{reason="queue_full"} 1500');
    // The overall bound: with 1500 waiting, a third agent gets room for 500.
    const third = bounded.report("spiffe://example.org/spire/agent/join_token/c", Array.from({ length: 600 }, (_, i) => x509(`c${i.toString(16)}`, ISSUED_S)));
    release();
    const outcomes = await Promise.all(flood);
    expect(outcomes.map((o) => o.filter((x) => x === "dropped").length)).toEqual([0, 500, 1000]);
    expect(outcomes.flat().filter((x) => x !== "dropped").every((x) => x === "unknown")).toBe(true);
    expect((await third).filter((x) => x === "dropped")).toHaveLength(100);
  });
});
