/**
 * Authorizers: the decision, after a peer's X509-SVID has verified, whether
 * this peer may talk to us. Modelled on go-spiffe's `tlsconfig.Authorizer`,
 * written as a function that throws to refuse.
 */
import { SigilError } from "../errors.js";
import { parseSpiffeId, parseTrustDomain, type SpiffeId, type TrustDomain } from "../id.js";

/**
 * Decides whether a verified peer is allowed. Called only after the chain
 * verified against the bundle of the peer's own trust domain; `verifiedChain`
 * is the DER of the path that verified (leaf, intermediates, bundle authority).
 * Throws to refuse; the thrown value becomes the handshake's error.
 */
export type Authorizer = (id: SpiffeId, verifiedChain: readonly Uint8Array[]) => void;

function refuse(message: string): never {
  throw new SigilError("ERR_PERMISSION_DENIED", `tls: ${message}`);
}

function toId(id: SpiffeId | string, what: string): SpiffeId {
  if (typeof id !== "string") return id;
  try {
    return parseSpiffeId(id);
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `tls: ${what}: ${(e as Error).message}`, { cause: e });
  }
}

/** Accepts every peer whose SVID verified (any trust domain the bundle source holds). */
export function authorizeAny(): Authorizer {
  return () => undefined;
}

/**
 * Accepts exactly one SPIFFE ID (case-sensitive path, ID-17).
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` when `id` is a string that does not parse.
 */
export function authorizeId(id: SpiffeId | string): Authorizer {
  const want = toId(id, "authorizeId");
  return (peer) => {
    if (!peer.equals(want)) refuse(`peer ${peer.toString()} is not authorized: want ${want.toString()}`);
  };
}

/**
 * Accepts any of the given SPIFFE IDs.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` when no ID is given or one does not parse.
 */
export function authorizeOneOf(...ids: readonly (SpiffeId | string)[]): Authorizer {
  if (ids.length === 0) throw new SigilError("ERR_INVALID_ARGUMENT", "tls: authorizeOneOf needs at least one SPIFFE ID");
  const wanted = ids.map((id, i) => toId(id, `authorizeOneOf argument ${i}`));
  const names = new Set(wanted.map((w) => w.toString()));
  return (peer) => {
    if (!names.has(peer.toString())) refuse(`peer ${peer.toString()} is not authorized: want one of ${[...names].join(", ")}`);
  };
}

/**
 * Accepts every member of one trust domain.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` when `td` is a string that is not a bare trust-domain name.
 */
export function authorizeMemberOf(td: TrustDomain | string): Authorizer {
  let want: TrustDomain;
  if (typeof td === "string") {
    try {
      want = parseTrustDomain(td);
    } catch (e) {
      throw new SigilError("ERR_INVALID_ARGUMENT", `tls: authorizeMemberOf: ${(e as Error).message}`, { cause: e });
    }
  } else {
    want = td;
  }
  return (peer) => {
    if (!peer.memberOf(want)) refuse(`peer ${peer.toString()} is not authorized: want a member of ${want.name}`);
  };
}
