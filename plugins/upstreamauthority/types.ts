/**
 * The UpstreamAuthority plugin type: signs Sigil's X.509 CA as an intermediate
 * under an external root, so restarting or re-keying a server does not change
 * what workloads trust (the bundle carries the upstream roots).
 */
import type { KeyObject } from "node:crypto";
import type { TrustDomain } from "../../spiffe/id.js";

/** Request to mint an intermediate CA for Sigil. */
export interface MintX509CaRequest {
  readonly trustDomain: TrustDomain;
  readonly publicKey: KeyObject;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly subject?: { readonly country?: string; readonly organization?: string; readonly commonName?: string } | undefined;
}

/** The minted CA and what it chains to. */
export interface MintedX509Ca {
  readonly certDer: Uint8Array;
  /** Intermediates between `certDer` and a root (not including either). */
  readonly intermediateDers: readonly Uint8Array[];
  /** Roots to publish in the bundle. */
  readonly rootDers: readonly Uint8Array[];
  /** May be earlier than requested: never later than the upstream's own notAfter. */
  readonly notAfter: Date;
}

/** An upstream authority plugin. */
export interface UpstreamAuthority {
  readonly name: string;
  mintX509Ca(req: MintX509CaRequest): Promise<MintedX509Ca>;
  /**
   * Optional: calls `onRoots` with the upstream's complete current root set
   * whenever it changes, so the server publishes a new root, drops a
   * withdrawn one, and replaces a CA whose root is gone without waiting for
   * its next preparation (nested servers: a parent's taint, revoke or new
   * root). Returns a function that stops the watch.
   */
  watchRoots?(trustDomain: TrustDomain, onRoots: (rootDers: readonly Uint8Array[]) => void): () => void;
  /** Releases what the plugin holds (open watches). */
  close?(): Promise<void> | void;
}

/** What the server hands an upstream authority plugin when it creates it (nothing yet). */
export type UpstreamAuthorityDeps = Readonly<Record<string, never>>;
