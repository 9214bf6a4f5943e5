/**
 * The agent's persisted state: round trip, file modes, atomic writes, and
 * discarding what must not be reused (expired, other trust domain, corrupt).
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { AGENT_SVID_FILE, AgentStateStore, BUNDLE_FILE } from "../../../../agent/storage/agent-state-store.js";
import { agentSvidFromChain, type AgentSvid } from "../../../../agent/storage/agent-svid.js";
import { writeFileAtomic } from "../../../../common/atomic-file.js";
import type { SpiffeBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { parseSpiffeId, parseTrustDomain, type TrustDomain } from "../../../../spiffe/id.js";
import { generateKeyPair, generateSigner } from "../../../../spiffe/signer.js";
import { createRootCa } from "../../../../spiffe/x509/ca.js";
import { issueLeaf, prepareLeafTemplate } from "../../../../spiffe/x509/leaf.js";
import { randomSerial } from "../../../../spiffe/x509/serial.js";

const HOUR = 3_600_000;
const T0 = new Date("2030-01-01T00:00:00Z");
const td = parseTrustDomain("example.org");
const root = mkdtempSync(path.join(tmpdir(), "sigil-agent-storage-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshDir = () => path.join(root, `d${n++}`, "data");

function makeCa(trustDomain: TrustDomain) {
  const signer = generateSigner("ec-p256");
  const caDer = createRootCa({ trustDomain, notBefore: new Date(T0.getTime() - HOUR), notAfter: new Date(T0.getTime() + 100 * HOUR), signer });
  return { caDer, template: prepareLeafTemplate({ issuerCertDer: caDer, issuerSigner: signer }) };
}
const ca = makeCa(td);

function agentSvid(id = "spiffe://example.org/spire/agent/join_token/t", c = ca): AgentSvid {
  const { privateKey, publicKey } = generateKeyPair("ec-p256");
  const leaf = issueLeaf(c.template, {
    spiffeId: parseSpiffeId(id),
    subjectPublicKeyDer: new Uint8Array(publicKey.export({ format: "der", type: "spki" })),
    serial: randomSerial(),
    notBefore: T0,
    notAfter: new Date(T0.getTime() + HOUR),
  });
  return agentSvidFromChain([leaf], privateKey);
}

const bundle = (seq = 7n): SpiffeBundle => ({ trustDomain: td, x509Authorities: [ca.caDer], jwtAuthorities: new Map([["k1", generateKeyPair("ec-p256").publicKey]]), sequenceNumber: seq });

describe("AgentStateStore", () => {
  it("round-trips the SVID with its key and the bundle; the key file is 0600 and the directory 0700", () => {
    const dir = freshDir();
    const store = new AgentStateStore(dir);
    const svid = agentSvid();
    const b = bundle(2n ** 60n);
    store.saveSvid(svid);
    store.saveBundle(b);
    expect(statSync(store.svidPath).mode & 0o777).toBe(0o600);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(readFileSync(store.svidPath, "utf8")).toMatch(/^-----BEGIN PRIVATE KEY-----[\s\S]*-----BEGIN CERTIFICATE-----/);

    const loaded = new AgentStateStore(dir).load({ trustDomain: td, now: new Date(T0.getTime() + HOUR / 2) });
    expect(loaded.discarded).toEqual([]);
    expect(loaded.svid?.spiffeId).toBe(svid.spiffeId);
    expect(loaded.svid?.chain).toEqual(svid.chain);
    expect(loaded.svid?.notAfter).toEqual(svid.notAfter);
    expect(loaded.svid?.privateKey.equals(svid.privateKey)).toBe(true);
    expect(loaded.bundle?.x509Authorities).toEqual([ca.caDer]);
    expect(loaded.bundle?.sequenceNumber).toBe(2n ** 60n);
    expect([...(loaded.bundle?.jwtAuthorities.keys() ?? [])]).toEqual(["k1"]);
  });

  it("starts empty when nothing is stored", () => {
    expect(new AgentStateStore(freshDir()).load({ trustDomain: td, now: T0 })).toEqual({ discarded: [] });
  });

  it("discards an expired SVID but keeps the bundle", () => {
    const store = new AgentStateStore(freshDir());
    store.saveSvid(agentSvid());
    store.saveBundle(bundle());
    const loaded = store.load({ trustDomain: td, now: new Date(T0.getTime() + HOUR) });
    expect(loaded.svid).toBeUndefined();
    expect(loaded.bundle).toBeDefined();
    expect(loaded.discarded).toEqual([`${AGENT_SVID_FILE}: expired at 2030-01-01T01:00:00.000Z`]);
  });

  it("discards state of another trust domain", () => {
    const store = new AgentStateStore(freshDir());
    store.saveSvid(agentSvid());
    store.saveBundle(bundle());
    const other = parseTrustDomain("other.org");
    const loaded = store.load({ trustDomain: other, now: T0 });
    expect(loaded.svid).toBeUndefined();
    expect(loaded.bundle).toBeUndefined();
    expect(loaded.discarded).toEqual([
      `${AGENT_SVID_FILE}: spiffe://example.org/spire/agent/join_token/t is not in trust domain other.org`,
      `${BUNDLE_FILE}: holds the bundle of example.org, not other.org`,
    ]);
  });

  it.each([
    ["garbage", "not pem at all", `${AGENT_SVID_FILE}: unreadable: expected one PRIVATE KEY block, found 0`],
    ["a truncated certificate", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", `${AGENT_SVID_FILE}: unreadable:`],
  ])("discards a corrupt SVID file (%s)", (_name, content, message) => {
    const store = new AgentStateStore(freshDir());
    store.saveSvid(agentSvid());
    writeFileSync(store.svidPath, content);
    const loaded = store.load({ trustDomain: td, now: T0 });
    expect(loaded.svid).toBeUndefined();
    expect(loaded.discarded[0]).toContain(message);
  });

  it("discards an SVID whose key does not match its certificate", () => {
    const store = new AgentStateStore(freshDir());
    const a = agentSvid();
    const b = agentSvid();
    store.saveSvid({ ...a, privateKey: b.privateKey });
    expect(store.load({ trustDomain: td, now: T0 }).discarded[0]).toMatch(/unreadable: .*private key does not match/);
  });

  it.each([
    ["truncated JSON", '{"trust_domain":"example.org","bundle":{"keys":[', "unreadable"],
    ["no bundle", '{"trust_domain":"example.org"}', "bundle is missing"],
    ["no authorities", '{"trust_domain":"example.org","bundle":{"keys":[]}}', "holds no X.509 authority"],
  ])("discards a corrupt bundle file (%s)", (_name, content, message) => {
    const store = new AgentStateStore(freshDir());
    store.saveBundle(bundle());
    writeFileSync(store.bundlePath, content);
    const loaded = store.load({ trustDomain: td, now: T0 });
    expect(loaded.bundle).toBeUndefined();
    expect(loaded.discarded[0]).toMatch(new RegExp(`^${BUNDLE_FILE}: .*${message}`));
  });

  it("replaces files atomically and leaves no temporary file", () => {
    const dir = freshDir();
    const store = new AgentStateStore(dir);
    store.saveSvid(agentSvid());
    const second = agentSvid();
    store.saveSvid(second);
    expect(readdirSync(dir).sort()).toEqual([AGENT_SVID_FILE]);
    expect(store.load({ trustDomain: td, now: T0 }).svid?.chain).toEqual(second.chain);
    store.clearSvid();
    expect(existsSync(store.svidPath)).toBe(false);
  });

  it("writeFileAtomic fails with the path named, leaves no temporary file, and sets the mode despite the umask", () => {
    const dir = path.join(root, "atomic");
    rmSync(dir, { recursive: true, force: true });
    const file = path.join(dir, "f");
    expect(() => writeFileAtomic(file, "x", 0o600)).toThrow(/^storage: cannot write .*atomic\/f: /);
    mkdirSync(dir);
    writeFileAtomic(file, "old", 0o640);
    expect(statSync(file).mode & 0o777).toBe(0o640);
    // The rename fails when the target is a non-empty directory: the temporary file is removed.
    const blocked = path.join(dir, "blocked");
    mkdirSync(path.join(blocked, "x"), { recursive: true });
    expect(() => writeFileAtomic(blocked, "new", 0o600)).toThrow(/^storage: cannot write /);
    expect(readdirSync(dir).sort()).toEqual(["blocked", "f"]);
    if (process.getuid?.() !== 0) {
      chmodSync(dir, 0o500); // no new files in the directory (root ignores this)
      expect(() => writeFileAtomic(file, "new", 0o640)).toThrow(/^storage: cannot write /);
      chmodSync(dir, 0o700);
    }
    expect(readFileSync(file, "utf8")).toBe("old");
  });
});
