/**
 * `sigil-server log checkpoint|prove|rotate-key|verify`: the issuance
 * transparency log. `checkpoint`, `prove` and `rotate-key` ask the server
 * over its admin socket (LogAdmin);
 * `verify` is an auditor's command: it needs only the log's URL and public
 * key, and runs the library alone (`spiffe/tlog/`), no server code.
 */
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { credentials } from "@grpc/grpc-js";
import type { Command } from "commander";
import { LogAdmin, LogCheckpointSchema } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { parseDuration } from "../../common/config/duration.js";
import { createUnaryClient, type UnaryClient } from "../../common/rpc/unary-client.js";
import { parseSpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { parseTrustDomain, type TrustDomain } from "../../spiffe/id.js";
import { decodePemCertificates } from "../../spiffe/pem.js";
import { openCheckpoint, parseCheckpoint } from "../../spiffe/tlog/checkpoint.js";
import { checkCosignatures, duplicateWitnessKey, parseCosignerVerifierKey, type CosignatureCheck, type CosignatureVerifier } from "../../spiffe/tlog/cosignature.js";
import { leafHash } from "../../spiffe/tlog/hash.js";
import { parseNote, parseVerifierKey, type NoteVerifier } from "../../spiffe/tlog/note.js";
import { verifyInclusion } from "../../spiffe/tlog/proof.js";
import { SigilEntryAuditor, SpiffeIdAllowList, trustDomainOfOrigin, type AuditFinding } from "../../spiffe/tlog/sigil-audit.js";
import { httpTlogFetch, verifyLog } from "../../spiffe/tlog/verify.js";
import { canonicalSerialHex } from "../../spiffe/x509/serial.js";
import type { TlogFetch } from "../../spiffe/tlog/tiles.js";
import { addCommon, OperationFailed } from "./admin-commands.js";
import { messageJson, parseOutputFormat, printJson, printPretty, UsageError, type OutputFormat } from "./output.js";

type Opts = Record<string, unknown> & { socketPath: string; output: string };
type Client = UnaryClient<(typeof LogAdmin)["method"]>;

/** Findings kept for `--output json` (all are printed to stderr as found). */
const MAX_JSON_FINDINGS = 10_000;
/** Progress lines on stderr at most this often. */
const PROGRESS_EVERY_MS = 5_000;

async function withClient<T>(opts: Opts, fn: (c: Client, out: OutputFormat) => Promise<T>): Promise<T> {
  const out = parseOutputFormat(opts.output);
  const c = createUnaryClient(LogAdmin, `unix:${path.resolve(opts.socketPath)}`, credentials.createInsecure());
  try {
    return await fn(c, out);
  } finally {
    c.close();
  }
}

const b64 = (b: Uint8Array): string => Buffer.from(b).toString("base64");
const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

function readText(file: string, what: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`${what} ${file}: ${(e as Error).message}`);
  }
}

/** Options of `log prove` that name the credential. */
export interface ProveLookupOptions {
  cert?: string;
  serial?: string;
  jwt?: string;
  jwtFile?: string;
  jwtSha256?: string;
}

/** What `log prove` asks for, and what the entry it gets back must match. */
export type ProveLookup = { serial: string; certDer?: Uint8Array } | { jwtSha256: string };

const jwtHash = (token: string): string => createHash("sha256").update(token.trim(), "utf8").digest("hex");

/**
 * The lookup of `log prove`: exactly one of --cert, --serial, --jwt,
 * --jwt-file, --jwt-sha256. A token given in argv is readable by every local
 * user (/proc/<pid>/cmdline), so --jwt with a token warns on stderr.
 */
