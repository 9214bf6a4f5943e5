/**
 * The server config's `transparency_log` section (issue 16): whether every
 * issued credential and authority event goes into the signed, tiled Merkle
 * log, how often checkpoints are signed, and where the log's tiles are
 * served (C2SP tlog-tiles over HTTP(S), its own port).
 */
import { z } from "zod";
import { duration } from "../../common/config/duration.js";
import { duplicateWitnessKey, parseCosignerVerifierKey } from "../../spiffe/tlog/cosignature.js";
import { parseVerifierKey } from "../../spiffe/tlog/note.js";
import { witnessedLogProblem } from "./witness.js";

/** `host:port`, IPv6 in brackets; the port may be 0 (tests). */
const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):([0-9]{1,5})$/;

/** Default requests per second one client address may make to the tiles listener. */
export const DEFAULT_TLOG_RATE_PER_SECOND = 100;
/** Default requests one client address may make back to back to the tiles listener. */
export const DEFAULT_TLOG_RATE_BURST = 1000;

/** Default add-checkpoint requests per second one client address may make to this server's witness. */
export const DEFAULT_WITNESS_RATE_PER_SECOND = 2;
/** Default add-checkpoint requests one client address may make back to back. */
export const DEFAULT_WITNESS_RATE_BURST = 20;

/** Default time one witness has to answer an add-checkpoint request. */
export const DEFAULT_WITNESS_TIMEOUT_MS = 5000;

/** The message of a refused key string, without the library's subsystem prefix. */
function keyProblem(parse: (k: string) => unknown, k: string): string | undefined {
  try {
    parse(k);
    return undefined;
  } catch (e) {
    return (e as Error).message.replace(/^(signed note|cosignature): /, "");
  }
}

const logKey = z.string().superRefine((k, ctx) => {
  const problem = keyProblem(parseVerifierKey, k);
  if (problem !== undefined) ctx.addIssue({ code: "custom", message: `not a log verifier key: ${problem}` });
});

const witnessKey = z.string().superRefine((k, ctx) => {
  const problem = keyProblem(parseCosignerVerifierKey, k);
  if (problem !== undefined) ctx.addIssue({ code: "custom", message: `not a witness key: ${problem}` });
});

/** The `transparency_log.witness` section: this server as a witness of other logs. */
export const witnessSection = z
  .strictObject({
    name: z
      .string()
      .regex(/^[^\s+]+$/, { message: "must be a key name: no spaces, no '+'" })
      .optional()
      .describe("The witness's key name on its cosignature lines (default `<trust domain>/sigil/witness`)."),
    logs: z
      .array(
        z.strictObject({
          origin: z.string().min(1).optional().describe("The log's origin line (default the name of its first key; a Sigil log's is `<trust domain>/sigil/issuance`)."),
          keys: z.array(logKey).min(1).describe("The log's verifier keys (`sigil-server log checkpoint` or `/log-keys` of a Sigil peer); a checkpoint needs a signature by one."),
        }),
      )
      .min(1)
      .describe("The logs this server witnesses."),
    rate_limit_per_second: z
      .number()
      .int()
      .min(1)
      .default(DEFAULT_WITNESS_RATE_PER_SECOND)
      .describe("add-checkpoint requests per second one client address may make (with rate_limit; a bucket of its own, each request costs signature checks and a database write). A log submits once per checkpoint it signs."),
    rate_limit_burst: z.number().int().min(1).default(DEFAULT_WITNESS_RATE_BURST).describe("add-checkpoint requests one client address may make back to back."),
  })
  .superRefine((w, ctx) => {
    const seen = new Set<string>();
    w.logs.forEach((l, i) => {
      const origin = l.origin ?? l.keys[0]?.split("+")[0] ?? "";
      if (seen.has(origin)) ctx.addIssue({ code: "custom", path: ["logs", i, "origin"], message: `log ${origin} is listed twice` });
      seen.add(origin);
      // Bad keys are reported by their own schema; here what only the whole list shows.
      if (l.keys.some((k) => keyProblem(parseVerifierKey, k) !== undefined)) return;
      const problem = witnessedLogProblem(origin, l.keys);
      if (problem !== undefined) ctx.addIssue({ code: "custom", path: problem.key === undefined ? ["logs", i, "origin"] : ["logs", i, "keys", problem.key], message: problem.message });
    });
  })
  .describe("Act as a C2SP tlog-witness for other logs, e.g. federated peers': POST /add-checkpoint on the tiles listener (docs/transparency.md#witnesses).");

/** Splits `listen_address` into host and port. */
export function parseListenAddress(value: string): { readonly host: string; readonly port: number } | undefined {
  const m = HOST_PORT.exec(value);
  if (m === null) return undefined;
  const port = Number(m[2]);
  if (port > 65535) return undefined;
  return { host: (m[1] as string).replace(/^\[(.*)\]$/, "$1"), port };
}

