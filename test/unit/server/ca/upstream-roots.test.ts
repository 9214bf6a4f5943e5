/**
 * `UpstreamAuthority.watchRoots` through the CA manager (nested servers: a
 * parent's new or withdrawn root): a new root joins the bundle at once; a
 * withdrawn one leaves it; and when the root the active CA chains to is gone
 * the CA is replaced by one under a current root, without waiting for the
 * next rotation. The upstream here is a fake in the test whose roots the test
 * changes; the sigil plugin's watch of the Workload API is
 * test/unit/plugins/upstreamauthority/sigil.test.ts.
 */
import path from "node:path";
import { X509Certificate } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { systemClock } from "../../../../common/clock.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import type { UpstreamAuthority } from "../../../../plugins/upstreamauthority/types.js";
import { CaManager } from "../../../../server/ca/manager.js";
import { createSqliteDatastore, type Datastore } from "../../../../server/datastore/index.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import { generateSigner, type Signer } from "../../../../spiffe/signer.js";
import { createIntermediateCa, createRootCa } from "../../../../spiffe/x509/ca.js";
import { SigilError } from "../../../../spiffe/errors.js";
import { testTempDir } from "../../../support/temp-dir.js";

const td = parseTrustDomain("example.org");
let store: Datastore | undefined;
let ca: CaManager | undefined;
afterEach(async () => {
  ca?.stop();
  await store?.close();
  store = undefined;
  ca = undefined;
});

interface Root {
  readonly der: Uint8Array;
  readonly signer: Signer;
}

function makeRoot(): Root {
  const signer = generateSigner("ec-p256");
  const now = Date.now();
  return { signer, der: createRootCa({ trustDomain: td, signer, notBefore: new Date(now - 60_000), notAfter: new Date(now + 86_400_000) }) };
}

/** An upstream whose issuing root and published roots the test sets; `push` announces the roots as a parent's Workload API would. */
function fakeUpstream(initial: Root) {
  let issuing = initial;
  let published: Root[] = [initial];
  let listener: ((roots: readonly Uint8Array[]) => void) | undefined;
  const state = { refusing: false };
  const upstream: UpstreamAuthority = {
    name: "fake",
    mintX509Ca: async (req) => {
      if (state.refusing) throw new SigilError("ERR_PERMISSION_DENIED", "fake upstream: refused");
      const certDer = createIntermediateCa({ trustDomain: td, subjectPublicKey: req.publicKey, issuerCertDer: issuing.der, issuerSigner: issuing.signer, notBefore: req.notBefore, notAfter: req.notAfter });
      return { certDer, intermediateDers: [], rootDers: published.map((r) => r.der), notAfter: new Date(new X509Certificate(certDer).validTo) };
    },
    watchRoots: (_td, onRoots) => {
      listener = onRoots;
      return () => {
        listener = undefined;
      };
    },
  };
  return {
    upstream,
    state,
    set(next: { issuing?: Root; published: Root[] }): void {
      if (next.issuing) issuing = next.issuing;
      published = next.published;
    },
    push(): void {
      listener?.(published.map((r) => r.der));
    },
    get watching(): boolean {
      return listener !== undefined;
    },
  };
}

const b64 = (d: Uint8Array) => Buffer.from(d).toString("base64");
const bundleRoots = (m: CaManager) => m.bundle().x509Authorities.map(b64).sort();
async function activeCa(m: CaManager) {
  const view = (await m.list()).find((a) => a.kind === "x509" && a.status === "active");
  return { keyId: view?.keyId, cert: new X509Certificate(view?.certDer as Uint8Array) };
}