export function proveLookupOf(o: ProveLookupOptions): ProveLookup {
  const given = [o.cert, o.serial, o.jwt, o.jwtFile, o.jwtSha256].filter((v) => v !== undefined).length;
  if (given !== 1) throw new UsageError("give exactly one of --cert, --serial, --jwt-file, --jwt-sha256, --jwt");
  if (o.cert !== undefined) {
    const [leaf] = decodePemCertificates(readText(o.cert, "--cert"));
    if (leaf === undefined) throw new UsageError(`--cert ${o.cert}: no PEM certificate`);
    return { serial: canonicalSerialHex(new X509Certificate(leaf).serialNumber), certDer: leaf };
  }
  if (o.serial !== undefined) return { serial: o.serial };
  if (o.jwtSha256 !== undefined) {
    if (!/^[0-9a-fA-F]{64}$/.test(o.jwtSha256)) throw new UsageError("--jwt-sha256: must be 64 hex digits (the SHA-256 of the compact JWT)");
    return { jwtSha256: o.jwtSha256.toLowerCase() };
  }
  if (o.jwtFile !== undefined) {
    let token: string;
    try {
      token = readFileSync(o.jwtFile === "-" ? 0 : o.jwtFile, "utf8");
    } catch (e) {
      throw new UsageError(`--jwt-file ${o.jwtFile}: ${(e as Error).message}`);
    }
    if (token.trim() === "") throw new UsageError(`--jwt-file ${o.jwtFile}: empty`);
    return { jwtSha256: jwtHash(token) };
  }
  const jwt = o.jwt as string;
  // A compact JWT has two dots; anything else is a file holding one.
  if (/^[\w-]+\.[\w-]+\.[\w-]*$/.test(jwt)) {
    process.stderr.write("warning: log prove: --jwt <token> puts a live bearer token in the command line, which other local users can read; use --jwt-file <file|-> or --jwt-sha256 <hex>\n");
    return { jwtSha256: jwtHash(jwt) };
  }
  return { jwtSha256: jwtHash(readText(jwt, "--jwt")) };
}

/**
 * Checks that the entry the server proved is the credential asked for: the
 * server looks an X.509 credential up by serial alone, and a rogue
 * certificate may reuse a logged serial.
 *
 * @throws OperationFailed when the entry is another credential.
 */
export function checkProvedEntry(lookup: ProveLookup, entryText: string): void {
  let entry: { kind?: unknown; cert?: unknown; jwtSha256?: unknown };
  try {
    entry = JSON.parse(entryText) as typeof entry;
  } catch (e) {
    throw new OperationFailed(`log prove: the logged entry is not JSON: ${(e as Error).message}`);
  }
  if ("jwtSha256" in lookup) {
    if (entry.kind !== "jwt-svid" || entry.jwtSha256 !== lookup.jwtSha256) {
      throw new OperationFailed(`log prove: NOT VERIFIED: the entry found is a ${String(entry.kind)} entry, not the jwt-svid with SHA-256 ${lookup.jwtSha256}`);
    }
    return;
  }
  if (lookup.certDer === undefined) return;
  if (typeof entry.cert !== "string") {
    throw new OperationFailed(`log prove: NOT VERIFIED: the ${String(entry.kind)} entry with serial ${lookup.serial} logged no certificate to compare with --cert`);
  }
  if (!Buffer.from(entry.cert, "base64").equals(Buffer.from(lookup.certDer))) {
    throw new OperationFailed(`log prove: NOT VERIFIED: the certificate logged with serial ${lookup.serial} is not the one given with --cert (another certificate reuses a logged serial)`);
  }
}

