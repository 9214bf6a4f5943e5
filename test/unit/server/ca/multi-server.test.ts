/**
 * Several CA managers (servers) on one database, on every engine: each keeps
 * its own journal slots, the stored bundle is the union of every server's
 * authorities, and servers publishing at once converge without losing an
 * authority, the sequence strictly increasing.
 */
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createDiskKeyManager } from "../../../../plugins/keymanager/disk/index.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import { CaManager } from "../../../../server/ca/manager.js";
import type { Datastore } from "../../../../server/datastore/index.js";
import { parseSpiffeBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import type { ManualClock } from "../../../../common/clock.js";
import { closeTempDatastore, datastoreEngines, openTempDatastore } from "../../../support/datastore.js";

const H = 3600_000;
const td = parseTrustDomain("example.org");
const T0 = new Date("2030-01-01T00:00:00Z");
const engines = await datastoreEngines();

const hex = (d: Uint8Array) => Buffer.from(d).toString("hex");

describe.each(engines)("CA managers of several servers on %s", (engine) => {
  let dir: string;
  let clock: ManualClock;
  let dsA: Datastore;
  let dsB: Datastore;
  let reopen: () => Promise<Datastore>;

  beforeEach(async () => {
    ({ dir, clock, ds: dsA, reopen } = await openTempDatastore("ca-multi", T0, engine));
    dsB = await reopen();
  });
  afterEach(async () => {
    await dsB.close();
    await closeTempDatastore(dsA, dir);
  });

  const manager = (serverId: string, store: Datastore, keysPath?: string) =>
    new CaManager(
      { trustDomain: td, caTtlMs: 24 * H, caKeyType: "ec-p256", jwtKeyType: "ec-p256", serverId },
      { keyManager: keysPath ? createDiskKeyManager({ keys_path: keysPath }) : createMemoryKeyManager(), store, clock },
    );

  async function stored() {
    const b = await dsA.getBundle("example.org");
    if (!b) throw new Error("no stored bundle");
    return { sequence: BigInt(b.sequence), bundle: parseSpiffeBundle(b.document, td).bundle };
  }
  const ownRoots = (ca: CaManager) => ca.x509Authorities().flatMap((a) => a.rootDers.map(hex));
  const ownJwt = (ca: CaManager) => ca.jwtAuthorities().map((a) => a.keyId);

  it("each server keeps its own slots; every server's roots and JWT keys are in the stored bundle and in each server's bundle", async () => {
    const a = manager("server-a", dsA);
    const b = manager("server-b", dsB);
    await a.start();
    await b.start();
    const journal = await dsA.listCaJournal();
    expect(journal.map((r) => `${r.serverId}/${r.kind}/${r.slotId}/${r.status}`)).toEqual([
      "server-a/jwt/A/active",
      "server-a/x509/A/active",
      "server-b/jwt/A/active",
      "server-b/x509/A/active",
    ]);
    // B started second: its first publication already merged A's authorities.
    const { bundle } = await stored();
    const every = [...ownRoots(a), ...ownRoots(b)].sort();
    expect(bundle.x509Authorities.map(hex).sort()).toEqual(every);
    expect([...bundle.jwtAuthorities.keys()].sort()).toEqual([...ownJwt(a), ...ownJwt(b)].sort());
    expect(b.bundle().x509Authorities.map(hex).sort()).toEqual(every);
    // A takes the union at its next rotation step, and tells its listeners.
    const heard: bigint[] = [];
    a.onBundleChange((x) => heard.push(x.sequenceNumber ?? 0n));
    await a.rotate();
    expect(a.bundle().x509Authorities.map(hex).sort()).toEqual(every);
    expect(heard).toHaveLength(1);
  });

  it("two servers preparing and publishing at once converge: no authority lost, the sequence strictly increasing", async () => {
    const a = manager("server-a", dsA);
    const b = manager("server-b", dsB);
    await Promise.all([a.start(), b.start()]);
    const heardA: bigint[] = [];
    const heardB: bigint[] = [];
    a.onBundleChange((x) => heardA.push(x.sequenceNumber ?? 0n));
    b.onBundleChange((x) => heardB.push(x.sequenceNumber ?? 0n));
    const sequences: bigint[] = [(await stored()).sequence];
    for (const step of [12 * H, 8 * H, 4 * H + 60_000]) {
      clock.advance(step);
      await Promise.all([a.rotate(), b.rotate(), a.rotate(), b.rotate()]);
      const now = await stored();
      sequences.push(now.sequence);
      const live = [...a.x509Authorities(), ...b.x509Authorities()].filter((x) => x.notAfter.getTime() > clock.now().getTime());
      for (const x of live) for (const r of x.rootDers) expect(now.bundle.x509Authorities.map(hex)).toContain(hex(r));
      for (const k of [...a.jwtAuthorities(), ...b.jwtAuthorities()]) if (k.notAfter.getTime() > clock.now().getTime()) expect(now.bundle.jwtAuthorities.has(k.keyId)).toBe(true);
      // Both servers agree with the stored bundle after a few more steps.
      for (let i = 0; i < 2; i++) {
        await a.rotate();
        await b.rotate();
      }
      const settled = await stored();
      expect(a.bundle().sequenceNumber).toBe(settled.sequence);
      expect(b.bundle().sequenceNumber).toBe(settled.sequence);
    }
    // The stored sequence never goes back; each server hears strictly increasing sequences; the prepare steps changed it.
    for (let i = 1; i < sequences.length; i++) expect(sequences[i]).toBeGreaterThanOrEqual(sequences[i - 1] as bigint);
    expect(sequences[sequences.length - 1]).toBeGreaterThan(sequences[0] as bigint);
    for (const heard of [heardA, heardB]) for (let i = 1; i < heard.length; i++) expect(heard[i]).toBeGreaterThan(heard[i - 1] as bigint);
  });

  it("an expired authority of another server leaves the bundle", async () => {
    const a = manager("server-a", dsA);
    await a.start();
    const aRoots = ownRoots(a);
    // Server A is gone for good; B runs on past A's CA lifetime.
    const b = manager("server-b", dsB);
    await b.start();
    expect(b.bundle().x509Authorities.map(hex)).toEqual(expect.arrayContaining(aRoots));
    for (let t = 0; t < 25; t++) {
      clock.advance(H);
      await b.rotate();
    }
    for (const r of aRoots) expect(b.bundle().x509Authorities.map(hex)).not.toContain(r);
  });

  it("a server upgraded to a named instance adopts the unnamed journal records whose keys it holds (same CA)", async () => {
    const keys = path.join(dir, "keys.json");
    const old = manager("", dsA, keys);
    await old.start();
    const before = old.x509Authorities().map((x) => x.keyId);
    const named = manager("server-a", dsB, keys);
    await named.start();
    expect(named.x509Authorities().map((x) => x.keyId)).toEqual(before);
    expect((await dsA.listCaJournal()).filter((r) => r.serverId === "server-a").map((r) => r.keyId)).toEqual(expect.arrayContaining(before));
  });
});
