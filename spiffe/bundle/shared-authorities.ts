/**
 * Finding authority keys that more than one trust domain uses. The bundle spec
 * strongly advises one trust domain per key (BUNDLE-1): whoever holds a shared
 * key can mint identities in every domain that trusts it. The admin API's
 * SetFederatedBundle uses this to refuse a bundle that shares a key with the
 * server's own bundle or another stored one.
 */
import { createHash, X509Certificate, type KeyObject } from "node:crypto";
import { SigilError } from "../errors.js";
import type { SpiffeBundle } from "./spiffe-bundle.js";

/** One public key found among the authorities of several trust domains. */
export interface SharedAuthorityKey {
  /** SHA-256 of the key's SubjectPublicKeyInfo DER, hex. */
  readonly spkiSha256: string;
  /** Names of the trust domains whose bundles hold the key, in the order first seen. */
  readonly trustDomains: readonly string[];
}

function fingerprint(key: KeyObject): string {
  return createHash("sha256").update(key.export({ format: "der", type: "spki" })).digest("hex");
}

/**
 * Lists the public keys that appear in the bundles of two or more trust
 * domains, as an X.509 authority's key (whatever the certificate around it) or a
 * JWT authority. Reuse within one trust domain is not reported.
 *
 * @throws SigilError `ERR_BUNDLE_INVALID` when an X.509 authority is not a certificate.
 */
export function findSharedAuthorityKeys(bundles: Iterable<SpiffeBundle>): SharedAuthorityKey[] {
  const owners = new Map<string, string[]>();
  const note = (fp: string, td: string): void => {
    const list = owners.get(fp);
    if (list === undefined) owners.set(fp, [td]);
    else if (!list.includes(td)) list.push(td);
  };
  for (const b of bundles) {
    const td = b.trustDomain.name;
    b.x509Authorities.forEach((der, i) => {
      let cert: X509Certificate;
      try {
        cert = new X509Certificate(der);
      } catch (e) {
        throw new SigilError("ERR_BUNDLE_INVALID", `bundle: x509 authority ${i} of "${td}" is not a DER certificate`, { cause: e });
      }
      note(fingerprint(cert.publicKey), td);
    });
    for (const key of b.jwtAuthorities.values()) note(fingerprint(key), td);
  }
  const shared: SharedAuthorityKey[] = [];
  for (const [spkiSha256, trustDomains] of owners) if (trustDomains.length > 1) shared.push({ spkiSha256, trustDomains });
  return shared;
}

/**
 * The first key of `bundle` that is also an authority of one of `others`
 * (BUNDLE-1), or `undefined`. `others` should not hold `bundle`'s own trust
 * domain: reuse within one trust domain is allowed.
 *
 * @throws SigilError `ERR_BUNDLE_INVALID` when an X.509 authority is not a certificate.
 */
export function authorityKeySharedWith(bundle: SpiffeBundle, others: Iterable<SpiffeBundle>): SharedAuthorityKey | undefined {
  return findSharedAuthorityKeys([...others, bundle]).find((k) => k.trustDomains.includes(bundle.trustDomain.name));
}
