import { statSync, writeFileSync, chmodSync, readFileSync, readdirSync, symlinkSync, lstatSync } from "node:fs";
import path from "node:path";
import { verify } from "node:crypto";
import { describe, expect, it } from "vitest";
import { createDiskKeyManager } from "../../../../plugins/keymanager/disk/index.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { testTempDir } from "../../../support/temp-dir.js";

const data = Buffer.from("to be signed");

describe("keymanager(memory)", () => {
  it("generates, returns and lists signers that verify", async () => {
    const km = createMemoryKeyManager();
    const s = await km.generateKey("x509-CA-A", "ec-p256");
    expect(s.id).toBe("x509-CA-A");
    expect(verify("sha256", data, s.publicKey, s.sign(data, { hash: "sha256" }))).toBe(true);
    expect(await km.getKey("x509-CA-A")).toBe(s);
    expect(await km.getKey("missing")).toBeUndefined();
    expect((await km.getKeys()).map((k) => k.id)).toEqual(["x509-CA-A"]);
  });
});

describe("keymanager(disk)", () => {
  it("persists keys with mode 0600 and reloads the same keys after restart", async () => {
    const dir = testTempDir("sigil-km-");
    const keysPath = path.join(dir, "sub", "keys.json");
    const km1 = createDiskKeyManager({ keys_path: keysPath });
    const a = await km1.generateKey("jwt-A", "ec-p256");
    const b = await km1.generateKey("x509-CA-A", "rsa-2048");
    expect(statSync(keysPath).mode & 0o777).toBe(0o600);

    const km2 = createDiskKeyManager({ keys_path: keysPath });
    const a2 = await km2.getKey("jwt-A");
    const b2 = await km2.getKey("x509-CA-A");
    expect(a2?.publicKey.export({ format: "der", type: "spki" })).toEqual(a.publicKey.export({ format: "der", type: "spki" }));
    expect(b2?.keyType).toBe("rsa-2048");
    // A signature from the reloaded key verifies under the original public key.
    expect(verify("sha256", data, b.publicKey, b2!.sign(data, { hash: "sha256" }))).toBe(true);
  });

  it("never writes the private key anywhere but the key file, and the Signer exposes no key bytes", async () => {
    const dir = testTempDir("sigil-km-");
    const km = createDiskKeyManager({ keys_path: path.join(dir, "keys.json") });
    const s = await km.generateKey("k", "ec-p256");
    expect(Object.keys(s).sort()).toEqual(["id", "keyType", "publicKey", "sign"]);
    expect(JSON.stringify(s)).not.toMatch(/PRIVATE KEY/);
  });

  it("refuses a key file readable by group or others", async () => {
    const dir = testTempDir("sigil-km-");
    const keysPath = path.join(dir, "keys.json");
    await createDiskKeyManager({ keys_path: keysPath }).generateKey("k", "ec-p256");
    chmodSync(keysPath, 0o644);
    let caught: unknown;
    try { createDiskKeyManager({ keys_path: keysPath }); } catch (e) { caught = e; }
    expect(isSigilError(caught, "ERR_PERMISSION_DENIED")).toBe(true);
    expect((caught as Error).message).toMatch(/mode 644/);
  });

  it("refuses a corrupt key file with an error naming it", () => {
    const dir = testTempDir("sigil-km-");
    const keysPath = path.join(dir, "keys.json");
    writeFileSync(keysPath, "{not json", { mode: 0o600 });
    expect(() => createDiskKeyManager({ keys_path: keysPath })).toThrow(/keys\.json is not a valid key file/);
    expect(readFileSync(keysPath, "utf8")).toBe("{not json");
  });

  it("writes through a fresh temporary name: a symlink planted at the old fixed name (keys.json.tmp-<pid>) is not followed", async () => {
    const dir = testTempDir("sigil-km-");
    const keysPath = path.join(dir, "keys.json");
    const victim = path.join(dir, "victim");
    writeFileSync(victim, "precious", { mode: 0o644 });
    const planted = `${keysPath}.tmp-${process.pid}`;
    symlinkSync(victim, planted);
    const km = createDiskKeyManager({ keys_path: keysPath });
    await km.generateKey("k", "ec-p256");
    expect(readFileSync(victim, "utf8")).toBe("precious");
    expect(statSync(victim).mode & 0o777).toBe(0o644);
    expect(lstatSync(planted).isSymbolicLink()).toBe(true);
    expect(lstatSync(keysPath).isFile()).toBe(true);
    expect(readFileSync(keysPath, "utf8")).toMatch(/"k"/);
    // Nothing else is left in the directory: the temporary file was renamed into place.
    expect(readdirSync(dir).sort()).toEqual(["keys.json", "keys.json.tmp-" + process.pid, "victim"].sort());
  });

  it("refuses a key directory writable by group or others, at load and before writing, naming it with its owner and mode", async () => {
    const dir = testTempDir("sigil-km-");
    const keysPath = path.join(dir, "keys.json");
    const km = createDiskKeyManager({ keys_path: keysPath });
    await km.generateKey("k", "ec-p256");
    const before = readFileSync(keysPath, "utf8");
    chmodSync(dir, 0o777);
    const expected = `refusing to use directory ${dir}: it is owned by uid ${process.geteuid?.()} with mode 0777`;
    await expect(km.generateKey("k2", "ec-p256")).rejects.toSatisfy((e) => isSigilError(e, "ERR_PERMISSION_DENIED") && (e as Error).message.includes(expected));
    expect(readFileSync(keysPath, "utf8")).toBe(before);
    expect(() => createDiskKeyManager({ keys_path: keysPath })).toThrow(`keymanager(disk): ${expected}`);
    chmodSync(dir, 0o775);
    expect(() => createDiskKeyManager({ keys_path: keysPath })).toThrow(/mode 0775/);
    chmodSync(dir, 0o700);
    expect((await createDiskKeyManager({ keys_path: keysPath }).getKeys()).map((k) => k.id)).toEqual(["k"]);
  });
});
