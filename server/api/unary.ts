/**
 * The one wrapper every server API uses for unary handlers: run the async
 * handler, map a thrown error to its gRPC status through the one status table
 * (`toServiceError`), log internal errors, and write one audit record per
 * call, success or failure.
 *
 * Handlers add audit details as they learn them (through the call context), so
 * a call that fails half-way is still audited with what it was about (the
 * entry ID, the SPIFFE ID), never with secrets: the audit logger redacts
 * sensitive keys, and handlers record an agent ID rather than a join token.
 */
import { status, type ServerUnaryCall, type handleUnaryCall, type sendUnaryData } from "@grpc/grpc-js";
import { audit, type AuditCaller, type Logger } from "../../common/log.js";
import { grpcCodeName } from "../../common/metrics.js";
import { toServiceError } from "../../common/rpc/status.js";

/** Per-call state a handler may fill in for the audit record. */
export interface UnaryCallContext {
  /** Who called; `{}` until the handler knows (e.g. after authenticating an SVID). */
  caller: AuditCaller;
  /** Non-secret request facts for the audit record (IDs, counts). */
  readonly details: Record<string, unknown>;
}

/** What a handler returns: the response and, optionally, audit facts learnt along the way. */
export interface UnaryOutcome<Res> {
  readonly res: Res;
  /** The caller: an {@link AuditCaller}, or a SPIFFE ID string (anything else is recorded as unknown). */
  readonly caller?: AuditCaller | string;
  /** Merged into the context's details. */
  readonly details?: Readonly<Record<string, unknown>>;
}

/** A unary handler body. */
export type UnaryHandler<Req, Res> = (req: Req, call: ServerUnaryCall<Req, Res>, ctx: UnaryCallContext) => Promise<UnaryOutcome<Res>>;

/** Options of {@link createUnaryWrapper}. */
export interface UnaryWrapperOptions {
  readonly log: Logger;
  /** Whether to write audit records. */
  readonly auditEnabled: boolean;
  /** Subsystem prefix of error log lines, e.g. `admin api`. */
  readonly name: string;
  /**
   * Fully-qualified service name (`sigil.admin.v1.EntryAdmin`). When given,
   * audit records carry the full method path `/<service>/<Method>`; otherwise
   * the bare method name.
   */
  readonly service?: string;
  /** Who called, when the transport tells (e.g. peer credentials on a Unix socket). Default `{}`. */
  readonly callerOf?: (call: ServerUnaryCall<unknown, unknown>) => AuditCaller;
}

/** Wraps a {@link UnaryHandler} into a grpc-js unary handler. */
export type UnaryWrapper = <Req, Res>(method: string, fn: UnaryHandler<Req, Res>) => handleUnaryCall<Req, Res>;

/** The audit caller for a caller string: a SPIFFE ID, or unknown (`{}`). */
export function auditCallerOf(caller: AuditCaller | string | undefined): AuditCaller {
  if (caller === undefined) return {};
  if (typeof caller === "string") return caller.startsWith("spiffe://") ? { spiffeId: caller } : {};
  return caller;
}

/**
 * Writes the audit record of one call (a no-op when auditing is off). Also
 * used directly by streaming handlers, which the wrapper does not cover.
 */
export function auditCall(
  opts: Pick<UnaryWrapperOptions, "log" | "auditEnabled">,
  method: string,
  caller: AuditCaller | string | undefined,
  code: number,
  details: Readonly<Record<string, unknown>> = {},
  message?: string,
): void {
  if (!opts.auditEnabled) return;
  audit(opts.log, {
    caller: auditCallerOf(caller),
    method,
    status: code === status.OK ? "success" : "error",
    ...(code === status.OK ? {} : { statusCode: grpcCodeName(code) }),
    ...(code === status.OK || message === undefined ? {} : { statusMessage: message }),
    details,
  });
}

/**
 * Creates the wrapper for one service.
 *
 * @example
 * ```ts
 * const unary = createUnaryWrapper({ log, auditEnabled: true, name: "admin api", service: EntryAdmin.typeName });
 * const getEntry = unary<GetEntryRequest, Entry>("GetEntry", async (req, _call, ctx) => {
 *   ctx.details.entry_id = req.id;
 *   return { res: wireEntry(await load(req.id)) };
 * });
 * ```
 */
export function createUnaryWrapper(options: UnaryWrapperOptions): UnaryWrapper {
  const { log, name } = options;
  return <Req, Res>(method: string, fn: UnaryHandler<Req, Res>): handleUnaryCall<Req, Res> => {
    const auditedMethod = options.service === undefined ? method : `/${options.service}/${method}`;
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
      const ctx: UnaryCallContext = { caller: options.callerOf ? options.callerOf(call as ServerUnaryCall<unknown, unknown>) : {}, details: {} };
      let run: Promise<UnaryOutcome<Res>>;
      try {
        run = fn(call.request, call, ctx);
      } catch (e) {
        run = Promise.reject(e);
      }
      run.then(
        (out) => {
          if (out.caller !== undefined) ctx.caller = auditCallerOf(out.caller);
          if (out.details !== undefined) Object.assign(ctx.details, out.details);
          auditCall(options, auditedMethod, ctx.caller, status.OK, ctx.details);
          callback(null, out.res);
        },
        (e: unknown) => {
          const err = toServiceError(e);
          auditCall(options, auditedMethod, ctx.caller, err.code, ctx.details, err.details);
          if (err.code === status.INTERNAL) log.error({ err: e }, `${name}: ${method} failed`);
          callback(err);
        },
      );
    };
  };
}
