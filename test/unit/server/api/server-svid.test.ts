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
