/**
 * A Sigil server as a witness of other logs (C2SP tlog-witness): the
 * `POST /add-checkpoint` call. For each log it is configured with (origin
 * and the log's verifier keys, e.g. a federated peer's `/log-keys`) it
 * keeps the latest checkpoint it cosigned, in the datastore, and cosigns a
 * new one only when it is signed by the log and consistent with that one:
 *
 * | answer | when |
 * |---|---|
 * | 200, cosignature line | signed by the log, `old` is the stored size, the consistency proof holds; the new checkpoint is stored first (a replay of the stored checkpoint is cosigned again without a write) |
 * | 400 | malformed body, more than {@link MAX_ADD_CHECKPOINT_SIGNATURES} signature lines, `old` larger than the checkpoint, a proof from size 0 or between equal sizes |
 * | 403 | no signature by a trusted key of that origin verifies (one that does is enough, as the spec says) |
 * | 404 | unknown origin |
 * | 409, `text/x.tlog.size` | `old` is not the stored size; or a tree of the stored size with another root (a fork) |
 * | 422 | the consistency proof does not verify (a fork, or a broken log) |
 *
 * The stored state only moves forward (checked and written in one atomic
 * datastore step), so once a log showed two inconsistent views the other
 * branch is refused for good. Those refusals are reported: an error log
 * line with both checkpoints, and `sigil_tlog_witness_forks_total`.
 *
 * A request costs little before it is refused: at most
 * {@link MAX_ADD_CHECKPOINT_SIGNATURES} signature lines, identical lines
 * verified once, and verification stops at the first that holds. The
 * cosignature's time is never earlier than the stored checkpoint's, so a
 * larger tree never carries an earlier time (a clock stepped back).
 */
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import { isSigilError, SigilError } from "../../spiffe/errors.js";
import { parseCheckpoint, type Checkpoint } from "../../spiffe/tlog/checkpoint.js";
import type { Cosigner } from "../../spiffe/tlog/cosignature.js";
import { HASH_SIZE } from "../../spiffe/tlog/hash.js";
import { decodeBase64Strict, formatKeyId, parseNote, parseVerifierKey, type NoteVerifier } from "../../spiffe/tlog/note.js";
import { verifyConsistency } from "../../spiffe/tlog/proof.js";
import type { Datastore, WitnessCheckpointRecord } from "../datastore/index.js";
import { MAX_WITNESS_ORIGIN } from "../datastore/tlog.js";

/** Most consistency proof lines a request may carry (tlog-witness). */
export const MAX_PROOF_LINES = 63;
/** Largest request body read, in bytes. */
export const MAX_ADD_CHECKPOINT_BYTES = 64 * 1024;
/** Most signature lines an add-checkpoint checkpoint may carry (a log signs with one or two keys, plus cosignatures). */
export const MAX_ADD_CHECKPOINT_SIGNATURES = 16;
/** Content type of a 409 answer's body: the witness's latest size. */
export const TLOG_SIZE_CONTENT_TYPE = "text/x.tlog.size";

/** One log this server witnesses. */
export interface WitnessedLogConfig {
  /** The log's origin line. */
  readonly origin: string;
  /** The log's note verifier keys (type 0x01). */
  readonly keys: readonly string[];
}

/** An HTTP answer of the witness. */
export interface WitnessAnswer {
  readonly status: 200 | 400 | 403 | 404 | 409 | 422 | 503;
  readonly contentType: string;
  readonly body: string;
}

/** What the tiles listener needs of a witness. */
export interface WitnessEndpoint {
  /** Answers one `add-checkpoint` request body. Never rejects. */
  addCheckpoint(body: Uint8Array): Promise<WitnessAnswer>;
}

/** Dependencies of the {@link Witness}. */
export interface WitnessDeps {
  readonly datastore: Pick<Datastore, "latestWitnessCheckpoint" | "advanceWitnessCheckpoint">;
  /** The witness key (held by the key manager). */
  readonly cosigner: Cosigner;
  readonly logs: readonly WitnessedLogConfig[];
  readonly now: () => Date;
  readonly log?: Logger | undefined;
  readonly metrics?: Metrics | undefined;
}

type Result = "cosigned" | "malformed" | "forbidden" | "unknown_log" | "conflict" | "bad_proof" | "fork" | "error";

