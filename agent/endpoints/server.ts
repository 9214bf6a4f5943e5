/**
 * The Workload Endpoint: a gRPC server on a Unix domain socket (WEP-1, WEP-3)
 * that knows, for every call, the kernel credentials of the calling process
 * (WEP-13).
 *
 * grpc-js handlers cannot reach their socket, and libuv does not expose
 * SO_PEERCRED (ecosystem notes B.11). So the endpoint owns the listener: a
 * plain `net.Server` accepts each connection, reads its peer credentials
 * (native addon) *before* any byte of gRPC is processed, gives the socket a
 * unique synthetic `remoteAddress` and hands it to grpc-js through
 * `server.createConnectionInjector`. grpc-js derives `call.getPeer()` from
 * `session.socket.remoteAddress` (`BaseServerInterceptingCall.getPeer`, and
 * the http2 session's socket proxy forwards property reads to the real
 * socket), so a handler's `call.getPeer()` is that synthetic address, and the
 * {@link PeerTracker} maps it back to the credentials until the socket closes.
 *
 * Socket file: mode 0777, so any workload can connect (the agent identifies
 * callers, it does not gate them; WEP-12). Put it in a directory the operator
 * controls, mode 0755 and owned by the agent's user, so nobody else can
 * replace the socket; SPIRE uses /tmp/spire-agent/public/api.sock. A stale
 * socket file is removed at start; a socket another live agent listens on is
 * left alone and the start fails.
 */
import type { Socket } from "node:net";
import type { DescService } from "@bufbuild/protobuf";
import { Server, type ServiceDefinition, type UntypedServiceImplementation } from "@grpc/grpc-js";
import { addHealthService, type HealthService } from "../../common/health/grpc-health.js";
import type { Logger } from "../../common/log.js";
import { rpcMetricsInterceptor, type Metrics } from "../../common/metrics.js";
import { listenUnixGrpc } from "../../common/unix-socket.js";
import { Health } from "../../proto/gen/grpc/health/v1/health_pb.js";
import { isSigilError, SigilError } from "../../spiffe/errors.js";
import { DEFAULT_MAX_CALLS_PER_UID, perUidCallLimit } from "./call-limit.js";
import { peerCredentials, releasePeer, type PeerCredentials } from "./peer.js";
import { addReflectionService, createReflectionService } from "./reflection.js";


/**
 * Largest request message the endpoint reads, in bytes. gRPC buffers each
 * request whole before decoding it, so this bounds what one open call can
 * make the agent hold. Workload API requests are small: the largest the
 * server would honour, FetchJWTSVID with 32 audiences of 1 KiB, takes 33 KiB.
 */
export const MAX_WORKLOAD_REQUEST_BYTES = 64 * 1024;

/** Prefix of the synthetic peer addresses; never a real IP or path. */
const PEER_PREFIX = "sigil-uds-peer";

/**
 * Maps the synthetic peer address of each open connection to the peer
 * credentials read when it was accepted.
 */
export interface PeerTracker {
  /**
   * Reads the credentials of a freshly accepted socket (with a pidfd on the
   * caller, released when the socket closes), gives the socket a unique
   * synthetic `remoteAddress` (what grpc-js's `call.getPeer()` reports) and
   * remembers the mapping until the socket closes. Returns the address.
   *
   * @throws SigilError `ERR_RESOURCE_EXHAUSTED` when the caller's uid already
   *   holds as many connections as one user may: close the socket (nothing is
   *   kept for it; the tracker logged the first refusal).
   */
  register(socket: Socket): string;
  /** The credentials behind a `call.getPeer()` string, or undefined for an unknown peer. */
  lookup(callPeer: string): PeerCredentials | undefined;
  /** Number of connections tracked (for tests and debug output). */
  readonly size: number;
}

/** Default of {@link PeerTrackerOptions.maxConnectionsPerUid} (`agent.max_workload_connections_per_uid`). */
export const DEFAULT_MAX_CONNECTIONS_PER_UID = 1024;

