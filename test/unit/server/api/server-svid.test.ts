/**
 * The server's own X509-SVID renews itself at half life on its own timer, not
 * only when the CA rotation job (every 10 s) calls `refresh`: with an SVID TTL
 * as short as that interval, the agent API's certificate used to expire
 * between two steps.
 */
import path from "node:path";
import { X509Certificate } from "node:crypto";
import { afterEach, describe, expect, it, vi } from "vitest";
import { ManualClock, systemClock } from "../../../../common/clock.js";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import { renewalRetryDelayMs, ServerSvidService } from "../../../../server/api/server-svid.js";
import { CaManager, type IssuedX509, type X509SvidRequest } from "../../../../server/ca/manager.js";
import { Issuer } from "../../../../server/issuance/issuer.js";
import { decodeLogEntry } from "../../../../server/tlog/entry.js";
import { TlogService } from "../../../../server/tlog/log-service.js";
import { SigilError } from "../../../../spiffe/errors.js";
import { createSqliteDatastore, type Datastore } from "../../../../server/datastore/index.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { testTempDir } from "../../../support/temp-dir.js";

const td = parseTrustDomain("example.org");
let store: Datastore | undefined;
let svid: ServerSvidService | undefined;

afterEach(async () => {
  svid?.stop();
  await store?.close();
});

describe("ServerSvidService", () => {
  it("re-issues the SVID at half life without a refresh call, and stops renewing after stop()", async () => {
    store = await createSqliteDatastore({ path: path.join(testTempDir("sigil-server-svid-"), "ds.sqlite3"), clock: systemClock });
    const ca = new CaManager({ trustDomain: td, caTtlMs: 3_600_000, caKeyType: "ec-p256", jwtKeyType: "ec-p256" }, { keyManager: createMemoryKeyManager(), store, clock: systemClock });
    await ca.start();
    svid = new ServerSvidService({ ca: { manager: ca }, serverId: parseSpiffeId("spiffe://example.org/spire/server"), ttlMs: 4_000, clock: systemClock });
    await svid.start();
    const serial = (): string => new X509Certificate(svid?.certificates.identity?.certificate ?? Buffer.alloc(0)).serialNumber;
    const first = serial();
    // Nobody calls refresh(): the service's own timer renews it before it expires.
    await vi.waitFor(() => expect(serial()).not.toBe(first), { timeout: 10_000, interval: 50 });
    // notAfter has whole-second precision, so with a 4 s TTL the renewed
    // certificate still has more than two seconds left.
    const cert = new X509Certificate(svid.certificates.identity?.certificate ?? Buffer.alloc(0));
    expect(new Date(cert.validTo).getTime()).toBeGreaterThan(Date.now() + 1_000);
    svid.stop();
    const last = serial();
    await new Promise((r) => setTimeout(r, 2_500));
    expect(serial()).toBe(last);
  });
});