const TEXT = "text/plain; charset=utf-8";

class Refusal extends Error {
  constructor(readonly answer: WitnessAnswer, readonly result: Result) {
    super(answer.body);
  }
}

const refuse = (status: WitnessAnswer["status"], message: string, result: Result): Refusal => new Refusal({ status, contentType: TEXT, body: `${message}\n` }, result);

/** A parsed `add-checkpoint` body. */
export interface AddCheckpointRequest {
  readonly oldSize: number;
  readonly proof: readonly Uint8Array[];
  /** The signed checkpoint note, as sent. */
  readonly note: string;
}

/**
 * Parses an `add-checkpoint` body: `old <size>`, up to 63 base64 hashes, a
 * blank line, then the signed checkpoint (not verified here).
 *
 * @throws SigilError `ERR_TLOG_MALFORMED` naming what is wrong.
 */
export function parseAddCheckpoint(body: Uint8Array): AddCheckpointRequest {
  const bad = (m: string): SigilError => new SigilError("ERR_TLOG_MALFORMED", `add-checkpoint: ${m}`);
  if (body.length > MAX_ADD_CHECKPOINT_BYTES) throw bad(`the body is larger than ${MAX_ADD_CHECKPOINT_BYTES} bytes`);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(body);
  } catch {
    throw bad("the body is not UTF-8");
  }
  const end = text.indexOf("\n\n");
  if (end < 0) throw bad("no blank line ends the old size and proof lines");
  const lines = text.slice(0, end).split("\n");
  const m = /^old (0|[1-9][0-9]{0,15})$/.exec(lines[0] ?? "");
  if (m === null) throw bad(`the first line must be "old <size>" (decimal, no leading zeroes), got ${JSON.stringify((lines[0] ?? "").slice(0, 40))}`);
  const oldSize = Number(m[1]);
  if (!Number.isSafeInteger(oldSize)) throw bad("the old size is too large");
  const proofLines = lines.slice(1);
  if (proofLines.length > MAX_PROOF_LINES) throw bad(`${proofLines.length} consistency proof lines, at most ${MAX_PROOF_LINES}`);
  const proof = proofLines.map((l, i) => {
    let h: Buffer;
    try {
      h = decodeBase64Strict(l, `consistency proof line ${i + 1}`);
    } catch {
      throw bad(`consistency proof line ${i + 1} is not base64`);
    }
    if (h.length !== HASH_SIZE) throw bad(`consistency proof line ${i + 1} has ${h.length} bytes, a hash has ${HASH_SIZE}`);
    return h;
  });
  return { oldSize, proof, note: text.slice(end + 2) };
}

/** See the module comment. */
export class Witness implements WitnessEndpoint {
  readonly #d: WitnessDeps;
  readonly #logs: Map<string, NoteVerifier[]>;
  /** Per origin: the request being decided (requests of one origin take turns). */
  readonly #turns = new Map<string, Promise<unknown>>();
  readonly #requests: { inc(labels: { result: Result }): void } | undefined;
  readonly #forks: { inc(labels: { origin: string }): void } | undefined;

