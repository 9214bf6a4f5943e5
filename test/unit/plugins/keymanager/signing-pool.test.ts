/**
 * Signing threads of the key managers: batch signatures verify with the
 * key's public key and keep their order, keys stay apart, and the CA signs a
 * batch of X509-SVIDs through them with per-request errors kept in place.
 */
import { generateKeyPairSync, verify, X509Certificate } from "node:crypto";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { createDiskKeyManager } from "../../../../plugins/keymanager/disk/index.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import { SigningPool } from "../../../../plugins/keymanager/signing-pool.js";
import type { KeyManager } from "../../../../plugins/keymanager/types.js";
import { CaManager } from "../../../../server/ca/manager.js";
import { createSqliteDatastore } from "../../../../server/datastore/index.js";
import { signingThreads } from "../../../../server/main.js";
import { toX509Bundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { SigilError } from "../../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { generateKeyPair } from "../../../../spiffe/signer.js";
import { StaticX509BundleSource } from "../../../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../../../spiffe/x509/verify.js";
import { testTempDir } from "../../../support/temp-dir.js";

const pool = new SigningPool(2);
afterAll(() => pool.close());

const spki = () => new Uint8Array(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).publicKey.export({ format: "der", type: "spki" }));

describe("SigningPool", () => {
  it("signs a batch off-thread: one signature per payload, in order, verifying with the key", async () => {
    const { privateKey } = generateKeyPair("ec-p256");
    const signer = pool.signer(privateKey, "k1");
    // Threads start with the first batch, and get every key handed out before.
    expect(pool.running).toBe(0);
    const data = Array.from({ length: 50 }, (_, i) => Buffer.from(`payload ${i}`));
    const sigs = await signer.signBatch!(data, { hash: "sha256" });
    expect(sigs).toHaveLength(50);
    sigs.forEach((sig, i) => expect(verify("sha256", data[i] as Buffer, signer.publicKey, sig)).toBe(true));
    expect(pool.running).toBe(2);
    // Signature i is over payload i, not any other.
    expect(verify("sha256", data[1] as Buffer, signer.publicKey, sigs[0] as Uint8Array)).toBe(false);
    // The in-line path of the same Signer still works.
    expect(verify("sha256", Buffer.from("x"), signer.publicKey, signer.sign(Buffer.from("x"), { hash: "sha256" }))).toBe(true);
  });

  it("keeps keys apart, including RSA with PSS and ECDSA in P1363 form", async () => {
    const ec = pool.signer(generateKeyPair("ec-p256").privateKey, "ec");
    const rsa = pool.signer(generateKeyPair("rsa-2048").privateKey, "rsa");
    const [ecSigs, rsaSigs] = await Promise.all([
      ec.signBatch!([Buffer.from("a"), Buffer.from("b")], { hash: "sha256", dsaEncoding: "ieee-p1363" }),
      rsa.signBatch!([Buffer.from("a")], { hash: "sha256", rsaPadding: "pss" }),
    ]);
    expect(ecSigs.map((s) => s.length)).toEqual([64, 64]);
    expect(verify("sha256", Buffer.from("b"), { key: ec.publicKey, dsaEncoding: "ieee-p1363" }, ecSigs[1] as Uint8Array)).toBe(true);
    expect(verify("sha256", Buffer.from("a"), { key: rsa.publicKey, padding: 6, saltLength: -1 }, rsaSigs[0] as Uint8Array)).toBe(true);
    expect(verify("sha256", Buffer.from("a"), ec.publicKey, (rsaSigs[0] as Uint8Array).subarray(0, 64))).toBe(false);
  });

  it("refuses to start without threads; with no thread left, signs in-line", async () => {
    expect(() => new SigningPool(0)).toThrow(/at least one thread/);
    const small = new SigningPool(1);
    const signer = small.signer(generateKeyPair("ec-p256").privateKey, "k");
    await small.close();
    const sigs = await signer.signBatch!([Buffer.from("a"), Buffer.from("b")], { hash: "sha256" });
    expect(verify("sha256", Buffer.from("b"), signer.publicKey, sigs[1] as Uint8Array)).toBe(true);
  });

  it("key managers hand out pooled Signers only when given a pool", async () => {
    const pooled = await createMemoryKeyManager({ signingPool: pool }).generateKey("a", "ec-p256");
    expect(typeof pooled.signBatch).toBe("function");
    expect((await createMemoryKeyManager().generateKey("a", "ec-p256")).signBatch).toBeUndefined();
    // The disk key manager's keys, reloaded from the file, are pooled too.
    const keysPath = path.join(testTempDir("sigil-pool-"), "keys.json");
    await createDiskKeyManager({ keys_path: keysPath }, { signingPool: pool }).generateKey("b", "ec-p256");
    const reloaded = await createDiskKeyManager({ keys_path: keysPath }, { signingPool: pool }).getKey("b");
    const sig = await reloaded!.signBatch!([Buffer.from("z")], { hash: "sha256" });
    expect(verify("sha256", Buffer.from("z"), reloaded!.publicKey, sig[0] as Uint8Array)).toBe(true);
  });

  it("server.signing_threads defaults to one less than the cores, at most 4", () => {
    expect([1, 2, 3, 8, 64].map((cores) => signingThreads(undefined, cores))).toEqual([0, 1, 2, 4, 4]);
    expect(signingThreads(0, 8)).toBe(0);
    expect(signingThreads(6, 2)).toBe(6);
  });
});

