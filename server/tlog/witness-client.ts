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
 * after 1 s, 2 s, 4 s … at most a minute. A witness that has cosigned a
 * larger tree than this server's checkpoint (another server of the same log
 * submitted it) is skipped until the next checkpoint, without backoff.
 *
 * Of a witness's answer only one line is kept: its cosignature that verifies,
 * the newest if several do. The served and stored note is rebuilt from the
 * checkpoint text, the log's own signature lines and at most one line per
 * configured witness, so a witness can never make it grow.
 *
 * While the checkpoints signed since the last one cosigned by `quorum`
 * witnesses are younger than the witness timeout — measured from the first
 * of them — `/checkpoint` keeps serving that last cosigned one: a client
 * requiring cosignatures is not refused a checkpoint each time a new one is
 * signed. Past the timeout the newest is served as it is (its entries must
 * become visible even with every witness down, however often checkpoints
 * are signed), and `sigil_tlog_witness_quorum_met` says so.
 */
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import { SigilError } from "../../spiffe/errors.js";
import { duplicateWitnessKey, newestCosignature, parseCosignerVerifierKey, type CosignatureVerifier } from "../../spiffe/tlog/cosignature.js";
import { DEFAULT_MAX_SIGNATURES, formatKeyId, parseNote, signatureLine, type NoteSignature } from "../../spiffe/tlog/note.js";
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
  /** The note as the log signed it (or as stored, after a restart). */
  readonly base: string;
  readonly size: number;
  readonly rootHash: Uint8Array;
  /** The checkpoint text. */
  readonly text: string;
  /** The log's own signature lines of `base`. */
  readonly own: readonly NoteSignature[];
  /** Per configured witness (by index): its newest verified cosignature. */
  readonly lines: Map<number, { readonly signature: NoteSignature; readonly timestamp: number }>;
  /** The text, the log's lines and the witnesses' lines. */
  cosigned: string;
  /** Valid cosignatures in `cosigned`. */
  count: number;
  /** When the next checkpoint was handed over (ms), once one was. */
  supersededAt: number | undefined;
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
  /** When the first checkpoint signed after #lastQuorum was handed over (ms); undefined while the newest has the quorum. */
  #heldSince: number | undefined;
  /** Datastore writes of cosigned checkpoints, one after another. */
  #writes: Promise<void> = Promise.resolve();
  #closed = false;
  readonly #running = new Set<Promise<void>>();

  /** @throws SigilError `ERR_TLOG_MALFORMED` for a bad witness key, `ERR_INVALID_ARGUMENT` for two witnesses with one public key. */
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
    const duplicate = duplicateWitnessKey(this.#witnesses.map((w) => w.verifier));
    if (duplicate !== undefined) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog: ${duplicate}`);
    this.#quorum = deps.quorum ?? this.#witnesses.length;
    this.#timeoutMs = deps.timeoutMs ?? DEFAULT_WITNESS_TIMEOUT_MS;
    this.#fetch = deps.fetch ?? globalThis.fetch;
    this.#schedule = deps.schedule ?? defaultSchedule;
    this.#submissions = deps.metrics?.counter({
      name: "sigil_tlog_witness_submissions_total",
      help: "Checkpoints sent to witnesses, by witness name and result (cosigned, conflict, ahead, failed).",
      labelNames: ["witness", "result"],
    });
    this.#cosignatures = deps.metrics?.gauge({ name: "sigil_tlog_checkpoint_cosignatures", help: "Witness cosignatures the log's newest checkpoint carries." });
    this.#quorumMet = deps.metrics?.gauge({ name: "sigil_tlog_witness_quorum_met", help: "1 when the log's newest checkpoint carries witness_quorum cosignatures, else 0." });
  }

  /** Called with each checkpoint the log signs: it becomes the one submitted. */
  checkpointSigned(cp: SignedCheckpoint): void {
    if (this.#closed) return;
    if (this.#latest?.base === cp.note) return;
    const now = this.#d.now().getTime();
    const latest = this.#fromNote(cp);
    if (this.#latest !== undefined) this.#latest.supersededAt = now;
    this.#latest = latest;
    if (latest.count >= this.#quorum) {
      this.#lastQuorum = latest;
      this.#heldSince = undefined;
    } else {
      this.#heldSince ??= now;
    }
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
    const held = this.#heldSince ?? this.#d.now().getTime();
    if (latest.count < this.#quorum && prior !== undefined && prior !== latest && prior.size <= latest.size && this.#d.now().getTime() - held < this.#timeoutMs) {
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
        if (outcome === "ahead") {
          // Another server of this log got a larger tree cosigned: nothing wrong here, wait for the next checkpoint.
          this.#submissions?.inc({ witness: name, result: "ahead" });
          this.#d.log?.debug({ witness: name, size: target.size, witness_size: w.size }, "tlog: the witness has cosigned a larger tree; skipped until the next checkpoint");
          return;
        }
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

  /** One add-checkpoint request; "conflict" after a 409 (the witness's size is learnt), "ahead" when the witness is past this checkpoint. */
  async #post(w: WitnessState, target: Latest): Promise<"cosigned" | "conflict" | "ahead"> {
    const old = w.size ?? 0;
    if (old > target.size) return "ahead";
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
    // One line is kept: this witness's newest cosignature that verifies; anything else in the answer is dropped.
    let sigs: NoteSignature[];
    try {
      sigs = parseNote(`x\n\n${text}`).signatures.filter((s) => s.name === w.verifier.name && s.keyId === w.verifier.keyId);
    } catch (e) {
      throw new WitnessFailure(`its answer is not a valid cosignature: ${(e as Error).message}`);
    }
    if (sigs.length === 0) throw new WitnessFailure(`its answer has no cosignature by ${w.verifier.name}+${formatKeyId(w.verifier.keyId)}`);
    const best = newestCosignature(target.text, sigs, w.verifier);
    if (best === undefined) throw new WitnessFailure(`its answer has no cosignature by ${w.verifier.name}+${formatKeyId(w.verifier.keyId)} that verifies`);
    w.size = target.size;
    await this.#keep(target, this.#witnesses.indexOf(w), best);
    return "cosigned";
  }

  async #tile(path: string): Promise<Uint8Array> {
    const r = await this.#d.view.resource(path);
    if (r === undefined) throw new WitnessFailure(`tile ${path} is not published`);
    return r.body;
  }

  /** Adds a witness's cosignature to the checkpoint and stores it, unless a newer one was signed meanwhile. */
  async #keep(target: Latest, witness: number, cosignature: { readonly signature: NoteSignature; readonly timestamp: number }): Promise<void> {
    const had = target.lines.get(witness);
    if (had === undefined || had.timestamp <= cosignature.timestamp) target.lines.set(witness, cosignature);
    this.#assemble(target);
    if (target.count >= this.#quorum && (this.#lastQuorum === undefined || this.#lastQuorum.size <= target.size)) {
      this.#lastQuorum = target;
      // The hold-back restarts from the first checkpoint signed after this one.
      this.#heldSince = target === this.#latest ? undefined : target.supersededAt;
    }
    this.#gauges();
    // Writes take turns, and each writes the note as it is then: one finishing late never stores fewer cosignatures.
    const write = this.#writes.then(async () => {
      // A key rotation re-signs the same size: never overwrite that row with the older note.
      if (this.#d.view.latestCheckpoint()?.note !== target.base) return;
      await this.#d.datastore.putTlogCheckpoint({ serverId: this.#d.serverId, treeSize: target.size, rootHash: target.rootHash, note: target.cosigned, createdAt: this.#d.now() });
    });
    this.#writes = write.catch(() => undefined);
    await write;
  }

  /**
   * The client's record of a checkpoint: its text, the log's own lines (named
   * after the origin) and the configured witnesses' newest valid lines; every
   * other line (another key's, one that does not verify, a duplicate) is dropped.
   */
  #fromNote(cp: SignedCheckpoint): Latest {
    // A stored note of an earlier version may carry more lines than parseNote takes by default.
    const parsed = parseNote(cp.note, { maxSignatures: Number.MAX_SAFE_INTEGER });
    const own = parsed.signatures.filter((s) => s.name === this.#d.view.origin).slice(0, DEFAULT_MAX_SIGNATURES - this.#witnesses.length);
    const lines = new Map<number, { signature: NoteSignature; timestamp: number }>();
    this.#witnesses.forEach((w, i) => {
      const best = newestCosignature(parsed.text, parsed.signatures, w.verifier);
      if (best !== undefined) lines.set(i, best);
    });
    const latest: Latest = { base: cp.note, size: cp.size, rootHash: cp.rootHash, text: parsed.text, own, lines, cosigned: cp.note, count: 0, supersededAt: undefined };
    this.#assemble(latest);
    return latest;
  }

  #assemble(l: Latest): void {
    const witnessLines = [...l.lines.entries()].sort((a, b) => a[0] - b[0]).map(([, c]) => c.signature);
    l.cosigned = `${l.text}\n${[...l.own, ...witnessLines].map((s) => signatureLine(s.name, s.keyId, s.signature)).join("")}`;
    l.count = l.lines.size;
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