  /** @throws SigilError `ERR_INVALID_ARGUMENT` for a bad log key or a log listed twice. */
  constructor(deps: WitnessDeps) {
    this.#d = deps;
    this.#logs = new Map();
    for (const l of deps.logs) {
      if (this.#logs.has(l.origin)) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog witness: log ${l.origin} is listed twice`);
      const problem = witnessedLogProblem(l.origin, l.keys);
      if (problem !== undefined) throw new SigilError("ERR_INVALID_ARGUMENT", `tlog witness: ${problem.message}`);
      this.#logs.set(
        l.origin,
        l.keys.map((k) => parseVerifierKey(k)),
      );
    }
    this.#requests = deps.metrics?.counter({
      name: "sigil_tlog_witness_requests_total",
      help: "add-checkpoint requests this server answered as a witness, by result (cosigned, conflict, fork, bad_proof, forbidden, unknown_log, malformed, error).",
      labelNames: ["result"],
    });
    this.#forks = deps.metrics?.counter({
      name: "sigil_tlog_witness_forks_total",
      help: "Checkpoints signed by a witnessed log that are inconsistent with the one this witness cosigned before (a split view), by origin.",
      labelNames: ["origin"],
    });
  }

  /** The witness's verifier key (cosignature/v1, type 0x04). */
  get vkey(): string {
    return this.#d.cosigner.vkey;
  }

  async addCheckpoint(body: Uint8Array): Promise<WitnessAnswer> {
    let result: Result = "cosigned";
    try {
      const answer = await this.#add(body);
      return answer;
    } catch (e) {
      if (e instanceof Refusal) {
        result = e.result;
        return e.answer;
      }
      result = "error";
      this.#d.log?.error({ err: e instanceof Error ? e.message : String(e) }, "tlog witness: add-checkpoint failed");
      return { status: 503, contentType: TEXT, body: "the witness cannot answer now\n" };
    } finally {
      this.#requests?.inc({ result });
    }
  }

  async #add(body: Uint8Array): Promise<WitnessAnswer> {
    let req: AddCheckpointRequest;
    let cp: Checkpoint;
    try {
      req = parseAddCheckpoint(body);
      // The origin decides which keys to check, so the text is read before the signatures.
      const sep = req.note.lastIndexOf("\n\n");
      cp = parseCheckpoint(sep < 0 ? req.note : req.note.slice(0, sep + 1));
    } catch (e) {
      throw refuse(400, isSigilError(e) ? e.message : "malformed request", "malformed");
    }
    const verifiers = this.#logs.get(cp.origin);
    if (verifiers === undefined) throw refuse(404, `unknown log ${JSON.stringify(cp.origin.slice(0, 100))}`, "unknown_log");
    let text: string;
    try {
      text = signedText(req.note, verifiers);
    } catch (e) {
      if (isSigilError(e, "ERR_TLOG_MALFORMED")) throw refuse(400, e.message, "malformed");
      throw refuse(403, `the checkpoint is not signed by a key of ${cp.origin}`, "forbidden");
    }
    if (req.oldSize > cp.size) throw refuse(400, `old size ${req.oldSize} is larger than the checkpoint's ${cp.size}`, "malformed");
    if (req.oldSize === 0 && req.proof.length > 0) throw refuse(400, "a consistency proof from size 0 must be empty", "malformed");
    if (req.oldSize === cp.size && req.proof.length > 0) throw refuse(400, "a consistency proof between equal sizes must be empty", "malformed");
    return this.#turn(cp.origin, () => this.#decide(req, cp, text));
  }

  /** Runs `fn` after every earlier request of `origin` is decided. */
  async #turn<T>(origin: string, fn: () => Promise<T>): Promise<T> {
    const before = this.#turns.get(origin) ?? Promise.resolve();
    const run = before.then(fn, fn);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.#turns.set(origin, settled);
    void settled.then(() => {
      if (this.#turns.get(origin) === settled) this.#turns.delete(origin);
    });
    return run;
  }

  async #decide(req: AddCheckpointRequest, cp: Checkpoint, text: string): Promise<WitnessAnswer> {
    const stored = await this.#d.datastore.latestWitnessCheckpoint(cp.origin);
    const storedSize = stored?.treeSize ?? 0;
    // A signed tree of the size already cosigned with another root is a fork, whatever `old` says.
    if (stored !== undefined && cp.size === stored.treeSize && !Buffer.from(cp.rootHash).equals(Buffer.from(stored.rootHash))) {
      this.#fork(cp, stored, req.note, `a checkpoint of size ${cp.size} with another root than the one cosigned`);
      throw this.#conflict(storedSize, "fork");
    }
    if (req.oldSize !== storedSize) throw this.#conflict(storedSize, "conflict");
    // Never earlier than the stored checkpoint's time: a larger tree never carries an earlier cosignature.
    const at = new Date(Math.max(this.#d.now().getTime(), stored?.updatedAt.getTime() ?? 0));
    // A replay of the checkpoint already cosigned (a log retrying, another server of it): cosigned again, nothing written.
    if (stored !== undefined && cp.size === stored.treeSize) return this.#cosign(cp, text, at);
    if (stored !== undefined && req.oldSize > 0) {
      try {
        verifyConsistency(req.oldSize, cp.size, req.proof, stored.rootHash, cp.rootHash);
      } catch (e) {
        this.#fork(cp, stored, req.note, isSigilError(e) ? e.message : "the consistency proof does not verify");
        throw refuse(422, `the consistency proof from size ${req.oldSize} to ${cp.size} does not verify`, "bad_proof");
      }
    }
    const next: WitnessCheckpointRecord = { origin: cp.origin, treeSize: cp.size, rootHash: cp.rootHash, note: req.note, updatedAt: at };
    // Persisted before answering, and only if nothing moved meanwhile (another server on this database).
    if (!(await this.#d.datastore.advanceWitnessCheckpoint(next, stored === undefined ? undefined : { treeSize: stored.treeSize, rootHash: stored.rootHash }))) {
      const now = await this.#d.datastore.latestWitnessCheckpoint(cp.origin);
      throw this.#conflict(now?.treeSize ?? 0, "conflict");
    }
    return this.#cosign(cp, text, at);
  }

  #cosign(cp: Checkpoint, text: string, at: Date): WitnessAnswer {
    const line = this.#d.cosigner.cosign(text, Math.floor(at.getTime() / 1000));
    this.#d.log?.debug({ origin: cp.origin, size: cp.size }, "tlog witness: cosigned");
    return { status: 200, contentType: TEXT, body: line };
  }

  #conflict(size: number, result: Result): Refusal {
    return new Refusal({ status: 409, contentType: TLOG_SIZE_CONTENT_TYPE, body: `${size}\n` }, result);
  }

  #fork(cp: Checkpoint, stored: WitnessCheckpointRecord, note: string, why: string): void {
    this.#forks?.inc({ origin: cp.origin });
    this.#d.log?.error(
      { origin: cp.origin, size: cp.size, cosigned_size: stored.treeSize, checkpoint: note, cosigned_checkpoint: stored.note, reason: why },
      "tlog witness: the log shows a view inconsistent with the checkpoint this witness cosigned (a fork); refused",
    );
  }
}

