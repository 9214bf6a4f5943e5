/**
 * Node `tls` options that authenticate with X509-SVIDs, as go-spiffe's
 * `tlsconfig` and `spiffetls` do: the own SVID from a live source, the peer
 * verified as an X509-SVID against the bundle of the peer's own trust domain
 * (federated bundles included, FED-6) and then authorized.
 *
 * Node's built-in chain verification knows nothing of SPIFFE trust domains,
 * so Sigil does the verification itself. Where it is enforced:
 *
 * - Server: {@link createSpiffeTlsServer} (or {@link guardSpiffeTlsServer} for
 *   an `https`/`http2` server) gates the server's `secureConnection` event: a
 *   client whose SVID does not verify or is not authorized is destroyed before
 *   any `secureConnection` listener (and so any application code, including
 *   the HTTP layer) sees the socket, and the refusal is emitted as
 *   `tlsClientError`. Options passed to `tls.createServer` directly refuse every
 *   handshake (the SNI callback fails and no default certificate is set), so
 *   forgetting the guard fails closed.
 * - Client: `checkServerIdentity`, which Node calls after the handshake and
 *   before `secureConnect`; an error from it destroys the socket before any
 *   written data leaves (this needs `rejectUnauthorized: true`, so `ca` is set
 *   to every root the source holds and OpenSSL's own chain check must pass
 *   first; the SPIFFE check then decides). Sessions are never resumed: Node
 *   skips `checkServerIdentity` on a resumed session, so the options carry
 *   `session: undefined`, which keeps `https.Agent` from offering the session
 *   it cached for another authorizer; do not pass a `session` of your own.
 *
 * Both sides refuse TLS 1.2 renegotiation, in which a peer could present
 * another certificate after the check.
 *
 * Rotation: every connection reads the source again. The server installs a
 * secure context built from the latest SVID (cached per SVID object) when a
 * connection arrives, and the SNI callback answers the same; the client
 * options' `key`, `cert` and `ca` are getters read by each `tls.connect`.
 */
import { constants } from "node:crypto";
import * as tls from "node:tls";
import type { Clock } from "../../common/clock.js";
import type { X509Bundle } from "../bundle/x509-bundle.js";
import { SigilError } from "../errors.js";
import { encodePemCertificates, encodePemPrivateKey } from "../pem.js";
import type { Authorizer } from "./authorizer.js";
import { bundlesOf, type TlsSvid, type TlsX509Source } from "./source.js";
import { chainFromPeerCertificate, peerChainOf, verifyPeerSvid, type VerifiedPeer } from "./verify-peer.js";

/** Extra options of the builders. */
export interface SpiffeTlsOptions {
  /** Time for certificate validity checks (default: the system clock). */
  readonly clock?: Clock;
}

/** The sources the client builders take: bundles, plus the SVID for mutual TLS. */
export type TlsBundleSource = Omit<TlsX509Source, "getX509Svid">;

const kServerState = Symbol.for("sigil.spiffe-tls.server");
const MIN_VERSION = "TLSv1.2";
// TLS 1.2 renegotiation would let a peer present another certificate after the check, unverified.
const NO_RENEGOTIATION = constants.SSL_OP_NO_RENEGOTIATION;

interface ServerState {
  readonly source: TlsX509Source;
  /** Undefined for one-way TLS: no client certificate is asked for. */
  readonly authorizer: Authorizer | undefined;
  readonly clock: Clock | undefined;
  guarded: boolean;
}

/** Server options as the builders return them: Node options carrying Sigil's state. */
export type SpiffeTlsServerOptions = tls.TlsOptions & { readonly [kServerState]?: ServerState };

const verifiedPeers = new WeakMap<tls.TLSSocket, VerifiedPeer>();
const pemCache = new WeakMap<TlsSvid, { key: string; cert: string }>();
const contextCache = new WeakMap<TlsSvid, tls.SecureContext>();

