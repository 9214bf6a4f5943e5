/**
 * The log side of witnessing (C2SP tlog-witness): each checkpoint the log
 * signs is sent to every configured witness with a consistency proof from
 * the size that witness last cosigned, and the cosignatures that come back
 * are added to the served checkpoint (`/checkpoint`, `log checkpoint`,
 * `log prove`) and stored with it.
 *
 * Nothing here is on the issuance path: submissions run in the background,
 * one at a time per witness and always for the latest checkpoint (one signed
 * meanwhile is skipped). A witness's size is learnt from its 409 answer
 * (the first request says `old 0`), then remembered. A witness that fails
 * (timeout, error status, a cosignature that does not verify) is tried again
 * after 1 s, 2 s, 4 s … at most a minute.
 *
 * While the newest checkpoint is younger than the witness timeout and not
 * yet cosigned by `quorum` witnesses, `/checkpoint` keeps serving the last
 * one that was: a client requiring cosignatures is not refused a checkpoint
 * each time a new one is signed. Past the timeout the newest is served as it
 * is (its entries must become visible even with every witness down), and
 * `sigil_tlog_witness_quorum_met` says so.
 */
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import { addSignatureLines, checkCosignatures, parseCosignerVerifierKey, type CosignatureVerifier } from "../../spiffe/tlog/cosignature.js";
import { formatKeyId, parseNote, signatureLine } from "../../spiffe/tlog/note.js";
import { TileReader } from "../../spiffe/tlog/tiles.js";
import type { Datastore } from "../datastore/index.js";
import { DEFAULT_WITNESS_TIMEOUT_MS } from "./config.js";
import type { TlogReadView } from "./types.js";
import { TLOG_SIZE_CONTENT_TYPE } from "./witness.js";

/** Longest pause between attempts at a failing witness. */
export const MAX_WITNESS_BACKOFF_MS = 60_000;
/** Largest witness answer read. */
const MAX_ANSWER_BYTES = 16 * 1024;

/** A signed checkpoint as the log service hands it over. */
export interface SignedCheckpoint {
  readonly note: string;
  readonly size: number;
  readonly rootHash: Uint8Array;
}

/** Dependencies of the {@link WitnessClient}. */
export interface WitnessClientDeps {
  /** The log (its tiles give the consistency proofs). */
  readonly view: TlogReadView;
  /** Where the cosigned checkpoint is stored (the log's own checkpoint row). */
  readonly datastore: Pick<Datastore, "putTlogCheckpoint">;
  readonly serverId: string;
  readonly witnesses: readonly { readonly url: string; readonly key: string }[];
  /** Cosignatures wanted (default all). */
  readonly quorum?: number | undefined;
  readonly timeoutMs?: number | undefined;
  readonly now: () => Date;
  readonly log?: Logger | undefined;
  readonly metrics?: Metrics | undefined;
  /** HTTP client (default the global fetch). */
  readonly fetch?: typeof globalThis.fetch | undefined;
  /** Timer for backoff; returns a cancel function. Default `setTimeout` (unref'd). */
  readonly schedule?: ((fn: () => void, ms: number) => () => void) | undefined;
}

interface WitnessState {
  readonly url: string;
  readonly verifier: CosignatureVerifier;
  /** The size it last said it cosigned; undefined until it answered. */
  size: number | undefined;
  busy: boolean;
  again: boolean;
  failures: number;
  notBefore: number;
  cancel: (() => void) | undefined;
}

interface Latest {
  /** The note as the log signed it. */
  readonly base: string;
  readonly size: number;
  readonly rootHash: Uint8Array;
  /** The base with every cosignature received for it. */
  cosigned: string;
  /** Valid cosignatures in `cosigned`. */
  count: number;
  /** When it was handed over (ms). */
  readonly at: number;
}

const defaultSchedule = (fn: () => void, ms: number): (() => void) => {
  const t = setTimeout(fn, ms);
  t.unref();
  return () => clearTimeout(t);
};

class WitnessFailure extends Error {}

/** See the module comment. */
export class WitnessClient {
  readonly #d: WitnessClientDeps;
  readonly #witnesses: WitnessState[];
  readonly #quorum: number;
  readonly #timeoutMs: number;
  readonly #fetch: typeof globalThis.fetch;
  readonly #schedule: (fn: () => void, ms: number) => () => void;
  readonly #submissions: { inc(labels: { witness: string; result: string }): void } | undefined;
  readonly #cosignatures: { set(value: number): void } | undefined;
  readonly #quorumMet: { set(value: number): void } | undefined;
  #latest: Latest | undefined;
  /** The newest checkpoint that reached the quorum. */
  #lastQuorum: Latest | undefined;
  #closed = false;
  readonly #running = new Set<Promise<void>>();

