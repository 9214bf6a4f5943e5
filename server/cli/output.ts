/**
 * CLI output: every read command prints either JSON (`--output json`, one
 * document, protobuf JSON field names) or aligned `Key : value` blocks like
 * SPIRE's `-output pretty`.
 */
import { toJson, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import type { Entry, Agent, Selector } from "../../proto/gen/sigil/types/v1/types_pb.js";
import type { Issuance } from "../../proto/gen/sigil/admin/v1/admin_pb.js";

/** Output formats accepted by `--output`. */
export type OutputFormat = "json" | "pretty";

/** Parses the `--output` flag value. */
export function parseOutputFormat(v: string): OutputFormat {
  if (v === "json" || v === "pretty") return v;
  throw new UsageError(`--output must be "json" or "pretty", got ${JSON.stringify(v)}`);
}

/** A usage error: exit status 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/** Converts a message to plain JSON with proto field names. */
export function messageJson<D extends DescMessage>(schema: D, m: MessageShape<D>): unknown {
  return toJson(schema, m, { useProtoFieldName: true, alwaysEmitImplicit: true });
}

/** Prints a JSON document. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Prints `Key : value` lines with aligned colons; repeated values repeat the key. */
export function printPretty(rows: readonly (readonly [string, string | readonly string[]])[]): void {
  const width = Math.max(...rows.map(([k]) => k.length));
  const lines: string[] = [];
  for (const [k, v] of rows) {
    const values = typeof v === "string" ? [v] : v;
    for (const one of values) lines.push(`${k.padEnd(width)} : ${one}`);
  }
  process.stdout.write(`${lines.join("\n")}\n\n`);
}

const fmtSelector = (s: Selector) => `${s.type}:${s.value}`;
const fmtTime = (unix: bigint) => (unix === 0n ? "never" : new Date(Number(unix) * 1000).toISOString());

/** Pretty rows of an entry. */
export function entryRows(e: Entry): [string, string | string[]][] {
  const rows: [string, string | string[]][] = [
    ["Entry ID", e.id],
    ["SPIFFE ID", e.spiffeId],
    ["Parent ID", e.parentId],
    ["Revision", String(e.revision)],
    ["X509-SVID TTL", e.x509SvidTtl ? String(e.x509SvidTtl) : "default"],
    ["JWT-SVID TTL", e.jwtSvidTtl ? String(e.jwtSvidTtl) : "default"],
    ["Selector", e.selectors.map(fmtSelector)],
  ];
  if (e.expiresAt !== 0n) rows.push(["Expires at", fmtTime(e.expiresAt)]);
  if (e.dnsNames.length) rows.push(["DNS name", e.dnsNames]);
  if (e.federatesWith.length) rows.push(["FederatesWith", e.federatesWith]);
  if (e.admin) rows.push(["Admin", "true"]);
  if (e.downstream) rows.push(["Downstream", "true"]);
  if (e.hint) rows.push(["Hint", e.hint]);
  return rows;
}

/** Pretty rows of an agent. */
export function agentRows(a: Agent): [string, string | string[]][] {
  return [
    ["SPIFFE ID", a.spiffeId],
    ["Attestation type", a.attestationType],
    ["Expiration time", fmtTime(a.x509SvidExpiresAt)],
    ["Serial number", a.x509SvidSerial],
    ["Banned", String(a.banned)],
    ["Selector", a.selectors.map(fmtSelector)],
  ];
}

/** Pretty rows of an issuance-log record. */
export function issuanceRows(i: Issuance): [string, string | string[]][] {
  const rows: [string, string | string[]][] = [
    ["Serial number", i.serial],
    ["Kind", i.kind],
    ["SPIFFE ID", i.spiffeId],
  ];
  if (i.entryId) rows.push(["Entry ID", i.entryId]);
  if (i.agentId) rows.push(["Agent ID", i.agentId]);
  rows.push(["Requested by", i.requestedBy], ["Signing key", i.caKeyId], ["Issued at", fmtTime(i.issuedAt)], ["Valid from", fmtTime(i.notBefore)], ["Valid until", fmtTime(i.notAfter)]);
  if (i.selectors.length) rows.push(["Selector", [...i.selectors]]);
  if (i.audience.length) rows.push(["Audience", [...i.audience]]);
  if (i.jwtId) rows.push(["JWT ID", i.jwtId]);
  return rows;
}