describe("ServerSvidService with the transparency log", () => {
  let tlog: TlogService | undefined;
  afterEach(async () => {
    await tlog?.close();
    tlog = undefined;
  });

  async function setUp(): Promise<{ ca: CaManager; clock: ManualClock; lines: string[]; failing: { on: boolean }; issue: (req: X509SvidRequest) => Promise<IssuedX509> }> {
    store = await createSqliteDatastore({ path: path.join(testTempDir("sigil-server-svid-tlog-"), "ds.sqlite3"), clock: systemClock });
    const ds = store;
    const ca = new CaManager({ trustDomain: td, caTtlMs: 3_600_000, caKeyType: "ec-p256", jwtKeyType: "ec-p256" }, { keyManager: createMemoryKeyManager(), store: ds, clock: systemClock });
    await ca.start();
    const log = await TlogService.start({ datastore: ds, keyManager: createMemoryKeyManager(), trustDomain: td.name, serverId: "s1", now: () => new Date(), schedule: () => () => undefined });
    tlog = log;
    // A datastore whose issuance writes fail while `failing.on` (a database that went away).
    const failing = { on: false };
    const recordIssuances: Datastore["recordIssuances"] = (records, entries) =>
      failing.on ? Promise.reject(new SigilError("ERR_UNAVAILABLE", "datastore: connection lost")) : ds.recordIssuances(records, entries);
    const issuer = new Issuer({ ca, datastore: { recordIssuances }, now: () => new Date(), defaultX509TtlMs: 60_000, defaultJwtTtlMs: 60_000, transparencyLog: log });
    const lines: string[] = [];
    return {
      ca,
      clock: new ManualClock(new Date()),
      lines,
      failing,
      issue: (req) => issuer.mintX509Svid(req, "server:s1", "server-svid"),
    };
  }

  const servedLeaf = (s: ServerSvidService): X509Certificate => new X509Certificate(s.certificates.identity?.certificate ?? Buffer.alloc(0));

  async function loggedEntry(serialHex: string): Promise<ReturnType<typeof decodeLogEntry> | undefined> {
    await tlog?.checkpoint();
    const p = await tlog?.prove({ serial: serialHex });
    return p ? decodeLogEntry(p.entry) : undefined;
  }

  it("logs the first SVID as a server-svid entry before start resolves, and each renewal before it is served", async () => {
    const { ca, clock, lines, issue } = await setUp();
    svid = new ServerSvidService({ ca: { manager: ca }, serverId: parseSpiffeId("spiffe://example.org/spire/server"), ttlMs: 600_000, clock, issue, log: createLogger({ level: "debug", destination: { write: (l) => void lines.push(l) } }) });
    await svid.start();
    const first = servedLeaf(svid);
    const entry = await loggedEntry(first.serialNumber);
    expect(entry).toMatchObject({ kind: "server-svid", spiffeId: "spiffe://example.org/spire/server", requestedBy: "server:s1" });
    expect(entry && "cert" in entry ? entry.cert : undefined).toBe(first.raw.toString("base64"));
    const records = await store?.listIssuances({ serial: first.serialNumber });
    expect(records?.items.map((r) => [r.kind, r.spiffeId, r.requestedBy])).toEqual([["x509-svid", "spiffe://example.org/spire/server", "server:s1"]]);

    clock.advance(400_000); // well past half life (the CA stamps validity from the real clock)
    await svid.refresh();
    const second = servedLeaf(svid);
    expect(second.serialNumber).not.toBe(first.serialNumber);
    expect(await loggedEntry(second.serialNumber)).toMatchObject({ kind: "server-svid" });
  });

  it("keeps serving the current SVID while renewals cannot be logged, reports it, and retries until one is", async () => {
    const { ca, clock, lines, failing, issue } = await setUp();
    svid = new ServerSvidService({ ca: { manager: ca }, serverId: parseSpiffeId("spiffe://example.org/spire/server"), ttlMs: 600_000, clock, issue, log: createLogger({ level: "debug", destination: { write: (l) => void lines.push(l) } }) });
    await svid.start();
    const first = servedLeaf(svid).serialNumber;
    failing.on = true;
    clock.advance(400_000);
    await svid.refresh(); // resolves: the failure is the service's to retry
    expect(servedLeaf(svid).serialNumber).toBe(first);
    const reported = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === "server svid: cannot renew; the current SVID stays in service");
    expect(reported).toMatchObject({ level: "error", failures: 1, retry_in_ms: 1000, spiffe_id: "spiffe://example.org/spire/server" });
    failing.on = false;
    // The retry timer (not a refresh call) issues and logs the next one.
    await vi.waitFor(() => expect(servedLeaf(svid as ServerSvidService).serialNumber).not.toBe(first), { timeout: 10_000, interval: 50 });
    expect(await loggedEntry(servedLeaf(svid).serialNumber)).toMatchObject({ kind: "server-svid" });
  });

  it("does not start when the first SVID cannot be logged", async () => {
    const { ca, clock, failing, issue } = await setUp();
    failing.on = true;
    svid = new ServerSvidService({ ca: { manager: ca }, serverId: parseSpiffeId("spiffe://example.org/spire/server"), ttlMs: 600_000, clock, issue });
    await expect(svid.start()).rejects.toThrow("datastore: connection lost");
    expect(svid.certificates.identity).toBeNull();
  });
});