/** Options of {@link createPeerTracker}. */
export interface PeerTrackerOptions {
  /** Reads a socket's credentials; default SO_PEERCRED. */
  readonly readCredentials?: (socket: Socket) => PeerCredentials;
  /**
   * Open connections one uid may hold. Each costs the agent two descriptors
   * (socket and pidfd) for as long as the caller keeps it, so without a limit
   * one user could exhaust the agent's descriptors and lock everyone else out.
   * Default {@link DEFAULT_MAX_CONNECTIONS_PER_UID}.
   */
  readonly maxConnectionsPerUid?: number;
  /** Told when a uid is first refused (once, until it holds no connection: a flood is one line). */
  readonly log?: Logger;
}

/**
 * Creates a peer tracker. Pass the same tracker to the endpoint and to the
 * handler's attester (`createCallerAttester({ resolvePeer: (p) => peers.lookup(p) })`).
 */
export function createPeerTracker(options: PeerTrackerOptions = {}): PeerTracker {
  const readCredentials = options.readCredentials ?? peerCredentials;
  const maxPerUid = options.maxConnectionsPerUid ?? DEFAULT_MAX_CONNECTIONS_PER_UID;
  const byPeer = new Map<string, PeerCredentials>();
  const perUid = new Map<number, number>();
  /** Uids refused since they last held no connection (logged once each). */
  const refusing = new Set<number>();
  let next = 0;
  return {
    register(socket) {
      const cred = readCredentials(socket);
      const held = perUid.get(cred.uid) ?? 0;
      if (held >= maxPerUid) {
        releasePeer(cred);
        if (!refusing.has(cred.uid)) {
          refusing.add(cred.uid);
          options.log?.warn(
            { caller_uid: cred.uid, pid: cred.pid, connections: held },
            `Workload API: uid ${cred.uid} holds ${held} connections, the most one user may; closing its further connections`,
          );
        }
        throw new SigilError("ERR_RESOURCE_EXHAUSTED", `workload endpoint: uid ${cred.uid} holds ${held} connections, the most one user may`);
      }
      perUid.set(cred.uid, held + 1);
      next += 1;
      // Readable in logs, unique per connection; getPeer() returns it verbatim (no port).
      const address = `${PEER_PREFIX}#${next}(pid=${cred.pid},uid=${cred.uid})`;
      Object.defineProperty(socket, "remoteAddress", { value: address, configurable: true, enumerable: true });
      Object.defineProperty(socket, "remotePort", { value: undefined, configurable: true, enumerable: true });
      byPeer.set(address, cred);
      socket.once("close", () => {
        byPeer.delete(address);
        releasePeer(cred);
        const left = (perUid.get(cred.uid) ?? 1) - 1;
        if (left > 0) perUid.set(cred.uid, left);
        else {
          perUid.delete(cred.uid);
          refusing.delete(cred.uid);
        }
      });
      return address;
    },
    lookup(callPeer) {
      return byPeer.get(callPeer);
    },
    get size() {
      return byPeer.size;
    },
  };
}

/**
 * A gRPC service served on the endpoint. What every call needs whatever its
 * service (the per-uid call limit, RPC metrics) is the endpoint's; caller
 * admission is each service's, through `admission.ts` and `stream-watch.ts`.
 */
export interface EndpointService {
  /** Its protobuf description: server reflection lists and describes it. */
  readonly service: DescService;
  readonly definition: ServiceDefinition;
  readonly implementation: UntypedServiceImplementation;
}

/** Options of {@link startWorkloadEndpoint}. */
export interface WorkloadEndpointOptions {
  /** Absolute path of the Unix socket. Its directory is created (0755) when missing. */
  readonly socketPath: string;
  /** The services on the socket, each under its own name (WEP-19): the Workload API (`createWorkloadApiHandler`), Envoy SDS, … */
  readonly services: readonly EndpointService[];
  /** The tracker the services' attesters resolve peers with. */
  readonly peers: PeerTracker;
  /** `grpc.health.v1.Health`, when given. */
  readonly health?: HealthService;
  /** Largest request message read, in bytes; default {@link MAX_WORKLOAD_REQUEST_BYTES} (SDS needs more: `SDS_MAX_REQUEST_BYTES`). */
  readonly maxRequestBytes?: number;
  /** Calls one uid may have open at once (all services together); default {@link DEFAULT_MAX_CALLS_PER_UID}. */
  readonly maxCallsPerUid?: number;
  /** Receives `sigil_rpc_requests_total` and `sigil_rpc_duration_seconds`: every call counted once, whichever service it is for. */
  readonly metrics: Metrics;
  readonly log: Logger;
}

