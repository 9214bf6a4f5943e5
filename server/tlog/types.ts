/**
 * What the transparency log's readers (the tiles HTTP server, the `LogAdmin`
 * API) need from the log service: resources by tlog-tiles path, the latest
 * checkpoint, inclusion proofs by lookup key, and the log's verifier keys.
 * The service that writes the log implements it; readers never write.
 */

/** One tlog-tiles resource. */
export interface TlogResource {
  readonly body: Uint8Array;
  /** True for full tiles and full entry bundles (never change once published). */
  readonly immutable: boolean;
}

/** The read side of the issuance transparency log. */
export interface TlogReadView {
  /** e.g. "example.org/sigil/issuance" */
  readonly origin: string;
  /** The latest signed checkpoint note, undefined before the first. */
  latestCheckpoint(): { readonly note: string; readonly size: number; readonly rootHash: Uint8Array } | undefined;
  /** A tlog-tiles resource by path relative to the log root: "checkpoint", "tile/<L>/<N>[.p/<W>]",
   *  "tile/entries/<N>[.p/<W>]"; undefined when the path is not (yet) published. Full tiles and full
   *  entry bundles are `immutable`; partial ones and the checkpoint are not. Throws SigilError
   *  ERR_INVALID_ARGUMENT for a malformed path. */
  resource(path: string): Promise<TlogResource | undefined>;
  /** Inclusion proof of the entry found by lookup key against the latest checkpoint; undefined when not
   *  logged or not yet covered by a checkpoint. */
  prove(lookup: { readonly serial: string } | { readonly jwtSha256: string }): Promise<{ readonly index: number; readonly entry: Uint8Array; readonly proof: readonly Uint8Array[]; readonly checkpoint: string } | undefined>;
  /** Note verifier keys (C2SP vkey strings) of the current and every retired log key. */
  verifierKeys(): Promise<readonly string[]>;
}
