/**
 * The CA manager over a real SQLite datastore with a manual clock: slots move
 * prepared → active → old at SPIRE's thresholds, a new authority is in the
 * bundle before it signs anything, SVIDs never outlive their CA, state
 * survives a restart with the disk key manager, and an upstream authority on
 * disk makes the CA an intermediate under the upstream root.
 */
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { createDiskKeyManager } from "../../../../plugins/keymanager/disk/index.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import { createDiskUpstreamAuthority } from "../../../../plugins/upstreamauthority/disk/index.js";
import { CaManager } from "../../../../server/ca/manager.js";
import { activateAt, prepareAt } from "../../../../server/ca/rotation.js";
import { createSqliteDatastore } from "../../../../server/datastore/index.js";
import { toX509Bundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { encodePemCertificates } from "../../../../spiffe/pem.js";
import { createKeyObjectSigner, generateSigner } from "../../../../spiffe/signer.js";
import { createRootCa } from "../../../../spiffe/x509/ca.js";
import { StaticX509BundleSource } from "../../../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../../../spiffe/x509/verify.js";
import { testTempDir } from "../../../support/temp-dir.js";

const H = 3600_000;
const td = parseTrustDomain("example.org");
const web = parseSpiffeId("spiffe://example.org/web");
const T0 = new Date("2026-06-01T00:00:00Z");

async function setup(opts: { keysPath?: string; dir?: string; upstream?: ReturnType<typeof createDiskUpstreamAuthority>; caTtlMs?: number; onActiveExpired?: () => void } = {}) {
  const dir = opts.dir ?? testTempDir("sigil-ca-");
  const clock = new ManualClock(T0);
  const store = await createSqliteDatastore({ path: path.join(dir, "ds.sqlite3"), clock });
  const ca = new CaManager(
    { trustDomain: td, caTtlMs: opts.caTtlMs ?? 24 * H, caKeyType: "ec-p256", jwtKeyType: "ec-p256" },
    { keyManager: opts.keysPath ? createDiskKeyManager({ keys_path: opts.keysPath }) : createMemoryKeyManager(), store, clock, upstream: opts.upstream, onActiveExpired: opts.onActiveExpired },
  );
  await ca.start();
  return { dir, clock, store, ca };
}

function spki(): Uint8Array {
  return new Uint8Array(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).publicKey.export({ format: "der", type: "spki" }));
}

const roots = (ca: CaManager) => ca.bundle().x509Authorities.map((d) => Buffer.from(d).toString("hex"));
const activeKey = (ca: CaManager, kind: "x509" | "jwt") => (kind === "x509" ? ca.x509Authorities() : ca.jwtAuthorities()).find((a) => a.status === "active")?.keyId;

