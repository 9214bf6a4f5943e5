/**
 * Intermediates a caller presents beside its TLS client certificate, in the
 * `sigil-agent-chain-bin` request metadata (one DER certificate per value).
 * An SVID another server of the cluster signed (each server has its own
 * intermediate under an upstream authority) does not chain with this
 * server's intermediates alone. Verification still anchors the path at the
 * bundle's roots, so presented certificates add no trust of their own.
 * Agents (`agent/sync/server-client.ts`) and nested servers
 * (`plugins/upstreamauthority/sigil/`) send it.
 */
import type { Metadata } from "@grpc/grpc-js";
import { SigilError } from "../../spiffe/errors.js";

/** Request metadata with the intermediates of the caller's chain. */
export const CALLER_CHAIN_METADATA_KEY = "sigil-agent-chain-bin";
/** Most intermediates taken from that metadata, and most bytes of each. */
export const MAX_PRESENTED_INTERMEDIATES = 4;
export const MAX_INTERMEDIATE_BYTES = 16 * 1024;

/**
 * The intermediates in `metadata`, bounded in number and size; `prefix`
 * (`agent api`) starts the InvalidArgument message of a bad value.
 */
export function presentedIntermediates(metadata: Metadata, prefix: string): Uint8Array[] {
  const presented = metadata.get(CALLER_CHAIN_METADATA_KEY);
  if (presented.length > MAX_PRESENTED_INTERMEDIATES) throw new SigilError("ERR_INVALID_ARGUMENT", `${prefix}: ${CALLER_CHAIN_METADATA_KEY}: ${presented.length} certificates is more than the maximum ${MAX_PRESENTED_INTERMEDIATES}`);
  return presented.map((v, i) => {
    if (typeof v === "string" || v.length > MAX_INTERMEDIATE_BYTES) throw new SigilError("ERR_INVALID_ARGUMENT", `${prefix}: ${CALLER_CHAIN_METADATA_KEY}[${i}] is not a DER certificate of at most ${MAX_INTERMEDIATE_BYTES} bytes`);
    return new Uint8Array(v);
  });
}