/** The `transparency_log` section. */
export const transparencyLogSection = z
  .strictObject({
    enabled: z.boolean().default(false).describe("Log every issued credential and authority event in the signed transparency log (docs/transparency.md)."),
    checkpoint_interval: duration({ minMs: 100 }).prefault("1s").describe("How often a checkpoint is signed when entries were added."),
    checkpoint_batch: z.number().int().min(1).max(1_000_000).default(1000).describe("Entries waiting that trigger a checkpoint at once."),
    listen_address: z
      .string()
      .refine((v) => parseListenAddress(v) !== undefined, { message: "must be host:port (IPv6 in brackets), e.g. 0.0.0.0:8009" })
      .optional()
      .describe("Serve the log's tiles (C2SP tlog-tiles: /checkpoint, /tile/…, /log-keys) on this host:port for auditors and mirrors. Unset: the log is reachable only through the admin API."),
    tls_cert_file: z.string().min(1).optional().describe("PEM serving certificate (then its intermediates) for HTTPS on listen_address; re-read when it changes. Unset: plain HTTP (behind a TLS-terminating proxy, or for a public log whose content is signed anyway)."),
    tls_key_file: z.string().min(1).optional().describe("PEM private key of tls_cert_file."),
    rate_limit: z
      .boolean()
      .default(true)
      .describe("Limit the tiles listener's requests per client address (an IPv6 address counts as its /64); a request beyond the limit is answered 429 with Retry-After. Behind a proxy every client shares the proxy's address: raise the limit or limit at the proxy."),
    rate_limit_per_second: z
      .number()
      .int()
      .min(1)
      .default(DEFAULT_TLOG_RATE_PER_SECOND)
      .describe("Requests per second one client address may make to the tiles listener. A full mirror of a 1,000,000-entry log is about 8,000 requests (one tile and one entry bundle per 256 entries)."),
    rate_limit_burst: z
      .number()
      .int()
      .min(1)
      .default(DEFAULT_TLOG_RATE_BURST)
      .describe("Requests one client address may make back to back after a quiet period."),
    witnesses: z
      .array(
        z.strictObject({
          url: z
            .url({ protocol: /^https?$/, error: "must be an http:// or https:// URL" })
            .describe("The witness's submission prefix; checkpoints are POSTed to <url>/add-checkpoint."),
          key: witnessKey.describe("The witness's verifier key (cosignature/v1 Ed25519, type 0x04)."),
        }),
      )
      .optional()
      .describe("Witnesses (C2SP tlog-witness) each checkpoint is sent to; their cosignatures are added to the served checkpoint. Issuance never waits for them."),
    witness_quorum: z.number().int().min(1).optional().describe("Cosignatures a new checkpoint waits for (default: every witness, at most witness_timeout) before /checkpoint serves it instead of the last one that had them; below it, sigil_tlog_witness_quorum_met is 0."),
    witness_timeout: duration({ minMs: 100 }).optional().describe("How long one witness has to answer (default 5s); a failed witness is retried with backoff up to a minute."),
    witness: witnessSection.optional(),
  })
  .superRefine((c, ctx) => {
    if ((c.tls_cert_file === undefined) !== (c.tls_key_file === undefined)) {
      ctx.addIssue({ code: "custom", path: [c.tls_cert_file === undefined ? "tls_cert_file" : "tls_key_file"], message: "tls_cert_file and tls_key_file go together" });
    }
    if (c.tls_cert_file !== undefined && c.listen_address === undefined) {
      ctx.addIssue({ code: "custom", path: ["listen_address"], message: "is required when tls_cert_file is set (the TLS files are for the tiles listener)" });
    }
    if (c.witness !== undefined && (c.listen_address === undefined || !c.enabled)) {
      ctx.addIssue({ code: "custom", path: ["witness"], message: "needs enabled: true and listen_address (a witness answers on the tiles listener)" });
    }
    const witnesses = c.witnesses?.length ?? 0;
    if (c.witness_quorum !== undefined && c.witness_quorum > witnesses) {
      ctx.addIssue({ code: "custom", path: ["witness_quorum"], message: `is ${c.witness_quorum}, more than the ${witnesses} witness(es) configured` });
    }
    // One public key is one witness, however its key string is spelt or named.
    const parsed = (c.witnesses ?? []).map((w) => (keyProblem(parseCosignerVerifierKey, w.key) === undefined ? parseCosignerVerifierKey(w.key) : undefined));
    parsed.forEach((w, i) => {
      if (w === undefined) return;
      const duplicate = parsed
        .slice(0, i)
        .map((e) => (e === undefined ? undefined : duplicateWitnessKey([e, w])))
        .find((d) => d !== undefined);
      if (duplicate !== undefined) ctx.addIssue({ code: "custom", path: ["witnesses", i, "key"], message: duplicate });
    });
  })
  .describe("Issuance transparency: every credential in a signed, tiled Merkle log anyone can verify (docs/transparency.md).");