/** Verifier keys from `--key` values and `--key-file` files (one key a line). */
function verifiersOf(o: { key?: string[]; keyFile?: string[] }): NoteVerifier[] {
  const keys = [...(o.key ?? [])];
  for (const f of o.keyFile ?? []) keys.push(...readText(f, "--key-file").split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#")));
  if (keys.length === 0) throw new UsageError("give the log's public key with --key <vkey> or --key-file <file> (never taken from the log itself)");
  return keys.map((k, i) => {
    try {
      return parseVerifierKey(k);
    } catch (e) {
      throw new UsageError(`key ${i + 1} (${JSON.stringify(k.slice(0, 40))}): ${(e as Error).message}`);
    }
  });
}

/** The X.509 authorities of a trust bundle file: SPIFFE bundle JSON or PEM certificates. */
export function bundleAuthorities(file: string, trustDomain: TrustDomain): Uint8Array[] {
  const text = readText(file, "--bundle");
  let ders: Uint8Array[];
  try {
    ders = text.includes("-----BEGIN") ? decodePemCertificates(text) : [...parseSpiffeBundle(text, trustDomain).bundle.x509Authorities];
  } catch (e) {
    throw new UsageError(`--bundle ${file}: ${(e as Error).message}`);
  }
  if (ders.length === 0) throw new UsageError(`--bundle ${file}: no X.509 authorities`);
  return ders;
}

/** Writes a file by rename, so an interrupted run never leaves half a checkpoint. */
function writeAtomic(file: string, text: string): void {
  // A random name created exclusively: a name another user could guess and plant (a symlink) is never written through.
  const tmp = `${file}.tmp-${randomBytes(8).toString("hex")}`;
  try {
    writeFileSync(tmp, text, { mode: 0o644, flag: "wx" });
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/** How far in the future a cosignature's timestamp may be (witness clock skew). */
export const MAX_COSIGNATURE_SKEW_SECONDS = 300;

/**
 * Witness keys of `--witness-key`, the quorum of `--witness-quorum` (default
 * all of them) and `--witness-max-age` in seconds. Two keys of one public key
 * are refused: they would count one witness twice.
 */
export function witnessPolicyOf(o: { witnessKey?: string[]; witnessQuorum?: string; witnessMaxAge?: string }): { witnesses: CosignatureVerifier[]; quorum: number; maxAgeSeconds: number | undefined } | undefined {
  const keys = o.witnessKey ?? [];
  if (keys.length === 0) {
    if (o.witnessQuorum !== undefined) throw new UsageError("--witness-quorum needs at least one --witness-key");
    if (o.witnessMaxAge !== undefined) throw new UsageError("--witness-max-age needs at least one --witness-key");
    return undefined;
  }
  const witnesses = keys.map((k, i) => {
    try {
      return parseCosignerVerifierKey(k);
    } catch (e) {
      throw new UsageError(`--witness-key ${i + 1} (${JSON.stringify(k.slice(0, 40))}): ${(e as Error).message}`);
    }
  });
  const duplicate = duplicateWitnessKey(witnesses);
  if (duplicate !== undefined) throw new UsageError(`--witness-key: ${duplicate}`);
  const quorum = o.witnessQuorum === undefined ? witnesses.length : Number(o.witnessQuorum);
  if (!Number.isInteger(quorum) || quorum < 1 || quorum > witnesses.length) throw new UsageError(`--witness-quorum must be from 1 to the ${witnesses.length} --witness-key given, got ${o.witnessQuorum}`);
  let maxAgeSeconds: number | undefined;
  if (o.witnessMaxAge !== undefined) {
    let ms: number;
    try {
      ms = parseDuration(o.witnessMaxAge);
    } catch (e) {
      throw new UsageError(`--witness-max-age: ${(e as Error).message}`);
    }
    if (ms < 1000) throw new UsageError(`--witness-max-age must be at least 1s, got ${o.witnessMaxAge}`);
    maxAgeSeconds = Math.floor(ms / 1000);
  }
  return { witnesses, quorum, maxAgeSeconds };
}

interface VerifyOpts {
  url: string;
  key?: string[];
  keyFile?: string[];
  witnessKey?: string[];
  witnessQuorum?: string;
  witnessMaxAge?: string;
  since?: string;
  bundle?: string;
  trustDomain?: string;
  allowIds?: string;
  output: string;
  progress: boolean;
}

/** `log verify`; see the command's help. */
export async function runLogVerify(o: VerifyOpts): Promise<void> {
  const out = parseOutputFormat(o.output);
  const verifiers = verifiersOf(o);
  const witnessPolicy = witnessPolicyOf(o);
  const since = o.since !== undefined && existsSync(o.since) ? readText(o.since, "--since") : undefined;
  const allowIds = o.allowIds === undefined ? undefined : new SpiffeIdAllowList(readText(o.allowIds, "--allow-ids"), o.allowIds);
  let base: TlogFetch;
  try {
    base = httpTlogFetch(o.url);
  } catch (e) {
    throw new UsageError(`--url: ${(e as Error).message}`);
  }
  // The auditor needs the trust domain, which the checkpoint's origin names; verifyLog reads the checkpoint first.
  let origin: string | undefined;
  const fetch: TlogFetch = async (p) => {
    const body = await base(p);
    if (p === "checkpoint") {
      try {
        origin = parseCheckpoint(parseNote(body).text).origin;
      } catch {
        // verifyLog reports the malformed checkpoint itself.
      }
    }
    return body;
  };
  const findings: AuditFinding[] = [];
  let auditor: SigilEntryAuditor | undefined;
  const auditorFor = (): SigilEntryAuditor => {
    if (auditor !== undefined) return auditor;
    const td = parseTrustDomain(o.trustDomain ?? trustDomainOfOrigin(origin ?? ""));
    auditor = new SigilEntryAuditor({
      trustDomain: td,
      ...(o.bundle === undefined ? {} : { x509Authorities: bundleAuthorities(o.bundle, td) }),
      ...(allowIds === undefined ? {} : { allowIds }),
      onFinding: (f) => {
        process.stderr.write(`${f.message}\n`);
        if (findings.length < MAX_JSON_FINDINGS) findings.push(f);
      },
    });
    return auditor;
  };
  let lastProgress = Date.now();
  const result = await verifyLog({
    fetch,
    verifiers,
    // Sigil names its log keys after the origin: a checkpoint naming another log is refused.
    keyNameIsOrigin: true,
    ...(since === undefined ? {} : { since }),
    onEntry: (i, e) => auditorFor().onEntry(i, e),
    onProgress: (p) => {
      const now = Date.now();
      if (!o.progress || now - lastProgress < PROGRESS_EVERY_MS || p.entries === p.size) return;
      lastProgress = now;
      process.stderr.write(`log verify: ${p.entries.toLocaleString("en")} of ${p.size.toLocaleString("en")} entries (${Math.floor((p.entries * 100) / p.size)}%)\n`);
    },
  });
  // Before the checkpoint is saved: a checkpoint without the witnesses' word is not one to build on.
  let cosigned: CosignatureCheck | undefined;
  if (witnessPolicy !== undefined) {
    try {
      // A cosignature dated ahead of this clock (beyond the skew) or older than --witness-max-age does not count.
      const time = { now: Math.floor(Date.now() / 1000), maxFutureSeconds: MAX_COSIGNATURE_SKEW_SECONDS, maxAgeSeconds: witnessPolicy.maxAgeSeconds };
      cosigned = checkCosignatures(result.checkpointNote, witnessPolicy.witnesses, witnessPolicy.quorum, {}, time);
    } catch (e) {
      throw new OperationFailed(`log verify: the checkpoint of size ${result.checkpoint.size} lacks witness cosignatures: ${(e as Error).message.replace(/^cosignature: /, "")}`);
    }
  }
  if (o.since !== undefined) writeAtomic(o.since, result.checkpointNote);
  const reported = auditor?.findings ?? 0;
  const cp = result.checkpoint;
  if (out === "json") {
    printJson({
      origin: cp.origin,
      size: cp.size,
      root_hash: b64(cp.rootHash),
      checkpoint: result.checkpointNote,
      extends: result.extends === undefined ? null : { size: result.extends.size, root_hash: b64(result.extends.rootHash) },
      entries_checked: result.entries,
      witnesses: cosigned === undefined ? null : { quorum: witnessPolicy?.quorum, cosigned: cosigned.cosigned.map((c) => ({ key: c.witness.vkey, timestamp: c.timestamp })), missing: cosigned.missing.map((m) => ({ key: m.witness.vkey, reason: m.reason })) },
      certificates_checked: o.bundle !== undefined,
      findings_total: reported,
      findings: findings.map((f) => ({ index: f.index, kind: f.kind, entry_kind: f.entryKind ?? null, spiffe_id: f.spiffeId ?? null, serial: f.serial ?? null, message: f.message })),
    });
  } else {
    const rows: [string, string][] = [
      ["Log", cp.origin],
      ["Tree size", String(cp.size)],
      ["Root hash", b64(cp.rootHash)],
      ["Extends", result.extends === undefined ? (o.since === undefined ? "no earlier checkpoint given" : `nothing yet (${o.since} saved)`) : `checkpoint of size ${result.extends.size} (${o.since})`],
      ["Entries checked", String(result.entries)],
      ["Witnesses", cosigned === undefined ? "not checked (no --witness-key)" : `cosigned by ${cosigned.cosigned.map((c) => c.witness.name).join(", ")} (${cosigned.cosigned.length} of ${cosigned.cosigned.length + cosigned.missing.length}, quorum ${witnessPolicy?.quorum})`],
      ["Certificates", o.bundle === undefined ? "not checked (no --bundle)" : `checked against ${o.bundle}`],
      ["Reported entries", String(reported)],
    ];
    printPretty(rows);
  }
  if (reported > 0) {
    const kinds = [...(auditor?.counts ?? new Map<string, number>())].map(([k, n]) => `${n} ${k}`).join(", ");
    throw new OperationFailed(`log verify: the log is intact, but ${reported} entr${reported === 1 ? "y was" : "ies were"} reported (${kinds}); the first is entry ${findings[0]?.index ?? "?"}`);
  }
}

/** Registers `log …` on `program`. */
export function registerLogCommands(program: Command): void {
  const log = program.command("log").description("the issuance transparency log: checkpoints, inclusion proofs, verification");

  addCommon(log.command("checkpoint").description("print the latest signed checkpoint and the log's verifier keys"), true).action(async (o: Opts) =>
    withClient(o, async (c, out) => {
      const cp = await c.getCheckpoint({});
      if (out === "json") return printJson(messageJson(LogCheckpointSchema, cp));
      printPretty([
        ["Log", cp.origin],
        ["Tree size", String(cp.size)],
        ["Root hash", b64(cp.rootHash)],
        ["Verifier key", cp.verifierKeys],
      ]);
      process.stdout.write(cp.note);
    }),
  );

  addCommon(
    log
      .command("prove")
      .description("print a credential's log entry, its inclusion proof and the checkpoint it is proven against (checked here before printing)")
      .option("--cert <file>", "PEM file whose first certificate is the credential")
      .option("--serial <hex>", "serial number of an X.509 credential")
      .option("--jwt-file <file>", "a file holding a JWT-SVID (- for stdin)")
      .option("--jwt-sha256 <hex>", "SHA-256 of a JWT-SVID (hex)")
      .option("--jwt <token|file>", "a JWT-SVID, or a file holding one (a token here is visible to other local users: prefer --jwt-file)"),
    true,
  ).action(async (o: Opts & ProveLookupOptions) => {
    const lookup = proveLookupOf(o);
    await withClient(o, async (c, out) => {
      const cpInfo = await c.getCheckpoint({});
      const res = await c.prove("serial" in lookup ? { lookup: { case: "serial", value: lookup.serial } } : { lookup: { case: "jwtSha256", value: lookup.jwtSha256 } });
      const { checkpoint } = openCheckpoint(res.checkpoint, cpInfo.verifierKeys.map((k) => parseVerifierKey(k)), { origin: cpInfo.origin, keyNameIsOrigin: true });
      verifyInclusion(Number(res.index), checkpoint.size, leafHash(res.entry), res.proof, checkpoint.rootHash);
      const entryText = Buffer.from(res.entry).toString("utf8");
      checkProvedEntry(lookup, entryText);
      if (out === "json") {
        return printJson({ index: Number(res.index), entry: JSON.parse(entryText) as unknown, entry_base64: b64(res.entry), tree_size: checkpoint.size, proof: res.proof.map(b64), checkpoint: res.checkpoint, verified: true });
      }
      printPretty([
        ["Index", String(res.index)],
        ["Entry", entryText],
        ["Tree size", String(checkpoint.size)],
        ["Proof", res.proof.length === 0 ? ["(none: the only entry)"] : res.proof.map(b64)],
        ["Verified", "the proof leads to the checkpoint's root, signed by the log key"],
      ]);
      process.stdout.write(res.checkpoint);
    });
  });

  addCommon(log.command("rotate-key").description("sign with a new log key from now on (the old key stays verifiable); prints the new verifier key for auditors"), false).action(async (o: Opts) =>
    withClient(o, async (c, out) => {
      const r = await c.rotateKey({});
      if (out === "json") return printJson({ verifier_key: r.verifierKey });
      printPretty([["New verifier key", r.verifierKey]]);
    }),
  );

  log
    .command("verify")
    .description("verify the whole log from its tiles URL: checkpoint signature, every entry and tree level, consistency with a saved checkpoint, and each entry's certificate and SPIFFE ID")
    .requiredOption("--url <url>", "the log's tiles URL (transparency_log.listen_address of the server)")
    .option("--key <vkey>", "the log's verifier key (repeatable; `log checkpoint` prints them)", collect)
    .option("--key-file <file>", "a file of verifier keys, one a line", collect)
    .option("--since <file>", "a checkpoint saved by an earlier run: the log must extend it; the new checkpoint is saved there")
    .option("--witness-key <vkey>", "a witness's verifier key (cosignature/v1, repeatable): the checkpoint must carry its cosignature", collect)
    .option("--witness-quorum <n>", "cosignatures required among the --witness-key witnesses (default all)")
    .option("--witness-max-age <duration>", "a cosignature older than this (e.g. 1h) does not count; one dated more than 5 minutes ahead never does")
    .option("--bundle <file>", "trust bundle (SPIFFE bundle JSON or PEM): report entries whose certificate does not chain to it")
    .option("--trust-domain <td>", "the log's trust domain (default: from the checkpoint origin <td>/sigil/issuance)")
    .option("--allow-ids <file>", "SPIFFE ID patterns, one a line (* within a path segment, ** across): report any credential for another ID")
    .option("--no-progress", "no progress lines on stderr")
    .option("-o, --output <format>", "json or pretty", "pretty")
    .action(async (o: VerifyOpts) => runLogVerify(o));
}