function checkSource(source: unknown, withSvid: boolean, fn: string): void {
  const s = source as Partial<TlsX509Source> | null;
  if (s === null || typeof s !== "object" || typeof s.getX509BundleForTrustDomain !== "function" || (withSvid && typeof s.getX509Svid !== "function")) {
    throw new SigilError(
      "ERR_INVALID_ARGUMENT",
      `tls: ${fn}: source must have getX509BundleForTrustDomain()${withSvid ? " and getX509Svid()" : ""} (an X509Source)`,
    );
  }
}

function checkAuthorizer(authorizer: unknown, fn: string): void {
  if (typeof authorizer !== "function") throw new SigilError("ERR_INVALID_ARGUMENT", `tls: ${fn}: authorizer must be a function (e.g. authorizeId(...))`);
}

function pemOf(svid: TlsSvid): { key: string; cert: string } {
  let pem = pemCache.get(svid);
  if (pem === undefined) {
    const pkcs8 = new Uint8Array(svid.privateKey.export({ type: "pkcs8", format: "der" }));
    pem = { key: encodePemPrivateKey(pkcs8), cert: encodePemCertificates(svid.certificateDers) };
    pemCache.set(svid, pem);
  }
  return pem;
}

function currentSvid(source: TlsX509Source): TlsSvid {
  try {
    return source.getX509Svid();
  } catch (e) {
    throw new SigilError("ERR_UNAVAILABLE", `tls: no X509-SVID to present: ${(e as Error).message}`, { cause: e });
  }
}

function nowOf(clock: Clock | undefined): { now?: Date } {
  return clock === undefined ? {} : { now: clock.now() };
}

function serverOptions(source: TlsX509Source, authorizer: Authorizer | undefined, o: SpiffeTlsOptions): SpiffeTlsServerOptions {
  const state: ServerState = { source, authorizer, clock: o.clock, guarded: false };
  const options: tls.TlsOptions = {
    minVersion: MIN_VERSION,
    secureOptions: NO_RENEGOTIATION,
    requestCert: authorizer !== undefined,
    // Sigil verifies the client (see the module comment); OpenSSL's verdict is ignored.
    rejectUnauthorized: false,
    SNICallback: (_servername, cb) => {
      if (!state.guarded) {
        cb(new SigilError("ERR_FAILED_PRECONDITION", "tls: SPIFFE server options used without createSpiffeTlsServer/guardSpiffeTlsServer; refusing the handshake"), undefined);
        return;
      }
      try {
        cb(null, serverContext(currentSvid(source), options));
      } catch (e) {
        cb(e as Error, undefined);
      }
    },
  };
  // Enumerable, so a caller's `{ ...options, ALPNProtocols }` keeps it.
  Object.defineProperty(options, kServerState, { value: state, enumerable: true });
  return options as SpiffeTlsServerOptions;
}

function serverContext(svid: TlsSvid, options: tls.TlsOptions): tls.SecureContext {
  let ctx = contextCache.get(svid);
  if (ctx === undefined) {
    const pem = pemOf(svid);
    ctx = tls.createSecureContext({ ...contextSettings(options), key: pem.key, cert: pem.cert });
    contextCache.set(svid, ctx);
  }
  return ctx;
}

// The protocol settings of the caller's options a secure context is built from.
function contextSettings(options: tls.TlsOptions): tls.SecureContextOptions {
  const { minVersion, maxVersion, ciphers, ecdhCurve, sigalgs, honorCipherOrder, sessionIdContext, secureOptions } = options;
  const out: Record<string, unknown> = { minVersion, maxVersion, ciphers, ecdhCurve, sigalgs, honorCipherOrder, sessionIdContext, secureOptions };
  for (const k of Object.keys(out)) if (out[k] === undefined) delete out[k];
  return out as tls.SecureContextOptions;
}

/**
 * Options for a mutual-TLS server: presents the source's current SVID, asks
 * for a client certificate, verifies it against the bundle of the client's
 * trust domain and asks `authorizer`. Use with {@link createSpiffeTlsServer}
 * (or {@link guardSpiffeTlsServer}); on their own they refuse every handshake.
 * Extra Node options may be added to the returned object.
 *
 * @example
 * ```ts
 * const server = createSpiffeTlsServer(mtlsServerOptions(source, authorizeMemberOf("b.test")), (socket) => {
 *   socket.end(`hello ${peerSpiffeIdOf(socket)}`);
 * });
 * server.listen(8443);
 * ```
 * @throws SigilError `ERR_INVALID_ARGUMENT` for a source or authorizer of the wrong shape.
 */
