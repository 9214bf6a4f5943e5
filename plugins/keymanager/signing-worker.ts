/**
 * Worker side of {@link SigningPool}: holds private `KeyObject`s handed over by
 * the key manager (never as bytes) and signs batches with them.
 */
import type { KeyObject } from "node:crypto";
import { parentPort } from "node:worker_threads";
import { signWithKey, type SignOptions } from "../../spiffe/signer.js";
import type { PoolRequest, PoolResponse } from "./signing-pool.js";

const keys = new Map<number, { key: KeyObject; isRsa: boolean }>();

function reply(m: PoolResponse, transfer: ArrayBuffer[] = []): void {
  parentPort?.postMessage(m, transfer);
}

function signAll(id: number, handle: number, data: readonly Uint8Array[], options: SignOptions): void {
  const k = keys.get(handle);
  if (!k) return reply({ id, error: `key ${handle} is not loaded in this signing thread` });
  try {
    const signatures = data.map((d) => signWithKey(k.key, k.isRsa, d, options));
    reply({ id, signatures }, signatures.map((s) => s.buffer as ArrayBuffer));
  } catch (e) {
    reply({ id, error: (e as Error).message });
  }
}

parentPort?.on("message", (m: PoolRequest) => {
  if (m.kind === "load") keys.set(m.handle, { key: m.key, isRsa: m.key.asymmetricKeyType === "rsa" });
  else if (m.kind === "drop") keys.delete(m.handle);
  else signAll(m.id, m.handle, m.data, m.options);
});
