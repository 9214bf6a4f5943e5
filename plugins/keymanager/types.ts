/**
 * The KeyManager plugin type: the only holder of private keys. Everything else
 * gets `Signer` handles from it, never key bytes.
 */
import type { KeyType, Signer } from "../../spiffe/signer.js";

/** A store of signing keys addressed by the caller's key ID (e.g. "x509-CA-A"). */
export interface KeyManager {
  /** The plugin name, for logs and metrics. */
  readonly name: string;
  /** Generates a new key under `id`, replacing any existing key with that ID. */
  generateKey(id: string, keyType: KeyType): Promise<Signer>;
  /** The key with this ID, or undefined. */
  getKey(id: string): Promise<Signer | undefined>;
  /** Every key held. */
  getKeys(): Promise<Signer[]>;
}