export function mtlsServerOptions(source: TlsX509Source, authorizer: Authorizer, o: SpiffeTlsOptions = {}): SpiffeTlsServerOptions {
  checkSource(source, true, "mtlsServerOptions");
  checkAuthorizer(authorizer, "mtlsServerOptions");
  return serverOptions(source, authorizer, o);
}

/** Options for a one-way TLS server presenting the source's current SVID; clients are not authenticated. Use as {@link mtlsServerOptions}. */
export function tlsServerOptions(source: TlsX509Source, o: SpiffeTlsOptions = {}): SpiffeTlsServerOptions {
  checkSource(source, true, "tlsServerOptions");
  return serverOptions(source, undefined, o);
}

function stateOf(options: SpiffeTlsServerOptions, fn: string): ServerState {
  const state = options?.[kServerState];
  if (state === undefined) throw new SigilError("ERR_INVALID_ARGUMENT", `tls: ${fn}: options must come from mtlsServerOptions or tlsServerOptions`);
  return state;
}

/**
 * Makes a `tls.Server` from {@link mtlsServerOptions} / {@link tlsServerOptions}
 * and guards it (see {@link guardSpiffeTlsServer}). `listener` receives only
 * connections whose client verified and was authorized.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` for options not made by the builders;
 *   `ERR_UNAVAILABLE` when the source has no SVID to present.
 */
export function createSpiffeTlsServer(options: SpiffeTlsServerOptions, listener?: (socket: tls.TLSSocket) => void): tls.Server {
  stateOf(options, "createSpiffeTlsServer");
  const server = tls.createServer(options);
  guardSpiffeTlsServer(server, options);
  if (listener !== undefined) server.on("secureConnection", listener);
  return server;
}

/**
 * Guards a server made from the builders' options (`tls.createServer`,
 * `https.createServer`, `http2.createSecureServer`). Call it before `listen`.
 *
 * - On each incoming connection, before the handshake starts, the server's
 *   default secure context is replaced when the source's SVID changed.
 * - `secureConnection` is emitted only for a client whose SVID verified and was
 *   authorized (mutual TLS); any other is destroyed and reported through
 *   `tlsClientError` with the SigilError. This holds for every listener,
 *   including ones added later or prepended.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` for options not made by the builders;
 *   `ERR_UNAVAILABLE` when the source has no SVID to present.
 */
export function guardSpiffeTlsServer<S extends tls.Server>(server: S, options: SpiffeTlsServerOptions): S {
  const state = stateOf(options, "guardSpiffeTlsServer");
  let installed: TlsSvid | undefined;
  const install = (): void => {
    const svid = currentSvid(state.source);
    if (svid === installed) return;
    const pem = pemOf(svid);
    server.setSecureContext({ ...options, key: pem.key, cert: pem.cert });
    installed = svid;
  };
  install();
  // Runs before Node's own connection listener wraps the socket in TLS.
  server.prependListener("connection", (raw: import("node:net").Socket) => {
    try {
      install();
    } catch (e) {
      raw.destroy();
      server.emit("tlsClientError", e, raw);
    }
  });
  type Emit = (this: S, event: string | symbol, ...args: unknown[]) => boolean;
  const emit = server.emit as Emit;
  server.emit = function guardedEmit(this: S, event: string | symbol, ...args: unknown[]): boolean {
    if (event === "secureConnection" && state.authorizer !== undefined) {
      const socket = args[0] as tls.TLSSocket;
      try {
        const chain = peerChainOf(socket);
        if (chain.length === 0) throw new SigilError("ERR_PERMISSION_DENIED", "tls: the client presented no certificate");
        verifiedPeers.set(socket, verifyPeerSvid(chain, state.source, state.authorizer, nowOf(state.clock)));
      } catch (e) {
        socket.destroy();
        emit.call(this, "tlsClientError", e, socket);
        return false;
      }
    }
    return emit.call(this, event, ...args);
  } as unknown as S["emit"];
  state.guarded = true;
  return server;
}