describe("CaManager.signX509SvidBatch", () => {
  const td = parseTrustDomain("example.org");
  const T0 = new Date("2026-06-01T00:00:00Z");

  async function caWith(keyManager: KeyManager, start = true) {
    const clock = new ManualClock(T0);
    const store = await createSqliteDatastore({ path: path.join(testTempDir("sigil-cab-"), "ds.sqlite3"), clock });
    const ca = new CaManager({ trustDomain: td, caTtlMs: 24 * 3600_000, caKeyType: "ec-p256", jwtKeyType: "ec-p256" }, { keyManager, store, clock });
    if (start) await ca.start();
    return { ca, store };
  }
  const req = (name: string, publicKeyDer = spki()) => ({ spiffeId: parseSpiffeId(`spiffe://example.org/${name}`), publicKeyDer, ttlMs: 3600_000 });

  it("never rejects: without an active CA every request gets the error", async () => {
    const { ca, store } = await caWith(createMemoryKeyManager({ signingPool: pool }), false);
    const results = await ca.signX509SvidBatch([req("a"), req("b")]);
    expect(results.map((r) => (r instanceof SigilError ? r.code : "ok"))).toEqual(["ERR_UNAVAILABLE", "ERR_UNAVAILABLE"]);
    expect(await ca.signX509SvidBatch([])).toEqual([]);
    await store.close();
  });

  it("a failed batch signature refuses the requests it covers; refusals from before keep their own reason", async () => {
    const inner = createMemoryKeyManager({ signingPool: pool });
    const failing: KeyManager = {
      ...inner,
      generateKey: async (id, keyType) => {
        const s = await inner.generateKey(id, keyType);
        return { ...s, sign: s.sign, signBatch: () => Promise.reject(new Error("signing thread lost")) };
      },
    };
    const { ca, store } = await caWith(failing);
    const results = await ca.signX509SvidBatch([req("a"), req("b", Uint8Array.of(0x30, 0x00)), req("c")]);
    expect(results.map((r) => (r instanceof SigilError ? r.message : "ok"))).toEqual([
      "ca: signing failed: signing thread lost",
      expect.stringContaining("subject public key"),
      "ca: signing failed: signing thread lost",
    ]);
    await store.close();
  });

  for (const withPool of [true, false]) {
    it(`signs every acceptable request and keeps each refusal in its place (${withPool ? "signing threads" : "in-line"})`, async () => {
      const clock = new ManualClock(T0);
      const store = await createSqliteDatastore({ path: path.join(testTempDir("sigil-cab-"), "ds.sqlite3"), clock });
      const ca = new CaManager(
        { trustDomain: td, caTtlMs: 24 * 3600_000, caKeyType: "ec-p256", jwtKeyType: "ec-p256" },
        { keyManager: createMemoryKeyManager(withPool ? { signingPool: pool } : {}), store, clock },
      );
      await ca.start();
      const ids = ["a", "b", "other", "c"].map((n) => parseSpiffeId(n === "other" ? "spiffe://other.org/x" : `spiffe://example.org/${n}`));
      const results = await ca.signX509SvidBatch(
        ids.map((spiffeId, i) => ({ spiffeId, publicKeyDer: i === 3 ? Uint8Array.of(0x30, 0x00) : spki(), ttlMs: 48 * 3600_000, dnsNames: i === 1 ? ["b.example.org"] : [] })),
      );
      expect(results.map((r) => (r instanceof SigilError ? r.code : "ok"))).toEqual(["ok", "ok", "ERR_X509_BUILD", "ERR_X509_BUILD"]);
      expect((results[2] as SigilError).message).toContain("not in the issuer's trust domain");
      const source = new StaticX509BundleSource([toX509Bundle(ca.bundle())]);
      for (const [i, r] of results.slice(0, 2).entries()) {
        const issued = r as Exclude<typeof r, SigilError>;
        expect(verifyX509Svid(issued.chain, source, { now: clock.now() }).id.equals(ids[i]!)).toBe(true);
        // Capped at the CA's lifetime, serial as recorded.
        const cert = new X509Certificate(Buffer.from(issued.chain[0] as Uint8Array));
        expect(Date.parse(cert.validTo)).toBeLessThanOrEqual(T0.getTime() + 24 * 3600_000);
        expect(cert.serialNumber.toLowerCase().replace(/^0+/, "")).toBe(issued.serial);
      }
      expect(new X509Certificate(Buffer.from((results[1] as { chain: readonly Uint8Array[] }).chain[0]!)).subjectAltName).toContain("DNS:b.example.org");
      await store.close();
    });
  }
});
