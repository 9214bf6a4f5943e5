/**
 * Version and nonce bookkeeping of one state-of-the-world xDS stream (Envoy's
 * "xDS REST and gRPC protocol"), as the SDS server keeps it. Pure: the nonce
 * source is injected.
 *
 * - `version_info` of a response names its content: the first 16 hex digits
 *   of the SHA-256 of the encoded resources. The same secrets carry the same
 *   version on every stream and after a reconnect, and different ones never
 *   share a version.
 * - `nonce` is fresh on every response (unique in the agent process); a request is read only if it carries
 *   the nonce of the last response sent (or, before any was sent, none).
 *   Older ones are stale (the client had not seen the latest response yet)
 *   and ignored, as the protocol says.
 * - A request with the current nonce and no `error_detail` ACKs: its
 *   `version_info` becomes the applied version. With `error_detail` it NACKs:
 *   the applied version stays what it was, and the rejected content is not
 *   offered again (the stream sends only a state that differs from the last
 *   one sent); the next change in the caller's secrets is sent as usual.
 * - The subscription is the set of `resource_names` (order and repeats do not
 *   matter); a request that changes it, or the first one, is answered.
 * - A request without `node` keeps the node seen before (Envoy may send it on
 *   the first request only).
 */
import { createHash } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import type { Node } from "../../../proto/gen/envoy/config/core/v3/base_pb.js";
import { DiscoveryResponseSchema, type DiscoveryRequest, type DiscoveryResponse } from "../../../proto/gen/envoy/service/discovery/v3/discovery_pb.js";
import { encodeMessage, presetEncoding } from "../../../spiffe/grpc/service.js";

/** What a request means for the stream. */
export type RequestVerdict =
  /** The first request of the stream. */
  | { readonly kind: "initial"; readonly namesChanged: true }
  /** Applied the response with this nonce. */
  | { readonly kind: "ack"; readonly version: string; readonly namesChanged: boolean }
  /** Rejected the response with this nonce; `appliedVersion` is the one the client kept. */
  | { readonly kind: "nack"; readonly rejectedVersion: string; readonly appliedVersion: string; readonly reason: string; readonly code: number; readonly namesChanged: boolean }
  /** Carries an older nonce (or none after a response): ignored, names and all. */
  | { readonly kind: "stale"; readonly nonce: string; readonly namesChanged: false };

/** Options of {@link XdsStreamState}. */
export interface XdsStreamOptions {
  /** A fresh nonce per response; default {@link nextNonce}. */
  readonly nonce?: () => string;
}

let lastNonce = 0;

/**
 * Nonces unique in the agent process: a counter, in hex. A nonce only pairs a
 * request with a response on one stream; it needs no secrecy (the stream's
 * caller was attested), and a counter costs nothing per push.
 */
export function nextNonce(): string {
  lastNonce += 1;
  return lastNonce.toString(16);
}

/** The version naming a response content: see the module comment. Memoised per content object. */
const versions = new WeakMap<DiscoveryResponse, string>();

/** `version_info` for `content` (its resources as sent). */
export function contentVersion(content: DiscoveryResponse): string {
  let v = versions.get(content);
  if (v === undefined) {
    v = createHash("sha256").update(encodeMessage(DiscoveryResponseSchema, content)).digest("hex").slice(0, 16);
    versions.set(content, v);
  }
  return v;
}

/** One SotW stream's bookkeeping; see the module comment. */
export class XdsStreamState {
  readonly #nonce: () => string;
  #names: readonly string[] | undefined;
  #node: Node | undefined;
  /** Nonce and version of the last response sent. */
  #sentNonce: string | undefined;
  #sentVersion = "";
  /** The version the client last said it applied ("" before any ACK). */
  #applied = "";

  constructor(options: XdsStreamOptions = {}) {
    this.#nonce = options.nonce ?? nextNonce;
  }

  /** The names subscribed to (deduplicated, in first-request order), or undefined before the first request. */
  get names(): readonly string[] | undefined {
    return this.#names;
  }

  /** The last node the client described. */
  get node(): Node | undefined {
    return this.#node;
  }

  /** The version the client last ACKed ("" before any). */
  get appliedVersion(): string {
    return this.#applied;
  }

  /** The version of the last response sent ("" before any). */
  get sentVersion(): string {
    return this.#sentVersion;
  }

  /** Reads a request; see {@link RequestVerdict}. */
  receive(req: DiscoveryRequest): RequestVerdict {
    const first = this.#names === undefined;
    if (!first && this.#sentNonce !== undefined && req.responseNonce !== this.#sentNonce) {
      return { kind: "stale", nonce: req.responseNonce, namesChanged: false };
    }
    if (req.node !== undefined) this.#node = req.node;
    const names = [...new Set(req.resourceNames)];
    const namesChanged = first || !sameSet(names, this.#names ?? []);
    if (namesChanged) this.#names = names;
    if (first) return { kind: "initial", namesChanged: true };
    if (this.#sentNonce === undefined) {
      // Nothing sent yet (no name it asked for exists): only the subscription can change.
      return { kind: "ack", version: this.#applied, namesChanged };
    }
    if (req.errorDetail !== undefined) {
      return { kind: "nack", rejectedVersion: this.#sentVersion, appliedVersion: req.versionInfo, reason: req.errorDetail.message, code: req.errorDetail.code, namesChanged };
    }
    this.#applied = req.versionInfo;
    return { kind: "ack", version: req.versionInfo, namesChanged };
  }

  /**
   * The response to send for `content`, with its version and a fresh nonce;
   * remembered as the last sent. `content` (shared by every stream with the
   * same answer) is encoded once; each stream's response is those bytes plus
   * its own version and nonce.
   */
  stamp(content: DiscoveryResponse): DiscoveryResponse {
    const versionInfo = contentVersion(content);
    const nonce = this.#nonce();
    this.#sentNonce = nonce;
    this.#sentVersion = versionInfo;
    const stamped = create(DiscoveryResponseSchema, { typeUrl: content.typeUrl, resources: content.resources, canary: content.canary, versionInfo, nonce });
    const tail = toBinary(DiscoveryResponseSchema, create(DiscoveryResponseSchema, { versionInfo, nonce }));
    presetEncoding(stamped, Buffer.concat([encodeMessage(DiscoveryResponseSchema, content), tail]));
    return stamped;
  }
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(b);
  return a.every((x) => s.has(x));
}