/**
 * What makes a witnessed log's configuration unusable, or undefined: an
 * origin the datastore cannot key, a key that does not parse, or two keys
 * with one name and key ID (a signature line could not tell them apart).
 * `key` is the index of the key at fault.
 */
export function witnessedLogProblem(origin: string, keys: readonly string[]): { readonly key?: number; readonly message: string } | undefined {
  if (origin.length === 0 || origin.length > MAX_WITNESS_ORIGIN || origin.includes("\n")) {
    return { message: `the origin of a witnessed log must be one line of 1 to ${MAX_WITNESS_ORIGIN} characters, got ${origin.length}` };
  }
  const ids = new Map<string, number>();
  for (const [i, k] of keys.entries()) {
    let v: NoteVerifier;
    try {
      v = parseVerifierKey(k);
    } catch (e) {
      return { key: i, message: `key ${i + 1} of log ${origin}: ${(e as Error).message}` };
    }
    const id = `${v.name}+${formatKeyId(v.keyId)}`;
    const first = ids.get(id);
    if (first !== undefined) return { key: i, message: `keys ${first + 1} and ${i + 1} of log ${origin} are both ${id} (listed twice, or a key ID collision)` };
    ids.set(id, i);
  }
  return undefined;
}

/**
 * The checkpoint text of `note` when a signature by one of `verifiers`
 * verifies (tlog-witness: others, even failing ones, are ignored). At most
 * {@link MAX_ADD_CHECKPOINT_SIGNATURES} lines; identical lines are checked once.
 *
 * @throws SigilError `ERR_TLOG_MALFORMED`; `ERR_TLOG_SIGNATURE_INVALID` when none verifies.
 */
function signedText(note: string, verifiers: readonly NoteVerifier[]): string {
  const parsed = parseNote(note, { maxSignatures: MAX_ADD_CHECKPOINT_SIGNATURES });
  const message = Buffer.from(parsed.text, "utf8");
  const tried = new Set<string>();
  for (const sig of parsed.signatures) {
    const v = verifiers.find((k) => k.name === sig.name && k.keyId === sig.keyId);
    if (v === undefined) continue;
    const key = `${sig.name} ${Buffer.from(sig.signature).toString("base64")}`;
    if (tried.has(key)) continue;
    tried.add(key);
    if (v.verify(message, sig.signature)) return parsed.text;
  }
  throw new SigilError("ERR_TLOG_SIGNATURE_INVALID", "add-checkpoint: no signature by a trusted key verifies");
}