  /** @throws SigilError `ERR_TLOG_MALFORMED` for a bad witness key. */
  constructor(deps: WitnessClientDeps) {
    this.#d = deps;
    this.#witnesses = deps.witnesses.map((w) => ({
      url: w.url.replace(/\/+$/, ""),
      verifier: parseCosignerVerifierKey(w.key),
      size: undefined,
      busy: false,
      again: false,
      failures: 0,
      notBefore: 0,
      cancel: undefined,
    }));
    this.#quorum = deps.quorum ?? this.#witnesses.length;
    this.#timeoutMs = deps.timeoutMs ?? DEFAULT_WITNESS_TIMEOUT_MS;
    this.#fetch = deps.fetch ?? globalThis.fetch;
    this.#schedule = deps.schedule ?? defaultSchedule;
    this.#submissions = deps.metrics?.counter({
      name: "sigil_tlog_witness_submissions_total",
      help: "Checkpoints sent to witnesses, by witness name and result (cosigned, conflict, failed).",
      labelNames: ["witness", "result"],
    });
    this.#cosignatures = deps.metrics?.gauge({ name: "sigil_tlog_checkpoint_cosignatures", help: "Witness cosignatures the log's newest checkpoint carries." });
    this.#quorumMet = deps.metrics?.gauge({ name: "sigil_tlog_witness_quorum_met", help: "1 when the log's newest checkpoint carries witness_quorum cosignatures, else 0." });
  }

  /** Called with each checkpoint the log signs: it becomes the one submitted. */
  checkpointSigned(cp: SignedCheckpoint): void {
    if (this.#closed) return;
    if (this.#latest?.base === cp.note) return;
    // After a restart the stored checkpoint may carry cosignatures already.
    const latest: Latest = { base: cp.note, size: cp.size, rootHash: cp.rootHash, cosigned: cp.note, count: this.#count(cp.note), at: this.#d.now().getTime() };
    this.#latest = latest;
    if (latest.count >= this.#quorum) this.#lastQuorum = latest;
    this.#gauges();
    for (const w of this.#witnesses) this.#kick(w);
  }

  /** `note` with the cosignatures received for it, or `note` itself. */
  cosigned(note: string): string {
    return this.#latest !== undefined && this.#latest.base === note ? this.#latest.cosigned : note;
  }

  /** The checkpoint to serve when the log's newest is `cp`; see the module comment. */
  served(cp: SignedCheckpoint): SignedCheckpoint {
    const latest = this.#latest;
    if (latest === undefined || latest.base !== cp.note) return cp;
    const prior = this.#lastQuorum;
    if (latest.count < this.#quorum && prior !== undefined && prior !== latest && prior.size <= latest.size && this.#d.now().getTime() - latest.at < this.#timeoutMs) {
      return { note: prior.cosigned, size: prior.size, rootHash: prior.rootHash };
    }
    return { note: latest.cosigned, size: latest.size, rootHash: latest.rootHash };
  }

  /** The log's view with cosigned checkpoints. */
  view(inner: TlogReadView): TlogReadView {
    const latestCheckpoint = (): SignedCheckpoint | undefined => {
      const cp = inner.latestCheckpoint();
      return cp === undefined ? undefined : this.served(cp);
    };
    return {
      origin: inner.origin,
      latestCheckpoint,
      resource: async (path) => {
        if (path !== "checkpoint") return inner.resource(path);
        const cp = latestCheckpoint();
        return cp === undefined ? undefined : { body: Buffer.from(cp.note, "utf8"), immutable: false };
      },
      prove: async (lookup) => {
        const r = await inner.prove(lookup);
        return r === undefined ? undefined : { ...r, checkpoint: this.cosigned(r.checkpoint) };
      },
      verifierKeys: () => inner.verifierKeys(),
    };
  }

  /** Stops retries and waits for submissions under way. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const w of this.#witnesses) w.cancel?.();
    await Promise.all([...this.#running]);
  }

  #kick(w: WitnessState): void {
    if (this.#closed) return;
    if (w.busy) {
      w.again = true;
      return;
    }
    const wait = w.notBefore - this.#d.now().getTime();
    if (wait > 0) {
      w.cancel ??= this.#schedule(() => {
        w.cancel = undefined;
        this.#kick(w);
      }, wait);
      return;
    }
    const target = this.#latest;
    if (target === undefined) return;
    w.busy = true;
    const run = this.#submit(w, target).finally(() => {
      w.busy = false;
      this.#running.delete(run);
      // A newer checkpoint arrived, or this one failed: go again (after the backoff).
      if (w.again) {
        w.again = false;
        this.#kick(w);
      }
    });
    this.#running.add(run);
  }

  async #submit(w: WitnessState, target: Latest): Promise<void> {
    const name = w.verifier.name;
    try {
      // A 409 tells the witness's size; one more try with it (a second 409 means it moved meanwhile).
      for (let attempt = 0; ; attempt++) {
        const outcome = await this.#post(w, target);
        if (outcome === "conflict" && attempt < 2) {
          this.#submissions?.inc({ witness: name, result: "conflict" });
          continue;
        }
        if (outcome === "conflict") throw new WitnessFailure(`it keeps answering 409 (its size ${String(w.size)})`);
        break;
      }
      this.#submissions?.inc({ witness: name, result: "cosigned" });
      if (w.failures > 0) this.#d.log?.info({ witness: name }, "tlog: witness answers again");
      w.failures = 0;
      w.notBefore = 0;
    } catch (e) {
      this.#submissions?.inc({ witness: name, result: "failed" });
      w.failures++;
      const backoff = Math.min(MAX_WITNESS_BACKOFF_MS, 1000 * 2 ** Math.min(w.failures - 1, 16));
      w.notBefore = this.#d.now().getTime() + backoff;
      this.#d.log?.warn({ witness: name, url: w.url, size: target.size, err: e instanceof Error ? e.message : String(e), retry_in_ms: backoff }, "tlog: witness did not cosign the checkpoint");
      // Retried for whatever checkpoint is latest then.
      w.again = true;
    }
  }

  /** One add-checkpoint request; "conflict" after a 409 (the witness's size is learnt). */
  async #post(w: WitnessState, target: Latest): Promise<"cosigned" | "conflict"> {
    const old = w.size ?? 0;
    if (old > target.size) throw new WitnessFailure(`it has cosigned size ${old}, larger than this checkpoint's ${target.size}`);
    const proof = old > 0 && old < target.size ? await new TileReader((p) => this.#tile(p), target.size).consistencyProof(old) : [];
    const body = `old ${old}\n${proof.map((h) => `${Buffer.from(h).toString("base64")}\n`).join("")}\n${target.base}`;
    let res: Response;
    try {
      res = await this.#fetch(`${w.url}/add-checkpoint`, { method: "POST", body, headers: { "content-type": "text/plain; charset=utf-8" }, signal: AbortSignal.timeout(this.#timeoutMs) });
    } catch (e) {
      throw new WitnessFailure(`POST ${w.url}/add-checkpoint: ${(e as Error).message}`);
    }
    const text = await readLimited(res);
    if (res.status === 409 && (res.headers.get("content-type") ?? "").split(";")[0]?.trim() === TLOG_SIZE_CONTENT_TYPE) {
      const m = /^(0|[1-9][0-9]{0,15})\n$/.exec(text);
      if (m === null) throw new WitnessFailure(`a 409 answer whose body is not a size: ${JSON.stringify(text.slice(0, 40))}`);
      w.size = Number(m[1]);
      return "conflict";
    }
    if (res.status !== 200) throw new WitnessFailure(`HTTP ${res.status}: ${text.slice(0, 200).trim()}`);
    // Only lines of this witness's key count, and they must verify.
    let lines: string;
    try {
      const sigs = parseNote(`x\n\n${text}`).signatures.filter((s) => s.name === w.verifier.name && s.keyId === w.verifier.keyId);
      lines = sigs.map((s) => signatureLine(s.name, s.keyId, s.signature)).join("");
      if (lines === "") throw new WitnessFailure(`its answer has no cosignature by ${w.verifier.name}+${formatKeyId(w.verifier.keyId)}`);
      checkCosignatures(addSignatureLines(target.base, lines), [w.verifier], 1);
    } catch (e) {
      if (e instanceof WitnessFailure) throw e;
      throw new WitnessFailure(`its answer is not a valid cosignature: ${(e as Error).message}`);
    }
    w.size = target.size;
    await this.#keep(target, lines);
    return "cosigned";
  }

  async #tile(path: string): Promise<Uint8Array> {
    const r = await this.#d.view.resource(path);
    if (r === undefined) throw new WitnessFailure(`tile ${path} is not published`);
    return r.body;
  }

  /** Adds cosignature lines to the checkpoint and stores it, unless a newer one was signed meanwhile. */
  async #keep(target: Latest, lines: string): Promise<void> {
    target.cosigned = addSignatureLines(target.cosigned, lines);
    target.count = this.#count(target.cosigned);
    if (target.count >= this.#quorum && (this.#lastQuorum === undefined || this.#lastQuorum.size <= target.size)) this.#lastQuorum = target;
    this.#gauges();
    // A key rotation re-signs the same size: never overwrite that row with the older note.
    if (this.#d.view.latestCheckpoint()?.note !== target.base) return;
    await this.#d.datastore.putTlogCheckpoint({ serverId: this.#d.serverId, treeSize: target.size, rootHash: target.rootHash, note: target.cosigned, createdAt: this.#d.now() });
  }

  /** Valid cosignatures of the configured witnesses on `note`. */
  #count(note: string): number {
    try {
      return checkCosignatures(note, this.#witnesses.map((w) => w.verifier), 1).cosigned.length;
    } catch {
      return 0;
    }
  }

  #gauges(): void {
    const latest = this.#latest;
    if (latest === undefined) return;
    this.#cosignatures?.set(latest.count);
    this.#quorumMet?.set(latest.count >= this.#quorum ? 1 : 0);
  }
}

/** The answer's body, refused past {@link MAX_ANSWER_BYTES} (a witness answers a few lines). */
async function readLimited(res: Response): Promise<string> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = res.body?.getReader();
  if (reader === undefined) return "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > MAX_ANSWER_BYTES) {
      await reader.cancel();
      throw new WitnessFailure(`its answer is longer than ${MAX_ANSWER_BYTES} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString("utf8");
}
