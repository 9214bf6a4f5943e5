/**
 * `disk` KeyManager: keys survive restart in one JSON file (mode 0600) holding
 * PKCS#8 PEM per key ID. Every change is written atomically (`writeFileAtomic`:
 * a fresh random temporary name opened `O_EXCL | O_NOFOLLOW`, fsync, rename,
 * fsync of the directory), so a crash leaves either the old or the new set,
 * never a torn file. The directory (created 0700) must belong to the server's
 * user and not be writable by group or others, checked at load and before
 * every write: whoever could write there could swap the CA keys. Keys are
 * parsed once at load into KeyObjects.
 */
import { createPrivateKey } from "node:crypto";
import { existsSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../../../common/atomic-file.js";
import { checkSecureDirectory, ensureSecureDirectory } from "../../../common/secure-dir.js";
import { SigilError } from "../../../spiffe/errors.js";
import { generateKeyPair, type KeyType, type Signer } from "../../../spiffe/signer.js";
import { keyManagerSigner, type KeyManagerDeps } from "../signing-pool.js";
import type { KeyManager } from "../types.js";
import { pluginHalf, type PluginDescriptor } from "../../descriptor.js";

/** Configuration of the disk key manager. */
export const diskKeyManagerConfigSchema = z.strictObject({
  keys_path: z.string().min(1).describe("File holding the keys (created with mode 0600)."),
});

/** Parsed disk key manager configuration. */
export type DiskKeyManagerConfig = z.infer<typeof diskKeyManagerConfigSchema>;

const SUBSYSTEM = "keymanager(disk)";

const fileSchema = z.strictObject({
  version: z.literal(1),
  keys: z.record(z.string(), z.strictObject({ key_type: z.string(), pkcs8_pem: z.string() })),
});

/** Creates a disk key manager, loading any keys already in `keys_path`. */
export function createDiskKeyManager(config: DiskKeyManagerConfig, deps: KeyManagerDeps = {}): KeyManager {
  const file = path.resolve(config.keys_path);
  const pems = new Map<string, { key_type: string; pkcs8_pem: string }>();
  const keys = new Map<string, Signer>();
  load();

  function load(): void {
    if (existsSync(path.dirname(file))) checkSecureDirectory(path.dirname(file), SUBSYSTEM);
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
      throw new SigilError("ERR_INTERNAL", `keymanager(disk): cannot read ${file}: ${(e as Error).message}`, { cause: e });
    }
    const mode = statSync(file).mode & 0o777;
    if (mode & 0o077) {
      throw new SigilError("ERR_PERMISSION_DENIED", `keymanager(disk): ${file} has mode ${mode.toString(8)}; it must not be readable by group or others (0600)`);
    }
    let parsed: z.infer<typeof fileSchema>;
    try {
      parsed = fileSchema.parse(JSON.parse(text));
    } catch (e) {
      throw new SigilError("ERR_INTERNAL", `keymanager(disk): ${file} is not a valid key file`, { cause: e });
    }
    for (const [id, entry] of Object.entries(parsed.keys)) {
      pems.set(id, entry);
      keys.set(id, keyManagerSigner(deps, createPrivateKey(entry.pkcs8_pem), id));
    }
  }

  function persist(): void {
    ensureSecureDirectory(path.dirname(file), 0o700, SUBSYSTEM);
    writeFileAtomic(file, JSON.stringify({ version: 1, keys: Object.fromEntries(pems) }, null, 2), 0o600, { subsystem: SUBSYSTEM });
  }

  return {
    name: "disk",
    async generateKey(id: string, keyType: KeyType): Promise<Signer> {
      const { privateKey } = generateKeyPair(keyType);
      const pem = privateKey.export({ format: "pem", type: "pkcs8" }).toString();
      pems.set(id, { key_type: keyType, pkcs8_pem: pem });
      persist();
      const signer = keyManagerSigner(deps, privateKey, id);
      keys.set(id, signer);
      return signer;
    },
    async getKey(id: string): Promise<Signer | undefined> {
      return keys.get(id);
    },
    async getKeys(): Promise<Signer[]> {
      return [...keys.values()];
    },
  };
}

/** The `disk` KeyManager in the plugin catalog. */
export const diskKeyManagerPlugin: PluginDescriptor<"KeyManager", KeyManagerDeps, KeyManager> = {
  type: "KeyManager",
  name: "disk",
  server: pluginHalf({
    description: "Keys persisted in one file (mode 0600), written atomically; its directory must be the server user's alone.",
    configSchema: diskKeyManagerConfigSchema,
    create: (config, deps: KeyManagerDeps) => createDiskKeyManager(config, deps),
  }),
};
