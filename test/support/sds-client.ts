/**
 * A minimal Envoy-like SDS client for tests and benchmarks, written from
 * Envoy's protos alone: raw grpc-js calls on the wire paths Envoy uses, with
 * the generated message types, and nothing from the agent's server code (no
 * shared service glue), so a server that strays from Envoy's protocol fails
 * here as it would for Envoy.
 *
 * It speaks state-of-the-world xDS as Envoy does: the first request has no
 * version and no nonce; each response is answered with the same names and the
 * response's nonce, with its version (ACK) or the last applied one and an
 * `error_detail` (NACK).
 */
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Client, credentials, Metadata, type ClientDuplexStream, type ServiceError } from "@grpc/grpc-js";
import type { NodeSchema } from "../../proto/gen/envoy/config/core/v3/base_pb.js";

/** A node as a test writes it. */
export type NodeInit = MessageInitShape<typeof NodeSchema>;
import { SecretSchema, type Secret } from "../../proto/gen/envoy/extensions/transport_sockets/tls/v3/secret_pb.js";
import { SPIFFECertValidatorConfigSchema, type SPIFFECertValidatorConfig } from "../../proto/gen/envoy/extensions/transport_sockets/tls/v3/tls_spiffe_validator_config_pb.js";
import {
  DiscoveryRequestSchema,
  DiscoveryResponseSchema,
  type DiscoveryRequest,
  type DiscoveryResponse,
} from "../../proto/gen/envoy/service/discovery/v3/discovery_pb.js";

/** Envoy's paths (package `envoy.service.secret.v3`). */
export const SDS_PATHS = {
  stream: "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
  fetch: "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
  delta: "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets",
} as const;

/** What Envoy puts in `type_url`. */
export const SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

const ser =
  <D extends DescMessage>(schema: D) =>
  (m: MessageShape<D>): Buffer =>
    Buffer.from(toBinary(schema, m));
const de =
  <D extends DescMessage>(schema: D) =>
  (b: Buffer): MessageShape<D> =>
    fromBinary(schema, new Uint8Array(b.buffer, b.byteOffset, b.byteLength));

/** The secrets of a response, unpacked. */
export function secretsOf(resp: DiscoveryResponse): Secret[] {
  return resp.resources.map((a) => {
    if (a.typeUrl !== SECRET_TYPE) throw new Error(`unexpected resource type ${a.typeUrl}`);
    const s = anyUnpack(a, SecretSchema);
    if (s === undefined) throw new Error("resource does not unpack");
    return s;
  });
}

/** The SPIFFE validator config of a validation-context secret, if it has one. */
export function spiffeValidatorOf(secret: Secret): SPIFFECertValidatorConfig | undefined {
  if (secret.type.case !== "validationContext") return undefined;
  const custom = secret.type.value.customValidatorConfig;
  if (custom?.typedConfig === undefined) return undefined;
  return anyUnpack(custom.typedConfig, SPIFFECertValidatorConfigSchema);
}

/** PEM text of an inline data source. */
export function inlinePem(ds: { specifier: { case: string | undefined; value?: unknown } } | undefined): string {
  if (ds?.specifier.case !== "inlineBytes") throw new Error("expected inline_bytes");
  return Buffer.from(ds.specifier.value as Uint8Array).toString("utf8");
}

/** A gRPC client on a Unix socket (one connection). */
export function sdsChannel(socketPath: string): Client {
  return new Client(`unix:${socketPath}`, credentials.createInsecure());
}

/** FetchSecrets once. */
export function fetchSecrets(client: Client, names: readonly string[], node?: NodeInit): Promise<DiscoveryResponse> {
  return new Promise((resolve, reject) => {
    const req = create(DiscoveryRequestSchema, { resourceNames: [...names], typeUrl: SECRET_TYPE, ...(node ? { node } : {}) });
    client.makeUnaryRequest(SDS_PATHS.fetch, ser(DiscoveryRequestSchema), de(DiscoveryResponseSchema), req, new Metadata(), (err, resp) =>
      err ? reject(err) : resolve(resp as DiscoveryResponse),
    );
  });
}

