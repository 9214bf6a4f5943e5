/**
 * `memory` KeyManager: keys live in process memory only and are lost on
 * restart (the CA then rotates to fresh keys). For tests and ephemeral servers.
 */
import { generateKeyPair, type KeyType, type Signer } from "../../../spiffe/signer.js";
import { keyManagerSigner, type KeyManagerDeps } from "../signing-pool.js";
import type { KeyManager } from "../types.js";
import { noSettings } from "../../../common/config/fields.js";
import { pluginHalf, type PluginDescriptor } from "../../descriptor.js";

/** Creates a memory key manager. It takes no configuration. */
export function createMemoryKeyManager(deps: KeyManagerDeps = {}): KeyManager {
  const keys = new Map<string, Signer>();
  return {
    name: "memory",
    async generateKey(id: string, keyType: KeyType): Promise<Signer> {
      const signer = keyManagerSigner(deps, generateKeyPair(keyType).privateKey, id);
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

/** The `memory` KeyManager in the plugin catalog. */
export const memoryKeyManagerPlugin: PluginDescriptor<"KeyManager", KeyManagerDeps, KeyManager> = {
  type: "KeyManager",
  name: "memory",
  server: pluginHalf({
    description: "Keys in memory only; a restart creates a new CA. For development and tests.",
    configSchema: noSettings(),
    create: (_config, deps: KeyManagerDeps) => createMemoryKeyManager(deps),
  }),
};
