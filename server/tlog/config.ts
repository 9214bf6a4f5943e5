/**
 * The server config's `transparency_log` section (issue 16): whether every
 * issued credential and authority event goes into the signed, tiled Merkle
 * log, how often checkpoints are signed, and where the log's tiles are
 * served (C2SP tlog-tiles over HTTP(S), its own port).
 */
import { z } from "zod";
import { duration } from "../../common/config/duration.js";

/** `host:port`, IPv6 in brackets; the port may be 0 (tests). */
const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):([0-9]{1,5})$/;

/** Default requests per second one client address may make to the tiles listener. */
export const DEFAULT_TLOG_RATE_PER_SECOND = 100;
/** Default requests one client address may make back to back to the tiles listener. */
export const DEFAULT_TLOG_RATE_BURST = 1000;

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
  })
  .superRefine((c, ctx) => {
    if ((c.tls_cert_file === undefined) !== (c.tls_key_file === undefined)) {
      ctx.addIssue({ code: "custom", path: [c.tls_cert_file === undefined ? "tls_cert_file" : "tls_key_file"], message: "tls_cert_file and tls_key_file go together" });
    }
    if (c.tls_cert_file !== undefined && c.listen_address === undefined) {
      ctx.addIssue({ code: "custom", path: ["listen_address"], message: "is required when tls_cert_file is set (the TLS files are for the tiles listener)" });
    }
  })
  .describe("Issuance transparency: every credential in a signed, tiled Merkle log anyone can verify (docs/transparency.md).");