interface ClientCache {
  bundles: readonly X509Bundle[];
  ca: string[];
}

function clientOptions(source: TlsBundleSource, svidSource: TlsX509Source | undefined, authorizer: Authorizer, o: SpiffeTlsOptions): tls.ConnectionOptions {
  let cache: ClientCache | undefined;
  const options: tls.ConnectionOptions = {
    minVersion: MIN_VERSION,
    secureOptions: NO_RENEGOTIATION,
    // Needed so an error from checkServerIdentity destroys the socket (Node ignores it otherwise).
    rejectUnauthorized: true,
    checkServerIdentity: (_host, cert) => {
      try {
        const chain = chainFromPeerCertificate(cert);
        if (chain.length === 0) throw new SigilError("ERR_PERMISSION_DENIED", "tls: the server presented no certificate");
        verifyPeerSvid(chain, source, authorizer, nowOf(o.clock));
        return undefined;
      } catch (e) {
        return e as Error;
      }
    },
  };
  // Node skips checkServerIdentity on a resumed session, and https.Agent (the global one too) resumes
  // any session it cached for the same host, port, key and roots, whatever the authorizer was then.
  // An own `session` property wins over the cached one (`{ session, ...options }` in the agent).
  Object.defineProperty(options, "session", { enumerable: true, value: undefined });
  Object.defineProperty(options, "ca", {
    enumerable: true,
    get: (): string[] => {
      const bundles = bundlesOf(source as TlsX509Source);
      if (cache === undefined || cache.bundles.length !== bundles.length || cache.bundles.some((b, i) => b !== bundles[i])) {
        cache = { bundles, ca: bundles.flatMap((b) => b.authorityDers.map((d) => encodePemCertificates([d]))) };
      }
      return cache.ca;
    },
  });
  if (svidSource !== undefined) {
    Object.defineProperty(options, "key", { enumerable: true, get: () => pemOf(currentSvid(svidSource)).key });
    Object.defineProperty(options, "cert", { enumerable: true, get: () => pemOf(currentSvid(svidSource)).cert });
  }
  return options;
}

/**
 * Options for a mutual-TLS client (`tls.connect`, `https.request`): presents
 * the source's current SVID and accepts a server whose SVID verifies against
 * the bundle of the server's trust domain and passes `authorizer`. `key`,
 * `cert` and `ca` are getters read on each connect, so pass this object (or
 * call the builder) per connection rather than spreading it once.
 *
 * @example
 * ```ts
 * const socket = tls.connect({ host: "127.0.0.1", port: 8443, ...mtlsClientOptions(source, authorizeId("spiffe://b.test/api")) });
 * ```
 * @throws SigilError `ERR_INVALID_ARGUMENT` for a source or authorizer of the wrong shape.
 */
export function mtlsClientOptions(source: TlsX509Source, authorizer: Authorizer, o: SpiffeTlsOptions = {}): tls.ConnectionOptions {
  checkSource(source, true, "mtlsClientOptions");
  checkAuthorizer(authorizer, "mtlsClientOptions");
  return clientOptions(source, source, authorizer, o);
}

/** Options for a client that authenticates the server by its SVID but presents no certificate. As {@link mtlsClientOptions}. */
export function tlsClientOptions(source: TlsBundleSource, authorizer: Authorizer, o: SpiffeTlsOptions = {}): tls.ConnectionOptions {
  checkSource(source, false, "tlsClientOptions");
  checkAuthorizer(authorizer, "tlsClientOptions");
  return clientOptions(source, undefined, authorizer, o);
}

/**
 * The verified peer of a server-side socket accepted by a guarded server, or
 * undefined (one-way TLS, or not such a socket).
 */
export function verifiedPeerOf(socket: tls.TLSSocket): VerifiedPeer | undefined {
  return verifiedPeers.get(socket);
}

/** The peer's SPIFFE ID string on a guarded server's socket, or undefined. */
export function peerSpiffeIdOf(socket: tls.TLSSocket): string | undefined {
  return verifiedPeers.get(socket)?.id.toString();
}
