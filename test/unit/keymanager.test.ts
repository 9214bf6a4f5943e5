import { mkdtempSync, statSync, writeFileSync, chmodSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { verify } from "node:crypto";
import { describe, expect, it } from "vitest";
import { createDiskKeyManager } from "../../plugins/keymanager/disk/index.js";
import { createMemoryKeyManager } from "../../plugins/keymanager/memory/index.js";
import { isSigilError } from "../../spiffe/errors.js";

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
    const dir = mkdtempSync(path.join(tmpdir(), "sigil-km-"));
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
    const dir = mkdtempSync(path.join(tmpdir(), "sigil-km-"));
    const km = createDiskKeyManager({ keys_path: path.join(dir, "keys.json") });
    const s = await km.generateKey("k", "ec-p256");
    expect(Object.keys(s).sort()).toEqual(["id", "keyType", "publicKey", "sign"]);
    expect(JSON.stringify(s)).not.toMatch(/PRIVATE KEY/);
  });

  it("refuses a key file readable by group or others", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "sigil-km-"));
    const keysPath = path.join(dir, "keys.json");
    await createDiskKeyManager({ keys_path: keysPath }).generateKey("k", "ec-p256");
    chmodSync(keysPath, 0o644);
    let caught: unknown;
    try { createDiskKeyManager({ keys_path: keysPath }); } catch (e) { caught = e; }
    expect(isSigilError(caught, "ERR_PERMISSION_DENIED")).toBe(true);
    expect((caught as Error).message).toMatch(/mode 644/);
  });

  it("refuses a corrupt key file with an error naming it", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "sigil-km-"));
    const keysPath = path.join(dir, "keys.json");
    writeFileSync(keysPath, "{not json", { mode: 0o600 });
    expect(() => createDiskKeyManager({ keys_path: keysPath })).toThrow(/keys\.json is not a valid key file/);
    expect(readFileSync(keysPath, "utf8")).toBe("{not json");
  });
});
