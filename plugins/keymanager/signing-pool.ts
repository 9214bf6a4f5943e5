/**
 * Signing threads for key managers. The server's main thread parses requests
 * and builds certificates; signing (the largest share of an SVID's cost)
 * moves to worker threads, so issuance uses more than one core. Private
 * `KeyObject`s are handed to the threads as key objects, never as bytes, and
 * stay inside the key manager's process.
 */
import type { KeyObject } from "node:crypto";
import type { Worker } from "node:worker_threads";
import { startModuleWorker } from "../../common/worker.js";
import { SigilError } from "../../spiffe/errors.js";
import { createKeyObjectSigner, type SignOptions, type Signer } from "../../spiffe/signer.js";

/** Messages to a signing thread. */
export type PoolRequest =
  | { readonly kind: "load"; readonly handle: number; readonly key: KeyObject }
  | { readonly kind: "drop"; readonly handle: number }
  | { readonly kind: "sign"; readonly id: number; readonly handle: number; readonly data: readonly Uint8Array[]; readonly options: SignOptions };

/** A signing thread's answer to one `sign` request. */
export type PoolResponse = { readonly id: number; readonly signatures: Uint8Array[] } | { readonly id: number; readonly error: string };

interface Thread {
  readonly worker: Worker;
  readonly pending: Map<number, { resolve(s: Uint8Array[]): void; reject(e: Error): void }>;
  dead?: Error;
}

/** A fixed set of signing threads shared by a key manager's keys. */
export class SigningPool {
  readonly #threads: Thread[];
  #nextId = 1;
  #nextHandle = 1;
  #closed = false;
  // A collected Signer's key is dropped from every thread.
  readonly #finalizer = new FinalizationRegistry<number>((handle) => this.#broadcast({ kind: "drop", handle }));

  /** @param size number of signing threads (at least 1). */
  constructor(size: number) {
    if (!Number.isInteger(size) || size < 1) throw new SigilError("ERR_INVALID_ARGUMENT", `keys: a signing pool needs at least one thread, got ${size}`);
    this.#threads = Array.from({ length: size }, () => this.#startThread());
  }

  /** Number of signing threads. */
  get size(): number {
    return this.#threads.length;
  }

  #startThread(): Thread {
    const thread: Thread = { worker: startModuleWorker(import.meta.url, "signing-worker", null), pending: new Map() };
    thread.worker.on("message", (m: PoolResponse) => {
      const p = thread.pending.get(m.id);
      if (!p) return;
      thread.pending.delete(m.id);
      if ("error" in m) p.reject(new SigilError("ERR_INTERNAL", `keys: signing thread failed: ${m.error}`));
      else p.resolve(m.signatures.map((s) => new Uint8Array(s.buffer, s.byteOffset, s.byteLength)));
    });
    const fail = (e: Error): void => {
      thread.dead = e;
      for (const p of thread.pending.values()) p.reject(new SigilError("ERR_UNAVAILABLE", `keys: signing thread stopped: ${e.message}`, { cause: e }));
      thread.pending.clear();
    };
    thread.worker.on("error", fail);
    thread.worker.on("exit", () => fail(new Error("signing thread exited")));
    return thread;
  }

  #broadcast(m: PoolRequest): void {
    if (this.#closed) return;
    for (const t of this.#threads) if (!t.dead) t.worker.postMessage(m);
  }

  /**
   * Wraps `privateKey` as a Signer whose `signBatch` runs on the pool's
   * threads (its `sign` still signs in-line, for single signatures).
   */
  signer(privateKey: KeyObject, id: string): Signer {
    const inline = createKeyObjectSigner(privateKey, id);
    const handle = this.#nextHandle++;
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
    // The least busy live thread takes the batch.
    let thread: Thread | undefined;
    if (!this.#closed) for (const t of this.#threads) if (!t.dead && (!thread || t.pending.size < thread.pending.size)) thread = t;
    // With no thread left (closed, or every one stopped), sign in-line: slower, never unavailable.
    if (!thread) {
      try {
        return Promise.resolve(data.map((d) => inline.sign(d, options)));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    const id = this.#nextId++;
    const chosen = thread;
    return new Promise((resolve, reject) => {
      chosen.pending.set(id, { resolve, reject });
      const m: PoolRequest = { kind: "sign", id, handle, data, options };
      chosen.worker.postMessage(m);
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
