import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import type { KeyManager } from "../../../../plugins/keymanager/types.js";
import type { Datastore } from "../../../../server/datastore/index.js";
import { TlogService, type TlogServiceDeps } from "../../../../server/tlog/log-service.js";
import { decodeLogEntry } from "../../../../server/tlog/entry.js";
import { openCheckpoint } from "../../../../spiffe/tlog/checkpoint.js";
import { leafHash } from "../../../../spiffe/tlog/hash.js";
import { parseVerifierKey } from "../../../../spiffe/tlog/note.js";
import { verifyConsistency, verifyInclusion } from "../../../../spiffe/tlog/proof.js";
import { TileReader } from "../../../../spiffe/tlog/tiles.js";
import { verifyLog } from "../../../../spiffe/tlog/verify.js";
import { closeTempDatastore, openTempDatastore, rejection, type TempDatastore } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");

/** A manual timer: `fire()` runs the scheduled checkpoint tick. */
class ManualSchedule {
  fn: (() => void) | undefined;
  readonly schedule = (fn: () => void): (() => void) => {
    this.fn = fn;
    return () => (this.fn = undefined);
  };
  fire(): void {
    const f = this.fn;
    this.fn = undefined;
    f?.();
  }
}

const credential = (serial: string) => ({
  record: {
    serial, kind: "x509-svid" as const, spiffeId: "spiffe://example.org/w", entryId: "e1", agentId: "spiffe://example.org/spire/agent/x", caKeyId: "x509-CA-A",
    notBefore: T0, notAfter: new Date(T0.getTime() + 3_600_000), issuedAt: T0, selectors: ["unix:uid:1"], requestedBy: "agent:spiffe://example.org/spire/agent/x",
  },
  certDer: Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01]),
  publicKeyDer: Buffer.from("spki"),
});

