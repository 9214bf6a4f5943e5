/**
 * `memory` KeyManager: keys live in process memory only and are lost on
 * restart (the CA then rotates to fresh keys). For tests and ephemeral servers.
 */
import { generateSigner, type KeyType, type Signer } from "../../../spiffe/signer.js";
import type { KeyManager } from "../types.js";

/** Creates a memory key manager. It takes no configuration. */
export function createMemoryKeyManager(): KeyManager {
  const keys = new Map<string, Signer>();
  return {
    name: "memory",
    async generateKey(id: string, keyType: KeyType): Promise<Signer> {
      const signer = generateSigner(keyType, id);
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
