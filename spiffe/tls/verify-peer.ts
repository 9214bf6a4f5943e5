/**
 * Verifying a TLS peer's certificate chain as an X509-SVID and authorizing
 * it: the one check the TLS option builders and the bundle endpoint client
 * share.
 */
import type { DetailedPeerCertificate, PeerCertificate, TLSSocket } from "node:tls";
import type { X509BundleSource } from "../bundle/x509-bundle.js";
import { SigilError } from "../errors.js";
import type { SpiffeId } from "../id.js";
import { verifyX509Svid } from "../x509/verify.js";
import type { Authorizer } from "./authorizer.js";

/** Options of {@link verifyPeerSvid}. */
export interface VerifyPeerOptions {
  /** The time validity is checked at (default: now). */
  readonly now?: Date;
}

/** A peer that verified and was authorized. */
export interface VerifiedPeer {
  readonly id: SpiffeId;
  /** DER of the path that verified: leaf, intermediates used, bundle authority. */
  readonly verifiedChain: readonly Uint8Array[];
}

// Longer chains than this are not followed (the verifier refuses paths over 16 anyway).
const MAX_PEER_CHAIN = 20;

/**
 * Verifies `chainDer` (leaf first) as an X509-SVID against the bundle of the
 * trust domain named in the leaf's SPIFFE ID, and only that one (FED-6), then
 * asks `authorizer`.
 *
 * @throws SigilError `ERR_X509_CHAIN_INVALID` when the chain does not verify;
 *   `ERR_PERMISSION_DENIED` when the authorizer refuses (a non-Sigil error it
 *   throws is wrapped).
 */
export function verifyPeerSvid(
  chainDer: Uint8Array | readonly Uint8Array[],
  bundles: X509BundleSource,
  authorizer: Authorizer,
  options: VerifyPeerOptions = {},
): VerifiedPeer {
  const verified = verifyX509Svid(chainDer, bundles, options.now === undefined ? {} : { now: options.now });
  const ders = verified.verifiedChain.map((c) => new Uint8Array(c.raw));
  try {
    authorizer(verified.id, ders);
  } catch (e) {
    if (e instanceof SigilError) throw e;
    throw new SigilError("ERR_PERMISSION_DENIED", `tls: peer ${verified.id.toString()} refused by the authorizer: ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    });
  }
  return { id: verified.id, verifiedChain: ders };
}

/**
 * The DER chain (leaf first) in a certificate from `getPeerCertificate(true)`.
 * Node rebuilds the chain by following issuers among what the peer sent (and
 * its own CA store); a self-signed certificate points at itself, which ends it.
 */
export function chainFromPeerCertificate(cert: PeerCertificate | DetailedPeerCertificate | undefined): Uint8Array[] {
  const out: Uint8Array[] = [];
  let current: DetailedPeerCertificate | PeerCertificate | undefined = cert;
  const seen = new Set<object>();
  while (current !== undefined && current !== null && out.length < MAX_PEER_CHAIN && !seen.has(current)) {
    if (!(current.raw instanceof Uint8Array) || current.raw.length === 0) break;
    seen.add(current);
    out.push(new Uint8Array(current.raw));
    const next: DetailedPeerCertificate | undefined = (current as DetailedPeerCertificate).issuerCertificate;
    if (next === current) break;
    current = next;
  }
  return out;
}

/** The peer's DER chain (leaf first) on an established TLS socket; empty when the peer sent no certificate. */
export function peerChainOf(socket: TLSSocket): Uint8Array[] {
  return chainFromPeerCertificate(socket.getPeerCertificate(true));
}
