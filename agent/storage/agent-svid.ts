/**
 * The agent's own X509-SVID with its private key: what node attestation and
 * RenewAgent produce, what the agent presents to the server, and what it keeps
 * in `data_dir` across restarts.
 */
import type { KeyObject } from "node:crypto";
import { SigilError } from "../../spiffe/errors.js";
import { decodeCertificate } from "../../spiffe/x509/decode-certificate.js";
import { parseX509Svid } from "../../spiffe/x509/svid.js";

/** The agent's SVID and key. */
export interface AgentSvid {
  /** The agent's SPIFFE ID, e.g. `spiffe://example.org/spire/agent/join_token/…`. */
  readonly spiffeId: string;
  /** DER certificates, leaf first. */
  readonly chain: readonly Uint8Array[];
  readonly privateKey: KeyObject;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/**
 * Checks an agent SVID chain against its key (X509-SVID profile, key match)
 * and reads its SPIFFE ID and validity.
 *
 * @throws SigilError `ERR_X509_SVID_INVALID` naming the problem
 */
export function agentSvidFromChain(chain: readonly Uint8Array[], privateKey: KeyObject): AgentSvid {
  if (privateKey.type !== "private") throw new SigilError("ERR_INVALID_ARGUMENT", "agent svid: a private key is required");
  const pkcs8 = new Uint8Array(privateKey.export({ format: "der", type: "pkcs8" }));
  const parsed = parseX509Svid(chain, pkcs8);
  const leaf = decodeCertificate(parsed.certificateDers[0] as Uint8Array);
  return {
    spiffeId: parsed.id.toString(),
    chain: parsed.certificateDers,
    privateKey,
    notBefore: leaf.notBefore,
    notAfter: leaf.notAfter,
  };
}
