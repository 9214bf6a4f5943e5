/**
 * Taint and revoke in the CA manager (SQLite datastore, manual clock): a
 * tainted active key hands over to a successor at once and stays published;
 * revoke takes it out of the bundle, also for another server sharing the
 * database; refusals change nothing; events and the tainted set follow.
 */
import { createHash, generateKeyPairSync } from "node:crypto";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import { createDiskUpstreamAuthority } from "../../../../plugins/upstreamauthority/disk/index.js";
import { CaManager, type AuthorityEvent, type JwtAuthority, type TaintedAuthorities, type X509Authority } from "../../../../server/ca/manager.js";
import { createSqliteDatastore, type Datastore } from "../../../../server/datastore/index.js";
import { toJwtBundle, toX509Bundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { validateJwtSvid } from "../../../../spiffe/jwt/validate.js";
import { encodePemCertificates } from "../../../../spiffe/pem.js";
import { createKeyObjectSigner } from "../../../../spiffe/signer.js";
import { createRootCa } from "../../../../spiffe/x509/ca.js";
import { StaticX509BundleSource } from "../../../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../../../spiffe/x509/verify.js";
import { testTempDir } from "../../../support/temp-dir.js";

const H = 3600_000;
const td = parseTrustDomain("example.org");
const web = parseSpiffeId("spiffe://example.org/web");
const T0 = new Date("2026-06-01T00:00:00Z");

interface Server {
  ca: CaManager;
  events: AuthorityEvent[];
  taints: TaintedAuthorities[];
  live: Map<string, number>;
}

function server(store: Datastore, clock: ManualClock, serverId: string, upstream?: ReturnType<typeof createDiskUpstreamAuthority>): Server {
  const events: AuthorityEvent[] = [];
  const taints: TaintedAuthorities[] = [];
  const live = new Map<string, number>();
  const ca = new CaManager(
    { trustDomain: td, caTtlMs: 24 * H, caKeyType: "ec-p256", jwtKeyType: "ec-p256", serverId },
    {
      keyManager: createMemoryKeyManager(),
      store,
      clock,
      upstream,
      onAuthorityEvent: (e) => {
        events.push(e);
        return Promise.resolve();
      },
      countLiveSvids: (k) => Promise.resolve(live.get(k) ?? 0),
    },
  );
  ca.onTaintChange((t) => taints.push(t));
  return { ca, events, taints, live };
}

async function setup(upstream?: ReturnType<typeof createDiskUpstreamAuthority>) {
  const dir = testTempDir("sigil-ca-taint-");
  const clock = new ManualClock(T0);
  const store = await createSqliteDatastore({ path: path.join(dir, "ds.sqlite3"), clock });
  const s = server(store, clock, "s1", upstream);
  await s.ca.start();
  return { dir, clock, store, ...s };
}

function spki(): Uint8Array {
  return new Uint8Array(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).publicKey.export({ format: "der", type: "spki" }));
}

const hex = (d: Uint8Array) => Buffer.from(d).toString("hex");
const roots = (ca: CaManager) => ca.bundle().x509Authorities.map(hex);
function active(ca: CaManager, kind: "x509"): X509Authority | undefined;
function active(ca: CaManager, kind: "jwt"): JwtAuthority | undefined;
function active(ca: CaManager, kind: "x509" | "jwt"): X509Authority | JwtAuthority | undefined {
  return (kind === "x509" ? ca.x509Authorities() : ca.jwtAuthorities()).find((a) => a.status === "active");
}
const journal = async (store: Datastore) => (await store.listCaJournal()).map((r) => `${r.serverId}/${r.kind}/${r.slotId}/${r.keyId}/${r.status}`).sort();

async function refused(p: Promise<unknown>, code: string, message: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(isSigilError(e)).toBe(true);
  expect((e as { code: string }).code).toBe(code);
  expect((e as Error).message).toMatch(message);
}