describe("ServerSvidService renewal failures", () => {
  /** A started CA and an `issue` hook that signs, fails, or hangs as the test says, counting calls. */
  async function setUp() {
    store = await createSqliteDatastore({ path: path.join(testTempDir("sigil-server-svid-fail-"), "ds.sqlite3"), clock: systemClock });
    const ca = new CaManager({ trustDomain: td, caTtlMs: 3_600_000, caKeyType: "ec-p256", jwtKeyType: "ec-p256" }, { keyManager: createMemoryKeyManager(), store, clock: systemClock });
    await ca.start();
    const mode = { now: "sign" as "sign" | "fail" | "hang", calls: 0 };
    const clock = new ManualClock(new Date());
    const issue = (req: X509SvidRequest): Promise<IssuedX509> => {
      mode.calls++;
      if (mode.now === "fail") return Promise.reject(new SigilError("ERR_UNAVAILABLE", "datastore: connection lost"));
      if (mode.now === "hang") return new Promise<IssuedX509>(() => undefined);
      // The CA stamps validity from the real clock: lengthen the TTL by how far the test moved the service's clock.
      return Promise.resolve(ca.signX509Svid({ ...req, ttlMs: req.ttlMs + Math.max(0, clock.now().getTime() - Date.now()) }));
    };
    return { ca, mode, issue, clock };
  }

  it("gives up on an issue call that hangs (a stuck datastore) after issueTimeoutMs", async () => {
    const { ca, mode, issue, clock } = await setUp();
    mode.now = "hang";
    svid = new ServerSvidService({ ca: { manager: ca }, serverId: parseSpiffeId("spiffe://example.org/spire/server"), ttlMs: 600_000, clock, issue, issueTimeoutMs: 50 });
    await expect(svid.start()).rejects.toThrow("server svid: issuing and recording the SVID took more than 50 ms");
  });

  it("leaves retries to the backoff: refresh calls (the rotation tick) during it do not issue", async () => {
    const { ca, mode, issue, clock } = await setUp();
    svid = new ServerSvidService({ ca: { manager: ca }, serverId: parseSpiffeId("spiffe://example.org/spire/server"), ttlMs: 600_000, clock, issue });
    await svid.start();
    mode.now = "fail";
    clock.advance(400_000);
    await svid.refresh();
    const afterFailure = mode.calls;
    // The retry is due 1 s later on the service's clock, which does not move here.
    for (let i = 0; i < 5; i++) await svid.refresh();
    expect(mode.calls).toBe(afterFailure);
    mode.now = "sign";
    clock.advance(1_001);
    await svid.refresh();
    expect(mode.calls).toBe(afterFailure + 1);
  });

  it("reports an expired served SVID (readiness, onExpiryChange, the expiry gauge) until a renewal succeeds", async () => {
    const { ca, mode, issue, clock } = await setUp();
    const changes: boolean[] = [];
    const metrics = new Metrics({ defaultMetrics: false });
    svid = new ServerSvidService({ ca: { manager: ca }, serverId: parseSpiffeId("spiffe://example.org/spire/server"), ttlMs: 600_000, clock, issue, metrics, onExpiryChange: (e) => changes.push(e) });
    await svid.start();
    const notAfter = new Date(servedNotAfter(svid));
    expect(await metrics.registry.getSingleMetricAsString("sigil_server_svid_expiry_timestamp_seconds")).toContain(`sigil_server_svid_expiry_timestamp_seconds ${notAfter.getTime() / 1000}`);
    expect(svid.readiness()).toEqual([]);
    mode.now = "fail";
    clock.advance(700_000); // past notAfter
    await svid.refresh();
    expect(changes).toEqual([true]);
    expect(svid.readiness()).toEqual([expect.stringContaining("server svid: the served SVID expired at")]);
    mode.now = "sign";
    clock.advance(60_000);
    await svid.refresh();
    expect(changes).toEqual([true, false]);
    expect(svid.readiness()).toEqual([]);
  });
});

function servedNotAfter(s: ServerSvidService): number {
  return Date.parse(new X509Certificate(s.certificates.identity?.certificate ?? Buffer.alloc(0)).validTo);
}

describe("renewalRetryDelayMs", () => {
  it.each([
    [1, 1_000],
    [2, 2_000],
    [5, 16_000],
    [6, 30_000],
    [100, 30_000],
  ])("after %i failures waits %i ms", (failures, ms) => {
    expect(renewalRetryDelayMs(failures)).toBe(ms);
  });
});