/** One StreamSecrets stream, driven step by step. */
export interface SdsStream {
  /** Sends a request as Envoy would (names, the last nonce, the version to report, optionally a NACK reason). */
  send(req: Partial<Pick<DiscoveryRequest, "versionInfo" | "responseNonce" | "resourceNames">> & { node?: NodeInit; nack?: string }): void;
  /** The next response (rejects with the stream's error if it ends first, or after `timeoutMs`). */
  next(timeoutMs?: number): Promise<DiscoveryResponse>;
  /** Resolves with undefined when no response arrives within `ms`, else with the response. */
  quiet(ms: number): Promise<DiscoveryResponse | undefined>;
  /** ACKs `resp` with the current names. */
  ack(resp: DiscoveryResponse): void;
  /** NACKs `resp`, reporting `applied` as the version kept. */
  nack(resp: DiscoveryResponse, applied: string, reason: string): void;
  /** Resolves with the status the stream ended with. */
  readonly ended: Promise<ServiceError | undefined>;
  close(): void;
}

/** Opens StreamSecrets and sends the first request for `names`. */
export function streamSecrets(client: Client, names: readonly string[], node?: NodeInit): SdsStream {
  const call: ClientDuplexStream<DiscoveryRequest, DiscoveryResponse> = client.makeBidiStreamRequest(
    SDS_PATHS.stream,
    ser(DiscoveryRequestSchema),
    de(DiscoveryResponseSchema),
    new Metadata(),
  );
  let current = [...names];
  const queue: DiscoveryResponse[] = [];
  const waiters: Array<(r: DiscoveryResponse | Error) => void> = [];
  let failure: Error | undefined;
  const ended = new Promise<ServiceError | undefined>((resolve) => {
    call.on("error", (e: ServiceError) => {
      failure = e;
      for (const w of waiters.splice(0)) w(e);
      resolve(e);
    });
    call.on("end", () => resolve(undefined));
  });
  call.on("data", (r: DiscoveryResponse) => {
    const w = waiters.shift();
    if (w) w(r);
    else queue.push(r);
  });
  const take = (timeoutMs: number): Promise<DiscoveryResponse | undefined> =>
    new Promise((resolve, reject) => {
      const queued = queue.shift();
      if (queued) return resolve(queued);
      if (failure) return reject(failure);
      const t = setTimeout(() => {
        const i = waiters.indexOf(w);
        if (i >= 0) waiters.splice(i, 1);
        resolve(undefined);
      }, timeoutMs);
      const w = (r: DiscoveryResponse | Error): void => {
        clearTimeout(t);
        if (r instanceof Error) reject(r);
        else resolve(r);
      };
      waiters.push(w);
    });
  const stream: SdsStream = {
    send(req) {
      if (req.resourceNames) current = [...req.resourceNames];
      call.write(
        create(DiscoveryRequestSchema, {
          versionInfo: req.versionInfo ?? "",
          responseNonce: req.responseNonce ?? "",
          resourceNames: current,
          typeUrl: SECRET_TYPE,
          ...(req.node ? { node: req.node } : {}),
          ...(req.nack === undefined ? {} : { errorDetail: { code: 3, message: req.nack } }),
        }),
      );
    },
    async next(timeoutMs = 20_000) {
      const r = await take(timeoutMs);
      if (r === undefined) throw new Error(`no SDS response within ${timeoutMs} ms`);
      return r;
    },
    quiet(ms) {
      return take(ms);
    },
    ack(resp) {
      stream.send({ versionInfo: resp.versionInfo, responseNonce: resp.nonce });
    },
    nack(resp, applied, reason) {
      stream.send({ versionInfo: applied, responseNonce: resp.nonce, nack: reason });
    },
    ended,
    close() {
      call.cancel();
    },
  };
  stream.send({ resourceNames: current, ...(node ? { node } : {}) });
  return stream;
}
