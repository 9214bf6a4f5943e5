/**
 * TLS with X509-SVIDs for Node (`tls`, `https`, `http2`): option builders kept
 * current on rotation, authorizers, and the peer check they share with the
 * bundle endpoint client.
 */
export { authorizeAny, authorizeId, authorizeMemberOf, authorizeOneOf, type Authorizer } from "./authorizer.js";
export {
  createSpiffeTlsServer,
  guardSpiffeTlsServer,
  mtlsClientOptions,
  mtlsServerOptions,
  peerSpiffeIdOf,
  tlsClientOptions,
  tlsServerOptions,
  verifiedPeerOf,
  type SpiffeTlsOptions,
  type SpiffeTlsServerOptions,
  type TlsBundleSource,
} from "./options.js";
export { StaticX509Source, type StaticX509SourceInit, type TlsSvid, type TlsX509Source } from "./source.js";
export { chainFromPeerCertificate, peerChainOf, verifyPeerSvid, type VerifiedPeer, type VerifyPeerOptions } from "./verify-peer.js";
