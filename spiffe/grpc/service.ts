/**
 * gRPC glue between protobuf-es v2 generated services and `@grpc/grpc-js`.
 *
 * grpc-js needs a `ServiceDefinition`: per method, the wire path, the streaming
 * kinds and the (de)serialisers. protobuf-es describes the same service as a
 * `GenService`. This turns one into the other, so the Workload API client and
 * the agent's server share the exact paths (WAPI-2: `/SpiffeWorkloadAPI/<Rpc>`,
 * no package) and codecs.
 */
import { fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import type {
  handleBidiStreamingCall,
  handleClientStreamingCall,
  handleServerStreamingCall,
  handleUnaryCall,
  MethodDefinition,
} from "@grpc/grpc-js";

/** The four protobuf method kinds, as protobuf-es names them. */
export type GrpcMethodKind = "unary" | "server_streaming" | "client_streaming" | "bidi_streaming";

/** A grpc-js method definition typed with the protobuf-es message shapes of one method. */
export type GrpcMethodDefinition<I extends DescMessage, O extends DescMessage> = MethodDefinition<
  MessageShape<I>,
  MessageShape<O>
>;

/**
 * A grpc-js `ServiceDefinition` for a protobuf-es service, keyed by each
 * method's `localName` (e.g. `fetchX509SVID`). Assignable to grpc-js's untyped
 * `ServiceDefinition`, so it works with `server.addService` and `new Client`.
 */
export type GrpcServiceDefinition<S extends GenServiceMethods> = {
  readonly [K in keyof S]: GrpcMethodDefinition<S[K]["input"], S[K]["output"]>;
};

/**
 * Typed grpc-js handlers for a protobuf-es service: one handler per method,
 * its shape chosen by the method kind. Pass to `server.addService(def, impl)`.
 */
export type GrpcServiceImplementation<S extends GenServiceMethods> = {
  [K in keyof S]: GrpcHandler<S[K]["methodKind"], MessageShape<S[K]["input"]>, MessageShape<S[K]["output"]>>;
};

/** The grpc-js handler type for one method kind. */
export type GrpcHandler<Kind extends GrpcMethodKind, I, O> = Kind extends "unary"
  ? handleUnaryCall<I, O>
  : Kind extends "server_streaming"
    ? handleServerStreamingCall<I, O>
    : Kind extends "client_streaming"
      ? handleClientStreamingCall<I, O>
      : handleBidiStreamingCall<I, O>;

/**
 * The wire path of a method: `/<fully-qualified service name>/<method name>`.
 * For the Workload API, whose proto has no package, this is
 * `/SpiffeWorkloadAPI/FetchX509SVID` (pitfall A21).
 */
export function grpcMethodPath(serviceTypeName: string, methodName: string): string {
  return `/${serviceTypeName}/${methodName}`;
}

/** Wire bytes of messages already encoded, by message object. */
const encoded = new WeakMap<object, Buffer>();

/**
 * The wire bytes of `message`, encoded once per message object: a response
 * that several streams share (workloads with the same identities, after one
 * rotation) is encoded for the first and reused by the rest, and a stream that
 * compares a new state with the last one it sent compares bytes. The message
 * must not be changed after it was first encoded.
 */
export function encodeMessage<D extends DescMessage>(schema: D, message: MessageShape<D>): Buffer {
  let bytes = encoded.get(message);
  if (bytes === undefined) {
    const raw = toBinary(schema, message);
    // grpc-js wants a Buffer; wrap the bytes without copying.
    bytes = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
    encoded.set(message, bytes);
  }
  return bytes;
}

/**
 * Records `bytes` as the wire form {@link encodeMessage} returns for
 * `message`: for a message made of one already encoded plus a few fields,
 * whose bytes are the encoded one's followed by those fields' (protobuf
 * allows fields in any order, and a later scalar replaces an earlier one).
 * An SDS stream stamps the response many streams share with its own version
 * and nonce this way, without re-encoding the secrets.
 */
export function presetEncoding(message: object, bytes: Buffer): void {
  encoded.set(message, bytes);
}

function serializer<D extends DescMessage>(schema: D): (value: MessageShape<D>) => Buffer {
  return (value) => {
    const bytes = toBinary(schema, value);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

/** Responses go through {@link encodeMessage}: a server never changes a response it has sent. */
function responseSerializer<D extends DescMessage>(schema: D): (value: MessageShape<D>) => Buffer {
  return (value) => encodeMessage(schema, value);
}

function deserializer<D extends DescMessage>(schema: D): (bytes: Buffer) => MessageShape<D> {
  // A plain Uint8Array view, so bytes fields come out as Uint8Array rather than Buffer.
  return (bytes) => fromBinary(schema, new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
}

/**
 * Builds the grpc-js service definition for a protobuf-es v2 service.
 *
 * @example
 * ```ts
 * import { SpiffeWorkloadAPI } from "../../proto/gen/spiffe/workload_pb.js";
 * const def = grpcServiceDefinition(SpiffeWorkloadAPI);
 * def.fetchX509SVID.path; // "/SpiffeWorkloadAPI/FetchX509SVID"
 * server.addService(def, handlers);
 * ```
 */
export function grpcServiceDefinition<S extends GenServiceMethods>(service: GenService<S>): GrpcServiceDefinition<S> {
  const out: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    const kind: GrpcMethodKind = method.methodKind;
    out[method.localName] = {
      path: grpcMethodPath(service.typeName, method.name),
      requestStream: kind === "client_streaming" || kind === "bidi_streaming",
      responseStream: kind === "server_streaming" || kind === "bidi_streaming",
      requestSerialize: serializer(method.input) as (value: unknown) => Buffer,
      requestDeserialize: deserializer(method.input),
      responseSerialize: responseSerializer(method.output) as (value: unknown) => Buffer,
      responseDeserialize: deserializer(method.output),
      originalName: method.name,
    };
  }
  return out as GrpcServiceDefinition<S>;
}