describe("CA manager: taint and revoke", () => {
  it("tainting the active X.509 CA with no successor prepares and activates one at once; the tainted CA stays published and stops signing", async () => {
    const { ca, clock, store, events, taints } = await setup();
    const old = active(ca, "x509");
    if (!old) throw new Error("no active CA");
    events.length = 0;
    const r = await ca.taint("x509", old.keyId);
    expect(r.preparedFirst).toBe(true);
    expect(r.tainted.status).toBe("tainted");
    const now = active(ca, "x509");
    expect(now?.keyId).toBe(r.activated?.keyId);
    expect(now?.keyId).not.toBe(old.keyId);
    expect(events.map((e) => `${e.event}:${e.kind}:${e.serverId}`)).toEqual(["prepared:x509:s1", "activated:x509:s1", "tainted:x509:s1"]);
    expect(events[2]?.keyId).toBe(old.keyId);
    expect(events[2]?.certDer && hex(events[2].certDer)).toBe(hex(old.certDer));
    // Both roots are published: what the old CA signed keeps verifying until revoke.
    expect(roots(ca).sort()).toEqual([hex(old.certDer), hex(now?.certDer ?? new Uint8Array())].sort());
    const issued = ca.signX509Svid({ spiffeId: web, publicKeyDer: spki(), ttlMs: H });
    expect(issued.caKeyId).toBe(now?.keyId);
    verifyX509Svid(issued.chain, new StaticX509BundleSource([toX509Bundle(ca.bundle())]), { now: clock.now() });
    // The tainted set names the old CA's SubjectPublicKeyInfo hash, and listeners heard it.
    const oldSpki = createHash("sha256").update(old.signer.publicKey.export({ format: "der", type: "spki" })).digest("hex");
    expect(ca.taintedAuthorities()).toEqual({ x509SpkiSha256: [oldSpki], jwtKeyIds: [] });
    expect(taints.at(-1)).toEqual({ x509SpkiSha256: [oldSpki], jwtKeyIds: [] });
    // The journal says so (another server reads it there).
    expect(await journal(store)).toContain(`s1/x509/${old.slotId}/${old.keyId}/tainted`);
    // Later rotation steps keep the tainted key out of signing.
    clock.advance(60_000);
    await ca.rotate();
    expect(active(ca, "x509")?.keyId).toBe(now?.keyId);
    await store.close();
  });

  it("revoke: refused for an unknown key, the active key, an untainted key and while live SVIDs chain to it (nothing changes); --force revokes with a warning; the root leaves the bundle", async () => {
    const { ca, store, events, live } = await setup();
    const first = active(ca, "x509");
    if (!first) throw new Error("no active CA");
    const before = await journal(store);
    const bundleBefore = roots(ca);
    await refused(ca.revoke("x509", "x509-Z-nope"), "ERR_NOT_FOUND", /no x509 authority with key ID "x509-Z-nope"/);
    await refused(ca.taint("jwt", "jwt-Z-nope"), "ERR_NOT_FOUND", /no jwt authority with key ID "jwt-Z-nope"/);
    await refused(ca.revoke("x509", first.keyId), "ERR_FAILED_PRECONDITION", /refusing to revoke the active x509 authority .*taint it first/);
    const prepared = await ca.prepare("x509");
    await refused(ca.revoke("x509", prepared.keyId), "ERR_FAILED_PRECONDITION", /\(prepared\): only a tainted authority can be revoked/);
    await refused(ca.prepare("x509"), "ERR_FAILED_PRECONDITION", /already prepared/);
    expect(await journal(store)).toEqual([...before, `s1/x509/B/${prepared.keyId}/prepared`].sort());
    expect(roots(ca)).toHaveLength(bundleBefore.length + 1);

    await ca.taint("x509", first.keyId);
    expect(active(ca, "x509")?.keyId).toBe(prepared.keyId);
    live.set(first.keyId, 3);
    const afterTaint = await journal(store);
    const seq = ca.bundle().sequenceNumber;
    await refused(ca.revoke("x509", first.keyId), "ERR_FAILED_PRECONDITION", /3 live SVID\(s\) still chain to x509 authority .*--force/);
    expect(await journal(store)).toEqual(afterTaint);
    expect(ca.bundle().sequenceNumber).toBe(seq);
    await refused(ca.taint("x509", first.keyId), "ERR_FAILED_PRECONDITION", /already tainted/);

    events.length = 0;
    const r = await ca.revoke("x509", first.keyId, { force: true });
    expect(r.liveSvids).toBe(3);
    expect(r.warning).toMatch(/3 live SVID\(s\) still chaining/);
    expect(roots(ca)).toEqual([hex(active(ca, "x509")?.certDer ?? new Uint8Array())]);
    expect(events.map((e) => `${e.event}:${e.keyId}`)).toEqual([`revoked:${first.keyId}`]);
    expect(await journal(store)).toContain(`s1/x509/A/${first.keyId}/revoked`);
    await refused(ca.revoke("x509", first.keyId), "ERR_FAILED_PRECONDITION", /already revoked/);
    // Revoked keys stay in the tainted set (agents drop what they signed) while unexpired.
    expect(ca.taintedAuthorities().x509SpkiSha256).toHaveLength(1);
    await store.close();
  });

  it("a second taint is refused while the successor's slot holds a tainted key; after revoking that one it goes through", async () => {
    const { ca, store } = await setup();
    const k1 = active(ca, "x509")?.keyId ?? "";
    await ca.taint("x509", k1);
    const k2 = active(ca, "x509")?.keyId ?? "";
    const before = await journal(store);
    await refused(ca.taint("x509", k2), "ERR_FAILED_PRECONDITION", new RegExp(`slot A holds tainted authority ${k1}; revoke that one first`));
    expect(await journal(store)).toEqual(before);
    expect(active(ca, "x509")?.keyId).toBe(k2);
    await ca.revoke("x509", k1);
    const r = await ca.taint("x509", k2);
    expect(r.preparedFirst).toBe(true);
    expect(active(ca, "x509")?.slotId).toBe("A");
    await store.close();
  });

  it("the rotation step does not reuse a tainted key's slot before a successor is due", async () => {
    const { ca, clock, store } = await setup();
    const k1 = active(ca, "x509")?.keyId ?? "";
    await ca.taint("x509", k1);
    // Past half life of the new active CA: normally the next one is prepared in the other slot (A, tainted).
    clock.advance(13 * H);
    await ca.rotate();
    expect(ca.x509Authorities().find((a) => a.slotId === "A")?.keyId).toBe(k1);
    // At 1/6 remaining a successor is due: the tainted key gives way.
    clock.advance(8 * H);
    await ca.rotate();
    expect(ca.x509Authorities().find((a) => a.slotId === "A")?.status).toBe("prepared");
    await store.close();
  });

  it("JWT: the tainted key stops signing, its tokens verify until revoke and fail after", async () => {
    const { ca, clock, store } = await setup();
    const old = active(ca, "jwt");
    if (!old) throw new Error("no JWT key");
    const token = ca.signJwtSvid({ spiffeId: web, audience: ["db"], ttlMs: H }).token;
    const r = await ca.taint("jwt", old.keyId);
    expect(ca.signJwtSvid({ spiffeId: web, audience: ["db"], ttlMs: H }).keyId).toBe(r.activated?.keyId);
    expect(ca.taintedAuthorities().jwtKeyIds).toEqual([old.keyId]);
    const verify = () => validateJwtSvid(token, { getJwtBundleForTrustDomain: () => toJwtBundle(ca.bundle()) }, { audience: ["db"], now: clock.now() });
    expect(() => verify()).not.toThrow();
    await ca.revoke("jwt", old.keyId);
    expect(ca.bundle().jwtAuthorities.has(old.keyId)).toBe(false);
    expect(() => verify()).toThrow();
    await store.close();
  });

  it("two servers on one database: a taint made through one reaches the owner at its next step; a revoke leaves both bundles", async () => {
    const { ca: a, clock, store, taints: aTaints } = await setup();
    const b = server(store, clock, "s2");
    await b.ca.start();
    await a.rotate();
    const aKey = active(a, "x509");
    if (!aKey) throw new Error("no active CA");
    b.events.length = 0;
    const r = await b.ca.taint("x509", aKey.keyId);
    expect(r.tainted.serverId).toBe("s1");
    expect(b.events.map((e) => `${e.event}:${e.serverId}`)).toEqual(["tainted:s1"]);
    // s1 still signs with it until its next step, then hands over.
    await a.rotate();
    expect(active(a, "x509")?.keyId).not.toBe(aKey.keyId);
    expect(a.x509Authorities().find((x) => x.keyId === aKey.keyId)?.status).toBe("tainted");
    expect(aTaints.at(-1)?.x509SpkiSha256).toHaveLength(1);
    expect(b.ca.taintedAuthorities()).toEqual(a.taintedAuthorities());
    await b.ca.revoke("x509", aKey.keyId);
    expect(b.ca.bundle().x509Authorities.map(hex)).not.toContain(hex(aKey.certDer));
    await a.rotate();
    expect(a.bundle().x509Authorities.map(hex)).not.toContain(hex(aKey.certDer));
    expect(a.x509Authorities().some((x) => x.keyId === aKey.keyId)).toBe(false);
    // The stored bundle agrees, after both servers published again.
    await b.ca.rotate();
    expect((await store.getBundle("example.org"))?.document).not.toContain(Buffer.from(aKey.certDer).toString("base64url").slice(0, 40));
    await store.close();
  });

  /** A server whose CA is an intermediate of the `disk` upstream authority (a root written to a test directory). */
  async function setupUnderUpstream() {
    const dir = testTempDir("sigil-ca-up-");
    const { privateKey: upKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    const rootDer = createRootCa({ trustDomain: td, signer: createKeyObjectSigner(upKey, "upstream"), notBefore: new Date(T0.getTime() - H), notAfter: new Date(T0.getTime() + 365 * 24 * H) });
    writeFileSync(path.join(dir, "up.pem"), encodePemCertificates([rootDer]));
    writeFileSync(path.join(dir, "up.key"), upKey.export({ format: "pem", type: "pkcs8" }));
    return { rootDer, ...(await setup(createDiskUpstreamAuthority({ cert_file_path: path.join(dir, "up.pem"), key_file_path: path.join(dir, "up.key") }))) };
  }

  it("upstream-signed intermediate: tainting it replaces it with a new intermediate; the list marks it upstream", async () => {
    const { ca, clock, store, rootDer } = await setupUnderUpstream();
    const old = active(ca, "x509");
    if (!old) throw new Error("no active CA");
    expect((await ca.list()).find((v) => v.keyId === old.keyId)?.upstream).toBe(true);
    await ca.taint("x509", old.keyId);
    const issued = ca.signX509Svid({ spiffeId: web, publicKeyDer: spki(), ttlMs: H });
    expect(issued.caKeyId).not.toBe(old.keyId);
    expect(hex(issued.chain[1] ?? new Uint8Array())).not.toBe(hex(old.certDer));
    verifyX509Svid(issued.chain, new StaticX509BundleSource([toX509Bundle(ca.bundle())]), { now: clock.now() });
    expect(roots(ca)).toEqual([hex(rootDer)]);
    await store.close();
  });

  it("upstream-signed intermediate: revoke leaves the bundle as it was (the upstream root) and always says so; the intermediate stays tainted for agents", async () => {
    const { ca, store, live, events, rootDer } = await setupUnderUpstream();
    const old = active(ca, "x509");
    if (!old) throw new Error("no active CA");
    const underOld = ca.signX509Svid({ spiffeId: web, publicKeyDer: spki(), ttlMs: H });
    await ca.taint("x509", old.keyId);
    const oldSpki = createHash("sha256").update(old.signer.publicKey.export({ format: "der", type: "spki" })).digest("hex");
    live.set(old.keyId, 1);
    // Still refused while live SVIDs chain to it: the inventory drains the same way as for a root.
    await expect(ca.revoke("x509", old.keyId)).rejects.toThrow(/1 live SVID\(s\) still chain to x509 authority/);
    const forced = await ca.revoke("x509", old.keyId, { force: true });
    expect(forced.revoked.upstream).toBe(true);
    expect(forced.warning).toMatch(/^revoked with 1 live SVID\(s\) still chaining to x509-\S+; x509-\S+ is an upstream-signed intermediate: the trust bundle holds the upstream root, not this intermediate/);
    expect(forced.warning).toContain("only the upstream CA can revoke the intermediate itself");
    expect(forced.warning).not.toContain("no longer verify");
    // The bundle is what it was, so the SVID forced over still verifies: the warning is true.
    expect(roots(ca)).toEqual([hex(rootDer)]);
    verifyX509Svid(underOld.chain, new StaticX509BundleSource([toX509Bundle(ca.bundle())]), { now: new Date(T0.getTime() + 1000) });
    // Agents keep replacing what it signed; it is logged; it signs nothing more here.
    expect(ca.taintedAuthorities().x509SpkiSha256).toContain(oldSpki);
    expect(events.map((e) => `${e.event} ${e.keyId}`)).toContain(`revoked ${old.keyId}`);
    expect(ca.x509Authorities().some((x) => x.keyId === old.keyId)).toBe(false);
    await store.close();
  });

  it("revoking a self-signed root with nothing live carries no warning", async () => {
    const { ca, store } = await setup();
    const old = active(ca, "x509");
    if (!old) throw new Error("no active CA");
    await ca.taint("x509", old.keyId);
    const r = await ca.revoke("x509", old.keyId);
    expect(r.revoked.upstream).toBe(false);
    expect(r.warning).toBeUndefined();
    await store.close();
  });
});
