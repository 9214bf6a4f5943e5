/**
 * SPIFFE Workload API client library: endpoint addresses, the gRPC client,
 * and live X.509 / JWT sources.
 */
export {
  parseEndpointAddress,
  resolveEndpointAddress,
  SPIFFE_ENDPOINT_SOCKET,
  type EndpointAddress,
  type TcpEndpointAddress,
  type UnixEndpointAddress,
} from "./address.js";
export { backoffDelay, DEFAULT_BACKOFF, watchActionForStatus, type BackoffPolicy, type WatchAction } from "./backoff.js";
export {
  createWorkloadApiClient,
  WORKLOAD_API_HEADER,
  type CallOptions,
  type FetchJwtSvidParams,
  type WatchErrorHandler,
  type WatchErrorInfo,
  type Watcher,
  type WatchUpdateHandler,
  type WorkloadApiClient,
  type WorkloadApiClientOptions,
} from "./client.js";
export { grpcStatusName, isWorkloadApiError, WorkloadApiError, workloadApiErrorFromServiceError } from "./errors.js";
export {
  JwtBundles,
  parseJwtBundlesResponse,
  parseJwtSvidResponse,
  parseValidateJwtSvidResponse,
  type JwtBundleMap,
  type WorkloadJwtSvid,
  type ValidatedJwtSvid,
} from "./jwt-context.js";
export { JwtSource } from "./jwt-source.js";
export type { LiveSourceEvents, SourceOptions } from "./live-value.js";
export {
  parseX509BundlesResponse,
  parseX509SvidResponse,
  X509Bundles,
  X509Context,
  type X509BundleMap,
  type X509Svid,
} from "./x509-context.js";
export { X509Source } from "./x509-source.js";
