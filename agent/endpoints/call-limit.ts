/**
 * Open calls per uid on the Workload Endpoint. One connection carries any
 * number of HTTP/2 streams, and every open stream (a FetchX509SVID or bundle
 * watch, a health Watch, an SDS stream) holds agent memory for as long as its
 * caller keeps it. Without a limit one local user could open streams until
 * the agent runs out of memory; with it, a user's calls beyond the limit are
 * refused with ResourceExhausted as soon as their headers arrive, before any
 * attestation.
 */
import { Metadata, ServerInterceptingCall, status, type ServerInterceptor } from "@grpc/grpc-js";
import type { Logger } from "../../common/log.js";
import type { PeerCredentials } from "./peer.js";

/** Default of `agent.max_workload_calls_per_uid`. */
export const DEFAULT_MAX_CALLS_PER_UID = 1024;

/** Options of {@link perUidCallLimit}. */
export interface PerUidCallLimitOptions {
  /** The credentials behind a `call.getPeer()` string (the endpoint's PeerTracker `lookup`). */
  readonly resolvePeer: (callPeer: string) => PeerCredentials | undefined;
  /** Calls one uid may have open at once, on all its connections and services together. */
  readonly maxPerUid: number;
  /** Told when a uid is first refused (once, until it has no call open: a flood is one line). */
  readonly log?: Logger;
}

/**
 * A server interceptor that refuses a uid's calls beyond `maxPerUid` open
 * ones with RESOURCE_EXHAUSTED. Put it first, so refused calls cost nothing more.
 *
 * @example
 * ```ts
 * const server = new Server({ interceptors: [perUidCallLimit({ resolvePeer: (p) => peers.lookup(p), maxPerUid: 1024, log }), …] });
 * ```
 */
export function perUidCallLimit(options: PerUidCallLimitOptions): ServerInterceptor {
  const open = new Map<number, number>();
  const refusing = new Set<number>();
  return (_descriptor, call) => {
    // Unknown peers are the handlers' to refuse; they never reach here through the endpoint's listener.
    const uid = options.resolvePeer(call.getPeer())?.uid;
    let held = false;
    const release = (): void => {
      if (!held || uid === undefined) return;
      held = false;
      const left = (open.get(uid) ?? 1) - 1;
      if (left > 0) open.set(uid, left);
      else {
        open.delete(uid);
        refusing.delete(uid);
      }
    };
    return new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, nextMetadata) => {
            if (uid === undefined) return nextMetadata(metadata);
            const count = open.get(uid) ?? 0;
            if (count >= options.maxPerUid) {
              if (!refusing.has(uid)) {
                refusing.add(uid);
                options.log?.warn({ caller_uid: uid, calls: count }, `Workload API: uid ${uid} has ${count} calls open, the most one user may; refusing its further calls`);
              }
              call.sendStatus({ code: status.RESOURCE_EXHAUSTED, details: `workload endpoint: uid ${uid} has ${count} calls open, the most one user may`, metadata: new Metadata() });
              return;
            }
            open.set(uid, count + 1);
            held = true;
            nextMetadata(metadata);
          },
          onCancel: release,
        }),
      sendStatus: (st, next) => {
        release();
        next(st);
      },
    });
  };
}