describe("CaManager and an upstream's changing roots", () => {
  it("publishes a new root at once, drops a withdrawn one, and replaces the CA whose root is gone", async () => {
    const [r1, r2] = [makeRoot(), makeRoot()];
    const fake = fakeUpstream(r1);
    store = await createSqliteDatastore({ path: path.join(testTempDir("sigil-upstream-roots-"), "ds.sqlite3"), clock: systemClock });
    ca = new CaManager({ trustDomain: td, caTtlMs: 3_600_000, caKeyType: "ec-p256", jwtKeyType: "ec-p256" }, { keyManager: createMemoryKeyManager(), store, clock: systemClock, upstream: fake.upstream });
    await ca.start();
    expect(fake.watching).toBe(true);
    expect(bundleRoots(ca)).toEqual([b64(r1.der)]);
    const first = await activeCa(ca);
    expect(first.cert.verify(new X509Certificate(r1.der).publicKey)).toBe(true);

    // The parent prepares a second root: it joins the child's bundle; the CA, still under r1, stays.
    fake.set({ published: [r1, r2] });
    fake.push();
    // The change runs on the manager's queue: a rotation step queued after it ends after it.
    await ca.rotate();
    expect(bundleRoots(ca)).toEqual([b64(r1.der), b64(r2.der)].sort());
    expect((await activeCa(ca)).keyId).toBe(first.keyId);

    // The parent revokes r1 and issues under r2: r1 leaves the bundle and the child's CA is re-minted under r2.
    fake.set({ issuing: r2, published: [r2] });
    fake.push();
    await ca.rotate();
    expect(bundleRoots(ca)).toEqual([b64(r2.der)]);
    const second = await activeCa(ca);
    expect(second.keyId).not.toBe(first.keyId);
    expect(second.cert.verify(new X509Certificate(r2.der).publicKey)).toBe(true);
    // What the CA now signs chains to r2.
    expect(ca.intermediates().map(b64)).toContain(b64(second.cert.raw));

    ca.stop();
    expect(fake.watching).toBe(false);
  });

  it("drops the withdrawn root even when the upstream refuses the new CA then, and replaces the CA at the next rotation step", async () => {
    const [r1, r2] = [makeRoot(), makeRoot()];
    const fake = fakeUpstream(r1);
    store = await createSqliteDatastore({ path: path.join(testTempDir("sigil-upstream-roots-"), "ds.sqlite3"), clock: systemClock });
    ca = new CaManager({ trustDomain: td, caTtlMs: 3_600_000, caKeyType: "ec-p256", jwtKeyType: "ec-p256" }, { keyManager: createMemoryKeyManager(), store, clock: systemClock, upstream: fake.upstream });
    await ca.start();
    const first = await activeCa(ca);
    fake.set({ issuing: r2, published: [r2] });
    fake.state.refusing = true; // the parent does not yet accept this server's SVID (its agent has not renewed it)
    await expect(ca.upstreamRootsChanged([r2.der])).rejects.toMatchObject({ code: "ERR_PERMISSION_DENIED" });
    expect(bundleRoots(ca)).toEqual([b64(r2.der)]);
    expect((await activeCa(ca)).keyId).toBe(first.keyId);
    fake.state.refusing = false;
    await ca.rotate();
    const second = await activeCa(ca);
    expect(second.keyId).not.toBe(first.keyId);
    expect(second.cert.verify(new X509Certificate(r2.der).publicKey)).toBe(true);
  });

  it("refuses an empty root set and keeps the bundle", async () => {
    const r1 = makeRoot();
    const fake = fakeUpstream(r1);
    store = await createSqliteDatastore({ path: path.join(testTempDir("sigil-upstream-roots-"), "ds.sqlite3"), clock: systemClock });
    ca = new CaManager({ trustDomain: td, caTtlMs: 3_600_000, caKeyType: "ec-p256", jwtKeyType: "ec-p256" }, { keyManager: createMemoryKeyManager(), store, clock: systemClock, upstream: fake.upstream });
    await ca.start();
    await expect(ca.upstreamRootsChanged([])).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    expect(bundleRoots(ca)).toEqual([b64(r1.der)]);
  });
});
