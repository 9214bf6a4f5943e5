/**
 * Version and nonce bookkeeping of one state-of-the-world xDS stream (Envoy's
 * "xDS REST and gRPC protocol"), as the SDS server keeps it.
 *
 * - `version_info` of a response names its content: the first 16 hex digits
 *   of the SHA-256 of the encoded resources. The same secrets carry the same
 *   version on every stream and after a reconnect, and different ones never
 *   share a version.
 * - `nonce` is fresh on every response of a stream (64 random bits: an agent-wide
 *   counter would tell a caller how many responses other streams were sent;
 *   streams sending the same secrets in the same turn share one response, and
 *   a stream sending such a shared response a second time gets its own
 *   nonce); a request is read only if it carries
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
 *   the first request only). Only what the secrets depend on is kept of it
 *   ({@link trimNode}): an Envoy's node lists its extensions and Istio's
 *   metadata (up to the 128 KiB request cap, several times that decoded), and
 *   a uid may hold a thousand streams.
 */
import { createHash, randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { BuildVersionSchema, NodeSchema, type Node } from "../../../proto/gen/envoy/config/core/v3/base_pb.js";
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

/** Node metadata key read by `spiffeValidationFor`. */
const VALIDATOR_OVERRIDE_KEY = "disable_spiffe_cert_validation";

/** Longest `id` and `cluster` kept of a node (they only name it in debugging). */
const NODE_NAME_MAX = 256;

/**
 * What a stream keeps of a client's node: `id` and `cluster` (capped), the
 * `disable_spiffe_cert_validation` metadata value when it is a bool or a short
 * string, and the build version's number. Everything else (other metadata,
 * client features, Envoy's extension list and other fields Sigil's trimmed
 * proto keeps as unknown bytes) is dropped.
 */
export function trimNode(node: Node): Node {
  const override = node.metadata?.[VALIDATOR_OVERRIDE_KEY];
  const keep = typeof override === "boolean" || (typeof override === "string" && override.length <= 8);
  const uv = node.userAgentVersionType;
  return create(NodeSchema, {
    id: node.id.slice(0, NODE_NAME_MAX),
    cluster: node.cluster.slice(0, NODE_NAME_MAX),
    ...(keep ? { metadata: { [VALIDATOR_OVERRIDE_KEY]: override } } : {}),
    ...(uv.case === "userAgentBuildVersion" && uv.value.version !== undefined
      ? { userAgentVersionType: { case: "userAgentBuildVersion" as const, value: create(BuildVersionSchema, { version: { majorNumber: uv.value.version.majorNumber, minorNumber: uv.value.version.minorNumber, patch: uv.value.version.patch } }) } }
      : {}),
  });
}

/**
 * A nonce: 64 random bits in hex. A nonce only pairs a request with a response
 * on one stream; random rather than a counter so it reveals nothing of other
 * streams' traffic.
 */
function nextNonce(): string {
  return randomBytes(8).toString("hex");
}

/** The response for `content` with its own version and a fresh nonce, encoded from the content's bytes. */
function stampFresh(content: DiscoveryResponse): DiscoveryResponse {
  const versionInfo = contentVersion(content);
  const nonce = nextNonce();
  // A message is a plain object; create() would re-check every field.
  const stamped = { ...content, versionInfo, nonce };
  presetEncoding(stamped, appendStringFields(encodeMessage(DiscoveryResponseSchema, content), versionInfo, nonce));
  return stamped;
}

/** The response stamped from each content object. */
const stampedByContent = new WeakMap<DiscoveryResponse, DiscoveryResponse>();

/**
 * The response for `content`: its version and a nonce, stamped once per
 * content object and shared by every stream that sends it: the 1,000 streams
 * a rotation updates share one response and one encoding (the content's bytes
 * followed by the two fields). A stream that would send the same content
 * object a second time (A, B, A within one turn) stamps its own
 * ({@link XdsStreamState.stamp}), so a stream never repeats a nonce.
 */
export function stampResponse(content: DiscoveryResponse): DiscoveryResponse {
  let stamped = stampedByContent.get(content);
  if (stamped === undefined) {
    stamped = stampFresh(content);
    stampedByContent.set(content, stamped);
  }
  return stamped;
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
  #names: readonly string[] | undefined;
  #node: Node | undefined;
  /** Nonce and version of the last response sent. */
  #sentNonce: string | undefined;
  #sentVersion = "";
  /** The version the client last said it applied ("" before any ACK). */
  #applied = "";
  /** Shared responses this stream has sent: one sent again is stamped afresh. */
  readonly #sent = new WeakSet<DiscoveryResponse>();

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
    if (req.node !== undefined) this.#node = trimNode(req.node);
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

  /** The response to send for `content` ({@link stampResponse}), remembered as the last sent. */
  stamp(content: DiscoveryResponse): DiscoveryResponse {
    let stamped = stampResponse(content);
    if (this.#sent.has(stamped)) stamped = stampFresh(content);
    this.#sent.add(stamped);
    this.#sentNonce = stamped.nonce;
    this.#sentVersion = stamped.versionInfo;
    return stamped;
  }
}

/** `DiscoveryResponse.version_info` (1) and `.nonce` (5) tags, wire type 2: Envoy's field numbers. */
const VERSION_INFO_TAG = (1 << 3) | 2;
const NONCE_TAG = (5 << 3) | 2;

function varintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v >>>= 7;
    n += 1;
  }
  return n;
}

function writeVarint(buf: Buffer, offset: number, v: number): number {
  while (v >= 0x80) {
    buf[offset++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  buf[offset++] = v;
  return offset;
}

/** `encoded` followed by `version_info` and `nonce`, in one allocation. */
function appendStringFields(encoded: Buffer, versionInfo: string, nonce: string): Buffer {
  const vLen = Buffer.byteLength(versionInfo, "utf8");
  const nLen = Buffer.byteLength(nonce, "utf8");
  const out = Buffer.allocUnsafe(encoded.length + 2 + varintSize(vLen) + vLen + varintSize(nLen) + nLen);
  let o = encoded.copy(out, 0);
  out[o++] = VERSION_INFO_TAG;
  o = writeVarint(out, o, vLen);
  o += out.write(versionInfo, o, "utf8");
  out[o++] = NONCE_TAG;
  o = writeVarint(out, o, nLen);
  out.write(nonce, o, "utf8");
  return out;
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(b);
  return a.every((x) => s.has(x));
}