describe("CA manager", () => {
  it("starts with one active X.509 CA and JWT key, both published in the bundle", async () => {
    const { ca, store } = await setup();
    expect(ca.x509Authorities().map((a) => a.status)).toEqual(["active"]);
    expect(ca.jwtAuthorities().map((a) => a.status)).toEqual(["active"]);
    expect(ca.bundle().x509Authorities).toHaveLength(1);
    expect([...ca.bundle().jwtAuthorities.keys()]).toEqual([activeKey(ca, "jwt")]);
    expect((await store.getBundle("example.org"))?.sequence).toBe(ca.bundle().sequenceNumber?.toString());
    await store.close();
  });

  it("FED-1 FED-2: prepares at half life and publishes the new CA before it signs; activates at 1/6 remaining; the old one stays in the bundle until it expires, then leaves it under a higher sequence", async () => {
    const { ca, clock, store } = await setup();
    const firstX509 = activeKey(ca, "x509");
    const seq0 = ca.bundle().sequenceNumber ?? 0n;

    clock.advance(12 * H - 10_000); // certificates are backdated 10s, so half life falls 5s before T+12h
    await ca.rotate();
    expect(ca.x509Authorities()).toHaveLength(1); // not yet

    clock.advance(10_000);
    await ca.rotate();
    expect(ca.x509Authorities().map((a) => a.status).sort()).toEqual(["active", "prepared"]);
    expect(ca.bundle().x509Authorities).toHaveLength(2); // published before use (FED-1)
    expect(ca.bundle().sequenceNumber).toBeGreaterThan(seq0);
    // Still signing with the first CA.
    const before = ca.signX509Svid({ spiffeId: web, publicKeyDer: spki(), ttlMs: H });
    expect(before.caKeyId).toBe(firstX509);
    expect(verifyX509Svid(before.chain, new StaticX509BundleSource([toX509Bundle(ca.bundle())]), { now: clock.now() }).id.equals(web)).toBe(true);

    clock.advance(8 * H); // T+20h
    await ca.rotate();
    const statuses = Object.fromEntries(ca.x509Authorities().map((a) => [a.keyId, a.status]));
    expect(statuses[firstX509 ?? ""]).toBe("old");
    const after = ca.signX509Svid({ spiffeId: web, publicKeyDer: spki(), ttlMs: H });
    expect(after.caKeyId).not.toBe(firstX509);
    // The new CA's SVIDs verify against the published bundle, which still holds the old CA too.
    expect(ca.bundle().x509Authorities).toHaveLength(2);
    const src = new StaticX509BundleSource([toX509Bundle(ca.bundle())]);
    expect(verifyX509Svid(after.chain, src, { now: clock.now() }).id.equals(web)).toBe(true);
    // The journal records the transitions.
    const journal = await store.listCaJournal("x509");
    expect(journal.map((r) => r.status).sort()).toEqual(["active", "old"]);

    const firstRoot = ca.x509Authorities().find((a) => a.keyId === firstX509)?.certDer;
    const seqWithFirst = ca.bundle().sequenceNumber ?? 0n;
    clock.advance(4 * H + 1000); // past the first CA's expiry (and the second CA's half life: a third is prepared)
    await ca.rotate();
    const published = ca.bundle().x509Authorities.map((d) => Buffer.from(d).toString("hex"));
    expect(published).not.toContain(Buffer.from(firstRoot ?? []).toString("hex")); // the expired CA left the bundle
    expect(ca.bundle().sequenceNumber).toBeGreaterThan(seqWithFirst);
    expect(published).toHaveLength(2);
    await store.close();
  });

  it("JWT keys rotate on the same schedule and tokens name the active key", async () => {
    const { ca, clock, store } = await setup();
    const first = activeKey(ca, "jwt");
    clock.advance(20 * H);
    await ca.rotate(); // prepares (nothing was prepared at 12h in this test)
    await ca.rotate(); // and activates at once, since 1/6 remaining has passed
    const jwt = ca.signJwtSvid({ spiffeId: web, audience: ["db"], ttlMs: 5 * 60_000 });
    expect(jwt.keyId).not.toBe(first);
    expect(ca.bundle().jwtAuthorities.has(first ?? "")).toBe(true);
    await store.close();
  });

  it("an SVID never outlives its signing CA", async () => {
    const { ca, clock, store } = await setup();
    clock.advance(23 * H);
    const issued = ca.signX509Svid({ spiffeId: web, publicKeyDer: spki(), ttlMs: 10 * H });
    const caNotAfter = ca.x509Authorities().find((a) => a.keyId === issued.caKeyId)?.notAfter.getTime() ?? 0;
    expect(new Date(new X509Certificate(Buffer.from(issued.chain[0] as Uint8Array)).validTo).getTime()).toBeLessThanOrEqual(caNotAfter);
    const jwt = ca.signJwtSvid({ spiffeId: web, audience: ["db"], ttlMs: 10 * H });
    const jwtNotAfter = ca.jwtAuthorities().find((a) => a.keyId === jwt.keyId)?.notAfter.getTime() ?? 0;
    expect(jwt.expiresAt.getTime()).toBeLessThanOrEqual(jwtNotAfter);
    await store.close();
  });

  it("names when the next rotation step is due: the successor's preparation, then its activation, then the old authority's expiry", async () => {
    const { ca, clock, store } = await setup({ caTtlMs: 60_000 });
    const active = () => ca.x509Authorities().find((a) => a.status === "active");
    const first = active();
    if (first === undefined) throw new Error("no active CA");
    const due = (t: Date) => t.getTime() - clock.now().getTime();
    expect(ca.msUntilNextRotation()).toBe(due(prepareAt(first.notBefore, first.notAfter)));
    clock.advance(ca.msUntilNextRotation() ?? 0);
    await ca.rotate();
    expect(ca.x509Authorities().map((a) => a.status).sort()).toEqual(["active", "prepared"]);
    expect(ca.msUntilNextRotation()).toBe(due(activateAt(first.notBefore, first.notAfter)));
    clock.advance(ca.msUntilNextRotation() ?? 0);
    await ca.rotate();
    const second = active();
    if (second === undefined || second.keyId === first.keyId) throw new Error("the successor was not activated");
    // Next: the new authority's own successor (a one-minute CA prepares it early) or the old one leaving the bundle.
    expect(ca.msUntilNextRotation()).toBe(Math.min(due(prepareAt(second.notBefore, second.notAfter)), due(first.notAfter)));
    await store.close();
  });

  it("an active authority past its notAfter (its replacement step not yet run) signs nothing, asks for a step, and the step activates a successor", async () => {
    let asked = 0;
    const { ca, clock, store } = await setup({ caTtlMs: 60_000, onActiveExpired: () => (asked += 1) });
    clock.advance(61_000);
    expect(() => ca.signX509Svid({ spiffeId: web, publicKeyDer: spki(), ttlMs: H })).toThrow(/active X\.509 authority x509-\S+ expired at .*retry shortly/);
    expect(() => ca.signJwtSvid({ spiffeId: web, audience: ["db"], ttlMs: H })).toThrow(/active JWT authority .* expired/);
    const batch = await ca.signX509SvidBatch([{ spiffeId: web, publicKeyDer: spki(), ttlMs: H }]);
    expect(batch[0]).toMatchObject({ code: "ERR_UNAVAILABLE" });
    expect(asked).toBe(3);
    await ca.rotate();
    const issued = ca.signX509Svid({ spiffeId: web, publicKeyDer: spki(), ttlMs: H });
    expect(new Date(new X509Certificate(Buffer.from(issued.chain[0] as Uint8Array)).validTo).getTime()).toBeGreaterThan(clock.now().getTime());
    await store.close();
  });

  it("a JWT key stays in the bundle until every token it signed has expired, through three rotations (13 s steps, as the rotation job is not aligned with key lifetimes)", async () => {
    const { ca, clock, store } = await setup();
    // Latest expiry of the tokens each key signed; every token asks for more than the key has left.
    const lastExpiry = new Map<string, number>();
    const missing: string[] = [];
    // 13 s: unaligned with every lifetime here; ~14,000 steps through the SQLite journal (7 s steps took over 60 s of CPU).
    const step = 13_000;
    for (let t = 0; t <= 50 * H; t += step) {
      await ca.rotate();
      const now = clock.now().getTime();
      const jwt = ca.signJwtSvid({ spiffeId: web, audience: ["db"], ttlMs: 10 * H });
      lastExpiry.set(jwt.keyId, Math.max(lastExpiry.get(jwt.keyId) ?? 0, jwt.expiresAt.getTime()));
      const published = ca.bundle().jwtAuthorities;
      for (const [kid, exp] of lastExpiry) {
        if (exp > now && !published.has(kid)) missing.push(`${kid} at +${(now - T0.getTime()) / 1000}s, its tokens valid until +${(exp - T0.getTime()) / 1000}s`);
        // Once its last token has expired, the key leaves the bundle at the next step.
        if (exp + step < now) expect(published.has(kid)).toBe(false);
      }
      clock.advance(step);
    }
    expect(lastExpiry.size).toBeGreaterThanOrEqual(3);
    expect(missing).toEqual([]);
    await store.close();
  }, 180_000);

  it("a JWT key leaves the bundle at the first step after it expires, also when its slot is prepared again in that step (one-minute keys, 10 s steps as the rotation job runs)", async () => {
    const { ca, clock, store } = await setup({ caTtlMs: 60_000 });
    const notAfter = new Map<string, number>();
    const lingering: string[] = [];
    const step = 10_000;
    for (let t = 0; t <= 5 * 60_000; t += step) {
      await ca.rotate();
      const now = clock.now().getTime();
      for (const a of ca.jwtAuthorities()) notAfter.set(a.keyId, a.notAfter.getTime());
      for (const kid of ca.bundle().jwtAuthorities.keys()) {
        const end = notAfter.get(kid);
        if (end !== undefined && end <= now) lingering.push(`${kid} expired at +${(end - T0.getTime()) / 1000}s, still published at +${(now - T0.getTime()) / 1000}s`);
      }
      clock.advance(step);
    }
    expect(notAfter.size).toBeGreaterThanOrEqual(5);
    expect(lingering).toEqual([]);
    await store.close();
  }, 60_000);

  it("with the disk key manager, a restart keeps the same CA and bundle", async () => {
    const dir = testTempDir("sigil-ca-");
    const keysPath = path.join(dir, "keys.json");
    const a = await setup({ dir, keysPath });
    const before = roots(a.ca);
    const key = activeKey(a.ca, "x509");
    await a.store.close();
    const b = await setup({ dir, keysPath });
    expect(roots(b.ca)).toEqual(before);
    expect(activeKey(b.ca, "x509")).toBe(key);
    await b.store.close();
  });

  it("upstreamauthority(disk): the CA is an intermediate under the upstream root, which alone is in the bundle", async () => {
    const dir = testTempDir("sigil-ca-up-");
    // An upstream root made with the library: a PEM cert and key on disk, as an operator provides them.
    const { privateKey: upKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    const signer = createKeyObjectSigner(upKey, "upstream");
    const rootDer = createRootCa({ trustDomain: td, signer, notBefore: new Date(T0.getTime() - H), notAfter: new Date(T0.getTime() + 365 * 24 * H) });
    writeFileSync(path.join(dir, "up.pem"), encodePemCertificates([rootDer]));
    writeFileSync(path.join(dir, "up.key"), upKey.export({ format: "pem", type: "pkcs8" }));
    const upstream = createDiskUpstreamAuthority({ cert_file_path: path.join(dir, "up.pem"), key_file_path: path.join(dir, "up.key") });
    const { ca, clock, store } = await setup({ dir, upstream });
    expect(roots(ca)).toEqual([Buffer.from(rootDer).toString("hex")]);
    const issued = ca.signX509Svid({ spiffeId: web, publicKeyDer: spki(), ttlMs: H });
    expect(issued.chain).toHaveLength(2); // leaf + Sigil's intermediate
    const v = verifyX509Svid(issued.chain, new StaticX509BundleSource([toX509Bundle(ca.bundle())]), { now: clock.now() });
    expect(v.verifiedChain).toHaveLength(3);
    expect(Buffer.from(v.verifiedChain[2]?.raw ?? []).equals(Buffer.from(rootDer))).toBe(true);
    await store.close();
  });

  it("upstreamauthority(disk) refuses a key that does not match the certificate, naming both files", async () => {
    const dir = testTempDir("sigil-ca-up-");
    const rootDer = createRootCa({ trustDomain: td, signer: generateSigner("ec-p256"), notBefore: T0, notAfter: new Date(T0.getTime() + 24 * H) });
    writeFileSync(path.join(dir, "up.pem"), encodePemCertificates([rootDer]));
    writeFileSync(path.join(dir, "other.key"), generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey.export({ format: "pem", type: "pkcs8" }));
    expect(() => createDiskUpstreamAuthority({ cert_file_path: path.join(dir, "up.pem"), key_file_path: path.join(dir, "other.key") })).toThrow(/other\.key does not match the certificate in .*up\.pem/);
  });
});
