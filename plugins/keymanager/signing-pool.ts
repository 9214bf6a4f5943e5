/**
 * Signing threads for key managers. The server's main thread parses requests
 * and builds certificates; signing (the largest share of an SVID's cost)
 * moves to worker threads, so issuance uses more than one core. Private
 * `KeyObject`s are handed to the threads as key objects, never as bytes, and
 * stay inside the key manager's process.
 */
import type { KeyObject } from "node:crypto";
import { Worker } from "node:worker_threads";
import { SigilError } from "../../spiffe/errors.js";
import { createKeyObjectSigner, type SignOptions, type Signer } from "../../spiffe/signer.js";

/** Messages to a signing thread. */
export type PoolRequest =
  | { readonly kind: "load"; readonly handle: number; readonly key: KeyObject }
  | { readonly kind: "drop"; readonly handle: number }
  | { readonly kind: "sign"; readonly id: number; readonly handle: number; readonly data: readonly Uint8Array[]; readonly options: SignOptions };

/** A signing thread's answer to one `sign` request. */
export type PoolResponse = { readonly id: number; readonly signatures: Uint8Array[] } | { readonly id: number; readonly error: string };

/**
 * The signing thread: plain JavaScript run with `eval`, so starting one loads
 * no module through the process's loader (a TypeScript loader registering
 * itself in a thread can deadlock against the main thread's hooks on Node 20).
 * The signature itself is made as `signWithKey` in spiffe/signer.ts makes it.
 */
const THREAD_SOURCE = `
const { parentPort } = require("node:worker_threads");
const { sign } = require("node:crypto");
const keys = new Map();
function signOne(k, data, o) {
  if (k.key.asymmetricKeyType === "ed25519") return sign(null, data, k.key);
  if (k.isRsa) return sign(o.hash, data, o.rsaPadding === "pss" ? { key: k.key, padding: 6, saltLength: -1 } : { key: k.key });
  return sign(o.hash, data, { key: k.key, dsaEncoding: o.dsaEncoding || "der" });
}
parentPort.on("message", (m) => {
  if (m.kind === "load") return void keys.set(m.handle, { key: m.key, isRsa: m.key.asymmetricKeyType === "rsa" });
  if (m.kind === "drop") return void keys.delete(m.handle);
  const k = keys.get(m.handle);
  if (!k) return parentPort.postMessage({ id: m.id, error: "key " + m.handle + " is not loaded in this signing thread" });
  try {
    const signatures = m.data.map((d) => new Uint8Array(signOne(k, d, m.options)));
    parentPort.postMessage({ id: m.id, signatures }, signatures.map((s) => s.buffer));
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: String((e && e.message) || e) });
  }
});
`;

interface Thread {
  readonly worker: Worker;
  readonly pending: Map<number, { resolve(s: Uint8Array[]): void; reject(e: Error): void }>;
}

/**
 * A set of signing threads shared by a key manager's keys. Threads start with
 * the first batch (a server that never signs batches runs none), and one that
 * stops is replaced by the next batch.
 */
export class SigningPool {
  readonly #size: number;
  readonly #threads: Thread[] = [];
  /** Keys handed out as pooled Signers, by handle: loaded into every thread, also ones started later. */
  readonly #keys = new Map<number, KeyObject>();
  #nextId = 1;
  #nextHandle = 1;
  #closed = false;
  // A collected Signer's key is dropped from every thread.
  readonly #finalizer = new FinalizationRegistry<number>((handle) => {
    this.#keys.delete(handle);
    this.#broadcast({ kind: "drop", handle });
  });

  /** @param size number of signing threads (at least 1). */
  constructor(size: number) {
    if (!Number.isInteger(size) || size < 1) throw new SigilError("ERR_INVALID_ARGUMENT", `keys: a signing pool needs at least one thread, got ${size}`);
    this.#size = size;
  }

  /** Number of signing threads the pool runs once in use. */
  get size(): number {
    return this.#size;
  }

  /** Signing threads running now. */
  get running(): number {
    return this.#threads.length;
  }

  #startThread(): Thread {
    const worker = new Worker(THREAD_SOURCE, { eval: true });
    worker.unref();
    const thread: Thread = { worker, pending: new Map() };
    worker.on("message", (m: PoolResponse) => {
      const p = thread.pending.get(m.id);
      if (!p) return;
      thread.pending.delete(m.id);
      if ("error" in m) p.reject(new SigilError("ERR_INTERNAL", `keys: signing thread failed: ${m.error}`));
      else p.resolve(m.signatures);
    });
    const fail = (e: Error): void => {
      const at = this.#threads.indexOf(thread);
      if (at >= 0) this.#threads.splice(at, 1);
      for (const p of thread.pending.values()) p.reject(new SigilError("ERR_UNAVAILABLE", `keys: signing thread stopped: ${e.message}`, { cause: e }));
      thread.pending.clear();
    };
    worker.on("error", fail);
    worker.on("exit", () => fail(new Error("signing thread exited")));
    for (const [handle, key] of this.#keys) worker.postMessage({ kind: "load", handle, key } satisfies PoolRequest);
    return thread;
  }

  #broadcast(m: PoolRequest): void {
    if (this.#closed) return;
    for (const t of this.#threads) t.worker.postMessage(m);
  }

  /**
   * Wraps `privateKey` as a Signer whose `signBatch` runs on the pool's
   * threads (its `sign` still signs in-line, for single signatures).
   */
  signer(privateKey: KeyObject, id: string): Signer {
    const inline = createKeyObjectSigner(privateKey, id);
    const handle = this.#nextHandle++;
    this.#keys.set(handle, privateKey);
    this.#broadcast({ kind: "load", handle, key: privateKey });
    const signer: Signer = Object.freeze({
      id: inline.id,
      keyType: inline.keyType,
      publicKey: inline.publicKey,
      sign: inline.sign,
      signBatch: (data: readonly Uint8Array[], options: SignOptions) => this.#sign(handle, data, options, inline),
    });
    this.#finalizer.register(signer, handle);
    return signer;
  }

  #sign(handle: number, data: readonly Uint8Array[], options: SignOptions, inline: Signer): Promise<Uint8Array[]> {
    if (data.length === 0) return Promise.resolve([]);
    // Once closed, sign in-line: slower, never unavailable.
    if (this.#closed) {
      try {
        return Promise.resolve(data.map((d) => inline.sign(d, options)));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    while (this.#threads.length < this.#size) this.#threads.push(this.#startThread());
    // The least busy thread takes the batch.
    let thread = this.#threads[0] as Thread;
    for (const t of this.#threads) if (t.pending.size < thread.pending.size) thread = t;
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      thread.pending.set(id, { resolve, reject });
      thread.worker.postMessage({ kind: "sign", id, handle, data, options } satisfies PoolRequest);
    });
  }

  /** Stops every thread; outstanding batches fail with ERR_UNAVAILABLE, later ones are signed in-line. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#threads.map((t) => t.worker.terminate()));
  }
}

/** What key managers take besides their config. */
export interface KeyManagerDeps {
  /** Signing threads for batch signatures; without it every signature is made in-line. */
  readonly signingPool?: SigningPool | undefined;
}

/** A key manager's Signer for `privateKey`: pooled when the key manager has signing threads. */
export function keyManagerSigner(deps: KeyManagerDeps, privateKey: KeyObject, id: string): Signer {
  return deps.signingPool ? deps.signingPool.signer(privateKey, id) : createKeyObjectSigner(privateKey, id);
}
