/**
 * A typed, promise-returning client for the unary methods of a protobuf-es
 * service over grpc-js (used by the CLIs and the agent's server connection).
 */
import { create, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { Client, Metadata, status, type ChannelCredentials, type ChannelOptions, type ServiceError } from "@grpc/grpc-js";
import { grpcServiceDefinition } from "../../spiffe/grpc/service.js";

/** Promise-returning unary methods of a service (streaming methods are omitted). */
export type UnaryClient<S extends GenServiceMethods> = {
  [K in keyof S as S[K]["methodKind"] extends "unary" ? K : never]: (
    request: MessageInitShape<S[K]["input"]>,
    options?: UnaryCallOptions,
  ) => Promise<MessageShape<S[K]["output"]>>;
} & { close(): void; readonly raw: Client };

/** Per-call options of a {@link UnaryClient} method. */
export interface UnaryCallOptions {
  /** Default 30 s. */
  deadlineMs?: number;
  metadata?: Metadata;
  /** Aborting it cancels the call (it then fails with CANCELLED); an already aborted signal fails it before it is sent. */
  signal?: AbortSignal;
}

/** Creates a unary client for `service` at `target` (e.g. `unix:/run/sigil/api.sock`). */
export function createUnaryClient<S extends GenServiceMethods>(
  service: GenService<S>,
  target: string,
  credentials: ChannelCredentials,
  options: ChannelOptions = {},
): UnaryClient<S> {
  const def = grpcServiceDefinition(service);
  const client = new Client(target, credentials, options);
  const out: Record<string, unknown> = {
    close: () => client.close(),
    raw: client,
  };
  for (const method of service.methods) {
    if (method.methodKind !== "unary") continue;
    const m = def[method.localName as keyof typeof def];
    out[method.localName] = (request: object, opts?: UnaryCallOptions) =>
      new Promise((resolve, reject) => {
        const signal = opts?.signal;
        if (signal?.aborted === true) {
          reject(cancelledError(method.name));
          return;
        }
        const deadline = new Date(Date.now() + (opts?.deadlineMs ?? 30_000));
        const onAbort = (): void => call.cancel();
        const call = client.makeUnaryRequest(
          m.path,
          m.requestSerialize,
          m.responseDeserialize,
          create(method.input, request as never) as never,
          opts?.metadata ?? new Metadata(),
          { deadline },
          (err: ServiceError | null, value?: unknown) => {
            signal?.removeEventListener("abort", onAbort);
            if (err) reject(err);
            else resolve(value);
          },
        );
        signal?.addEventListener("abort", onAbort, { once: true });
      });
  }
  return out as UnaryClient<S>;
}

/** The error of a call whose signal was aborted before it was sent: shaped like grpc-js's own CANCELLED. */
function cancelledError(method: string): ServiceError {
  return Object.assign(new Error(`${status.CANCELLED} CANCELLED: ${method}: cancelled before it was sent`), {
    code: status.CANCELLED,
    details: `${method}: cancelled before it was sent`,
    metadata: new Metadata(),
  });
}
