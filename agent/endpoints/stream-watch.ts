/**
 * Server streams that follow the agent's cache, for every API on the Workload
 * Endpoint (the Workload API's FetchX509SVID and bundle streams, Envoy SDS's
 * bidirectional StreamSecrets). The API says what the caller's complete state
 * is; this module decides when to send it:
 *
 * - the first message at once (WAPI-7), then again whenever the cache changes
 *   and the state differs from the last one sent (WAPI-5, WAPI-6); a burst of
 *   changes (a sync rotating many SVIDs) is recomputed once;
 * - before every message the caller is re-checked (`AttestedCaller.recheck`):
 *   one that exited or exec'd into another owner since it was attested gets
 *   its stream ended instead of the next SVID;
 * - one message at a time: while one is on its way (a client that reads
 *   slowly, or not at all), newer states are not queued behind it; the latest
 *   is computed, re-checked and sent once it is out. The agent holds at most
 *   one message per stream;
 * - {@link PENDING} sends nothing and keeps the stream open (an identity of
 *   the caller is being re-issued after a registration change); `undefined`
 *   (no identity) ends it with the API's failure.
 *
 * A bidirectional API (SDS) also recomputes when the client asks for something
 * else ({@link WatchedStream.refresh}), and may write each state in an envelope
 * of its own (`stamp`: xDS's version and nonce) while states are still compared
 * without it.
 */
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { Metadata } from "@grpc/grpc-js";
import type { Logger } from "../../common/log.js";
import type { Selector } from "../../common/selector.js";
import { encodeMessage } from "../../spiffe/grpc/service.js";
import type { AttestedCaller } from "../attestation/workload.js";
import type { WorkloadCache } from "../cache/types.js";
import { attestationFailure, errorFailure, type CallFailure } from "./admission.js";

/** What a stream's `compute` returns while an identity of the caller is being (re)issued: send nothing, keep the stream open. */
export const PENDING: unique symbol = Symbol("pending");

/** Options of {@link createStreamWatcher}. */
export interface StreamWatcherOptions {
  /** Names the API in log lines (`Workload API`). */
  readonly api: string;
  /** Whose changes make streams recompute. */
  readonly cache: Pick<WorkloadCache, "subscribe">;
  /**
   * The failure that ends a stream whose caller has no identity any more, after
   * logging it (`EndpointAdmission.noIdentity`).
   */
  readonly noIdentity: (method: string, callPeer: string, selectors: readonly Selector[]) => CallFailure;
  readonly log: Logger;
}

/** What the watcher needs of a server or bidirectional stream (grpc-js `ServerWritableStream`, `ServerDuplexStream`). */
export interface WatchableCall<M> {
  readonly cancelled: boolean;
  getPeer(): string;
  write(message: M, callback: () => void): boolean;
  end(): void;
  emit(event: "error", error: unknown): boolean;
  on(event: "cancelled", listener: () => void): unknown;
}

/** A stream being served by {@link StreamWatcher.watch}. */
export interface WatchedStream {
  /** Recomputes the state now (the client asked for something else); sent if it differs from the last one sent. */
  refresh(): void;
  /** Ends the stream: cleanly, or with `failure`. Idempotent. */
  end(failure?: CallFailure): void;
}

/** Runs server streams off cache changes; see the module comment. */
export interface StreamWatcher {
  /**
   * Serves `call` until the client cancels it, the caller has no identity, its
   * re-check fails, or `compute` throws (the stream ends with the mapped status).
   * `compute` gives the caller's complete state: a message, {@link PENDING},
   * or `undefined` for no identity. `stamp`, when given, makes the message
   * written from a state that differs from the last one sent (called once per
   * message, just before it is written); states are compared unstamped.
   */
  watch<D extends DescMessage>(
    call: WatchableCall<MessageShape<D>>,
    method: string,
    schema: D,
    caller: AttestedCaller,
    compute: () => MessageShape<D> | undefined | typeof PENDING,
    stamp?: (state: MessageShape<D>) => MessageShape<D>,
  ): WatchedStream;
}

/**
 * Creates the stream watcher one API's handlers share.
 *
 * @example
 * ```ts
 * const streams = createStreamWatcher({ api: "Workload API", cache, noIdentity: admission.noIdentity, log });
 * streams.watch(call, "FetchX509SVID", X509SVIDResponseSchema, caller, () => buildResponse(caller.selectors));
 * ```
 */
export function createStreamWatcher(options: StreamWatcherOptions): StreamWatcher {
  const { api, cache, noIdentity, log } = options;
  return {
    watch(call, method, schema, caller, compute, stamp) {
      // The client may have gone while it was being attested.
      if (call.cancelled) return { refresh: () => undefined, end: () => undefined };
      // Read once: the socket behind getPeer() may be gone by the time the last identity is.
      const callPeer = call.getPeer();
      // The wire bytes of the last message sent: a new state is sent only when its bytes differ.
      let last: Buffer | undefined;
      let done = false;
      let scheduled = false;
      let sending = false;
      let missed = false;
      let unsubscribe: (() => void) | undefined;
      const finish = (f: CallFailure | undefined): void => {
        if (done) return;
        done = true;
        unsubscribe?.();
        if (call.cancelled) return;
        if (f === undefined) call.end();
        else call.emit("error", { ...f, metadata: new Metadata() });
      };
      const push = (): void => {
        if (done) return;
        let msg: MessageShape<typeof schema> | undefined | typeof PENDING;
        try {
          msg = compute();
        } catch (e) {
          log.error({ method, err: e }, `${api} stream update failed`);
          finish(errorFailure(e));
          return;
        }
        // The caller's view is incomplete until the new SVID arrives; the next cache change recomputes it.
        if (msg === PENDING) return;
        if (msg === undefined) {
          finish(noIdentity(method, callPeer, caller.selectors));
          return;
        }
        const bytes = encodeMessage(schema, msg);
        if (last !== undefined && last.equals(bytes)) return;
        if (sending) {
          missed = true;
          return;
        }
        try {
          caller.recheck();
        } catch (e) {
          log.warn({ method, caller: callPeer }, `${api} stream ended: its caller changed since it was attested`);
          finish(attestationFailure(e));
          return;
        }
        last = bytes;
        sending = true;
        call.write(stamp === undefined ? msg : stamp(msg), () => {
          sending = false;
          if (!missed) return;
          missed = false;
          push();
        });
      };
      call.on("cancelled", () => finish(undefined));
      unsubscribe = cache.subscribe(() => {
        if (scheduled || done) return;
        scheduled = true;
        queueMicrotask(() => {
          scheduled = false;
          push();
        });
      });
      push();
      return { refresh: push, end: finish };
    },
  };
}