/** A running Workload Endpoint. */
export interface WorkloadEndpoint {
  /** The socket path served. */
  readonly socketPath: string;
  /** `unix://<socketPath>`: what `SPIFFE_ENDPOINT_SOCKET` should be set to. */
  readonly address: string;
  /**
   * Stops accepting, ends open calls (streams are cancelled, clients see
   * Unavailable and reconnect elsewhere) and removes the socket file. Idempotent.
   */
  close(): Promise<void>;
}

/**
 * Starts the Workload Endpoint on a Unix socket.
 *
 * @example
 * ```ts
 * const peers = createPeerTracker();
 * const handler = createWorkloadApiHandler({ cache, attest: createCallerAttester({ resolvePeer: (p) => peers.lookup(p), attestors, timeoutMs, log }), trustDomain, log, metrics });
 * const endpoint = await startWorkloadEndpoint({ socketPath: "/tmp/sigil-agent/public/api.sock", services: [handler], peers, health, metrics, log });
 * // … on shutdown
 * await endpoint.close();
 * ```
 * @throws SigilError `ERR_ALREADY_EXISTS` when another agent serves the socket
 *   or a non-socket file is in the way; `ERR_INVALID_ARGUMENT` for a relative path
 *   or two services of the same name.
 */
export async function startWorkloadEndpoint(options: WorkloadEndpointOptions): Promise<WorkloadEndpoint> {
  const { socketPath, log, peers } = options;

  const { services } = options;
  const names = services.map((s) => s.service.typeName);
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice !== undefined) throw new SigilError("ERR_INVALID_ARGUMENT", `workload endpoint: service ${twice} is given twice`);
  // First: a call over its user's limit is refused before anything else looks at it. Then one count per call, for every service.
  const callLimit = perUidCallLimit({ resolvePeer: (p) => peers.lookup(p), maxPerUid: options.maxCallsPerUid ?? DEFAULT_MAX_CALLS_PER_UID, log });
  const grpcServer = new Server({ interceptors: [callLimit, rpcMetricsInterceptor(options.metrics)], "grpc.max_receive_message_length": options.maxRequestBytes ?? MAX_WORKLOAD_REQUEST_BYTES });
  for (const s of services) grpcServer.addService(s.definition, s.implementation);
  if (options.health !== undefined) addHealthService(grpcServer, options.health);
  // WEP-21: server reflection describing every service registered above.
  const described = services.map((s) => s.service);
  addReflectionService(grpcServer, createReflectionService(options.health === undefined ? described : [...described, Health]));
  // WEP-7: plaintext; the caller is identified by the kernel, not by TLS. Socket 0777: the agent identifies callers, it does not gate them.
  const listener = await listenUnixGrpc({
    socketPath,
    server: grpcServer,
    dirMode: 0o755,
    socketMode: 0o777,
    subsystem: "workload endpoint",
    log,
    onConnection: (socket) => {
      try {
        peers.register(socket);
        return true;
      } catch (e) {
        // A user over its connection limit: closed before gRPC sees the socket, logged once by the tracker.
        if (isSigilError(e, "ERR_RESOURCE_EXHAUSTED")) return false;
        throw e;
      }
    },
  });
  log.info({ socket_path: socketPath }, "Workload API listening");

  let closing: Promise<void> | undefined;
  return {
    socketPath,
    address: `unix://${socketPath}`,
    close() {
      closing ??= (async () => {
        options.health?.shutdown();
        // Streams never end on their own: cancel them rather than wait.
        await listener.close("force");
        log.info({ socket_path: socketPath }, "Workload API stopped");
      })();
      return closing;
    },
  };
}