describe("transparency log service", () => {
  let temp: TempDatastore;
  let ds: Datastore;
  let km: KeyManager;
  let timer: ManualSchedule;
  const services: TlogService[] = [];

  beforeEach(async () => {
    temp = await openTempDatastore("tlog-svc", T0);
    ds = temp.ds;
    km = createMemoryKeyManager();
    timer = new ManualSchedule();
  });
  afterEach(async () => {
    for (const s of services.splice(0)) await s.close();
    await closeTempDatastore(ds, temp.dir);
  });

  async function start(over: Partial<TlogServiceDeps> = {}): Promise<TlogService> {
    const s = await TlogService.start({ datastore: ds, keyManager: km, trustDomain: "example.org", serverId: "s1", now: () => temp.clock.now(), schedule: timer.schedule, checkpointBatch: 5, ...over });
    services.push(s);
    return s;
  }

  async function issue(s: TlogService, serials: string[]): Promise<void> {
    const creds = serials.map(credential);
    await ds.recordIssuances(creds.map((c) => c.record), s.credentialEntries(creds));
    s.appended(creds.length);
  }

  it("signs checkpoints on its cadence and proves inclusion against them", async () => {
    const s = await start();
    expect(s.latestCheckpoint()?.size).toBe(0);
    await issue(s, ["a1", "a2"]);
    expect(s.latestCheckpoint()?.size).toBe(0); // below the batch: waits for the tick
    expect(await s.prove({ serial: "a1" })).toBeUndefined();
    timer.fire();
    await s.checkpoint();
    const cp = s.latestCheckpoint();
    expect(cp?.size).toBe(2);
    const verifiers = (await s.verifierKeys()).map(parseVerifierKey);
    const opened = openCheckpoint(cp?.note ?? "", verifiers);
    expect(opened.checkpoint.origin).toBe("example.org/sigil/issuance");
    const p = await s.prove({ serial: "A2" });
    expect(p?.index).toBe(1);
    verifyInclusion(1, 2, leafHash(p?.entry ?? new Uint8Array()), p?.proof ?? [], opened.checkpoint.rootHash);
    const e = decodeLogEntry(p?.entry ?? new Uint8Array());
    expect(e).toMatchObject({ kind: "x509-svid", serial: "a2", spiffeId: "spiffe://example.org/w", cert: "MAMCAQE=", authorityKeyId: "x509-CA-A", notBefore: T0.getTime() / 1000 });
  });

  it("checkpoints at once when a full batch is waiting", async () => {
    const s = await start();
    await issue(s, ["b1", "b2", "b3", "b4", "b5"]);
    await s.checkpoint(); // waits for the batch-triggered one, then finds nothing new
    expect(s.latestCheckpoint()?.size).toBe(5);
  });

  it("serves tiles and entry bundles that a tlog-tiles verifier accepts", async () => {
    const s = await start();
    for (let i = 0; i < 3; i++) await issue(s, Array.from({ length: 200 }, (_, j) => (0x1000 + i * 200 + j).toString(16)));
    await s.checkpoint();
    expect(s.latestCheckpoint()?.size).toBe(600);
    expect((await s.resource("tile/0/000"))?.immutable).toBe(true);
    expect((await s.resource("tile/0/002.p/88"))?.immutable).toBe(false);
    expect(await s.resource("tile/0/003")).toBeUndefined();
    expect((await s.resource("tile/entries/001"))?.immutable).toBe(true);
    await rejection(s.resource("tile/x/1"), "ERR_INVALID_ARGUMENT", "tlog: malformed resource path");
    const fetch = async (path: string) => {
      const r = await s.resource(path);
      if (!r) throw new Error(`no ${path}`);
      return r.body;
    };
    const verifiers = (await s.verifierKeys()).map(parseVerifierKey);
    let seen = 0;
    const result = await verifyLog({ fetch, verifiers, origin: s.origin, onEntry: () => void seen++ });
    expect(result.checkpoint.size).toBe(600);
    expect(seen).toBe(600);
  });

  it("answers a partial bundle of a bundle full by now as a slice of the full one, and keeps full bundles within a byte budget", async () => {
    let reads = 0;
    const counted = new Proxy(ds, {
      get(target, key) {
        const v: unknown = Reflect.get(target, key, target);
        if (typeof v !== "function") return v;
        return (...args: unknown[]) => {
          if (key === "readTlogEntries") reads++;
          return (v as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
    const s = await start({ datastore: counted, checkpointBatch: 100_000 });
    await issue(s, Array.from({ length: 100 }, (_, j) => (0x1000 + j).toString(16)));
    await s.checkpoint();
    const early = await s.resource("tile/entries/000.p/100");
    await issue(s, Array.from({ length: 700 }, (_, j) => (0x2000 + j).toString(16)));
    await s.checkpoint();
    expect(s.latestCheckpoint()?.size).toBe(800);
    reads = 0;
    // What a client that verified the checkpoint of size 100 still asks for: the same bytes, now cut from the full bundle.
    const late = await s.resource("tile/entries/000.p/100");
    expect(Buffer.from(late?.body ?? []).equals(Buffer.from(early?.body ?? []))).toBe(true);
    expect(late?.immutable).toBe(false);
    const full = await s.resource("tile/entries/000");
    expect(Buffer.from(full?.body ?? []).subarray(0, late?.body.length).equals(Buffer.from(late?.body ?? []))).toBe(true);
    // Every width of every full bundle: one read per bundle, the rest sliced from memory.
    for (const n of ["000", "001", "002"]) for (const w of [1, 17, 255]) expect((await s.resource(`tile/entries/${n}.p/${w}`))?.body.length).toBeGreaterThan(0);
    expect(reads).toBe(3);
    expect((await s.resource("tile/entries/003.p/32"))?.body).toBeDefined();
    expect(await s.resource("tile/entries/003.p/33")).toBeUndefined();

    // A budget of about two bundles: the least recently used one is read again.
    const small = await start({ datastore: counted, checkpointBatch: 100_000, maxCachedBundleBytes: 2 * (full?.body.length ?? 0) + 10 });
    reads = 0;
    for (const n of ["000", "001", "002", "001", "002"]) await small.resource(`tile/entries/${n}`);
    expect(reads).toBe(3);
    await small.resource("tile/entries/000");
    expect(reads).toBe(4);
  });

  it("rebuilds the tree after a restart and extends the last checkpoint", async () => {
    const s = await start();
    await issue(s, ["c1", "c2", "c3"]);
    await s.checkpoint();
    const before = s.latestCheckpoint();
    await s.close();
    services.length = 0;
    await ds.recordIssuances([credential("c4").record], s.credentialEntries([credential("c4")]));
    km = createMemoryKeyManager(); // a restarted memory key manager holds no key
    const again = await start();
    // The memory key manager lost the key: a new one signs, the old stays listed.
    const keys = await ds.listTlogKeys();
    expect(keys.map((k) => [k.keyId, k.retiredAt === null])).toEqual([["tlog-1", false], ["tlog-2", true]]);
    const after = again.latestCheckpoint();
    expect([before?.size, after?.size]).toEqual([3, 4]);
    const tiles = new TileReader(async (path) => (await again.resource(path))?.body ?? Promise.reject(new Error(path)), 4);
    verifyConsistency(3, 4, await tiles.consistencyProof(3), before?.rootHash ?? new Uint8Array(), after?.rootHash ?? new Uint8Array());
  });

  it("refuses to start on a rewritten entry or a truncated log, naming both roots", async () => {
    const s = await start();
    await issue(s, ["d1", "d2", "d3"]);
    await s.checkpoint();
    await s.close();
    services.length = 0;
    const db = new Database(temp.path);
    db.prepare("UPDATE tlog_entries SET entry = ? WHERE idx = 1").run(Buffer.from('{"v":1}'));
    const err = await rejection(start(), "ERR_TLOG_INCONSISTENT", "tlog: the stored log was rewritten");
    expect(err.message).toMatch(/first 3 entries have root \S+, the last checkpoint says \S+/);
    db.prepare("DELETE FROM tlog_entries WHERE idx = 2").run();
    db.prepare("UPDATE tlog_counter SET next_idx = 2").run();
    db.close();
    await rejection(start(), "ERR_TLOG_INCONSISTENT", "tlog: the stored log was");
  });

  it("rotates its key: new checkpoints use the new key, the old verifier key stays listed", async () => {
    const s = await start();
    await issue(s, ["f1"]);
    await s.checkpoint();
    const oldNote = s.latestCheckpoint()?.note ?? "";
    const vkey = await s.rotateKey();
    const newNote = s.latestCheckpoint()?.note ?? "";
    expect(openCheckpoint(newNote, [parseVerifierKey(vkey)]).checkpoint.size).toBe(1);
    const all = (await s.verifierKeys()).map(parseVerifierKey);
    expect(all.length).toBe(2);
    expect(openCheckpoint(oldNote, all).checkpoint.size).toBe(1);
    expect(() => openCheckpoint(oldNote, [parseVerifierKey(vkey)])).toThrow();
  });

  it("logs authority events", async () => {
    const s = await start();
    await s.appendAuthorityEvent({ event: "activated", kind: "jwt", keyId: "jwt-A", serverId: "s1", at: T0 });
    await s.checkpoint();
    const [bytes] = await ds.readTlogEntries(0, 1);
    expect(Buffer.from(bytes ?? []).toString()).toBe('{"at":1893456000,"authorityKeyId":"jwt-A","authorityKind":"jwt","event":"activated","kind":"authority","serverId":"s1","v":1}');
    expect(s.latestCheckpoint()?.size).toBe(1);
  });
});
