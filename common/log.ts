/**
 * Structured logging for both binaries: pino writing one JSON object per line
 * (string `level`, ISO `time`, `msg`), child loggers per subsystem
 * (`subsystem_name`, SPIRE's field), a `text` format for people at a terminal,
 * runtime level changes, and audit records (`type: "audit"`).
 *
 * Secrets never reach the output. Three layers, because each alone misses
 * something: pino `redact` paths for well-known keys at the top two levels
 * (including child-logger bindings); a deep pass over every logged object
 * that blanks sensitive keys at any depth; and a scrubber that replaces PEM
 * private-key blocks, JWTs and bearer credentials inside any string, including
 * messages and error stacks. Log `jti`, serial numbers and SPIFFE IDs instead.
 */
import { pino, type DestinationStream, type Logger as PinoLogger, type LoggerOptions as PinoLoggerOptions } from "pino";
import { SigilError } from "../spiffe/errors.js";

/** A Sigil logger (a pino logger). */
export type Logger = PinoLogger;

/** Log levels, lowest first. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** Output formats: JSON lines, or logfmt-style `key=value` text for terminals. */
export type LogFormat = "json" | "text";

/** Where log lines go: anything with `write(line)`; each call is one line ending in `\n`. */
export interface LogDestination {
  write(line: string): void;
}

/** Options of {@link createLogger}. */
export interface CreateLoggerOptions {
  /** Minimum level written. */
  readonly level: LogLevel;
  /** Output format (default `json`). */
  readonly format?: LogFormat;
  /** Output (default: standard output, written synchronously so nothing is lost on exit). */
  readonly destination?: LogDestination;
}

/** What redacted values are replaced with. */
export const REDACTED = "[REDACTED]";

const LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

// Keys whose values are secret wherever they appear, compared after
// lower-casing and dropping `_` and `-` (so joinToken, join_token, JOIN-TOKEN).
const SENSITIVE_KEYS: ReadonlySet<string> = new Set([
  "privatekey",
  "privkey",
  "privatekeypem",
  "keypem",
  "pkcs8",
  "pkcs8pem",
  "x509svidkey",
  "svidkey",
  "svid",
  "x509svid",
  "jwtsvid",
  "jwt",
  "token",
  "jointoken",
  "accesstoken",
  "idtoken",
  "refreshtoken",
  "bearertoken",
  "authorization",
  "proxyauthorization",
  "cookie",
  "setcookie",
  "password",
  "passwd",
  "secret",
  "clientsecret",
  "apikey",
  "connectionstring",
]);

/** The spellings of sensitive keys given to pino's `redact` (top level and one level down). */
const REDACT_KEYS = [
  "private_key",
  "privateKey",
  "key_pem",
  "pkcs8_pem",
  "x509_svid_key",
  "svid",
  "x509_svid",
  "jwt_svid",
  "jwt",
  "token",
  "join_token",
  "joinToken",
  "access_token",
  "id_token",
  "authorization",
  "password",
  "secret",
  "client_secret",
  "connection_string",
] as const;

/** pino `redact` paths: each sensitive key at the top level and one level down. */
export const REDACT_PATHS: readonly string[] = REDACT_KEYS.flatMap((k) => [k, `*.${k}`]).concat(["headers.authorization", "metadata.authorization"]);

/** True when a key names a secret (`join_token`, `privateKey`, `Authorization`, …). */
export function isSensitiveKey(key: string): boolean {
  return SENSITIVE_KEYS.has(key.toLowerCase().replace(/[_-]/g, ""));
}

const PEM_PRIVATE_KEY = /-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----[\s\S]*?(?:-----END \1-----|$)/g;
const JWT = /\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*/g;
const BEARER = /\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}/gi;

/**
 * Replaces secrets inside a string: PEM private-key blocks (even unterminated),
 * compact JWTs, and `Bearer`/`Basic` credentials.
 */
export function scrubString(s: string): string {
  if (!s.includes("PRIVATE KEY") && !s.includes("eyJ") && !/bearer|basic/i.test(s)) return s;
  return s
    .replace(PEM_PRIVATE_KEY, "[REDACTED PRIVATE KEY]")
    .replace(JWT, "[REDACTED JWT]")
    .replace(BEARER, (_m, scheme: string) => `${scheme} ${REDACTED}`);
}

const MAX_DEPTH = 16;

function isOpaque(v: object): boolean {
  return ArrayBuffer.isView(v) || v instanceof ArrayBuffer || v instanceof Date || v instanceof Map || v instanceof Set || v instanceof Error || v instanceof RegExp;
}

/**
 * A copy of `value` fit to log: values under sensitive keys become
 * {@link REDACTED} at any depth, and strings are passed through
 * {@link scrubString}. Unchanged parts are shared, not copied.
 */
export function redactSecrets<T>(value: T): T {
  return walk(value, 0, new WeakSet()) as T;
}

function walk(value: unknown, depth: number, seen: WeakSet<object>): unknown {
  if (typeof value === "string") return scrubString(value);
  if (typeof value !== "object" || value === null || isOpaque(value)) return value;
  // A cycle back to an object being copied would print the unredacted original; deep values are dropped rather than risked.
  if (seen.has(value)) return "[Circular]";
  if (depth >= MAX_DEPTH) return "[TRUNCATED]";
  seen.add(value);
  try {
    if (Array.isArray(value)) {
      let out: unknown[] | undefined;
      value.forEach((item, i) => {
        const next = walk(item, depth + 1, seen);
        if (next !== item) (out ??= value.slice())[i] = next;
      });
      return out ?? value;
    }
    let out: Record<string, unknown> | undefined;
    const source = value as Record<string, unknown>;
    for (const key of Object.keys(source)) {
      const item = source[key];
      const next = isSensitiveKey(key) && item !== undefined && item !== null ? REDACTED : walk(item, depth + 1, seen);
      if (next !== item) (out ??= { ...source })[key] = next;
    }
    return out ?? value;
  } finally {
    seen.delete(value);
  }
}

function errSerializer(e: unknown): unknown {
  return e instanceof Error ? redactSecrets(pino.stdSerializers.err(e)) : redactSecrets(e);
}

/**
 * Creates the root logger. Make one per process in the composition root and
 * hand children to subsystems with {@link subsystemLogger}.
 *
 * @example
 * ```ts
 * const log = createLogger({ level: "info", format: "json" });
 * subsystemLogger(log, "ca_manager").info({ slot: "A" }, "X.509 CA prepared");
 * // {"level":"info","time":"2030-01-01T00:00:00.000Z","subsystem_name":"ca_manager","slot":"A","msg":"X.509 CA prepared"}
 * ```
 */
export function createLogger(options: CreateLoggerOptions): Logger {
  checkLevel(options.level);
  const sink: LogDestination = options.destination ?? pino.destination({ dest: 1, sync: true });
  const stream: DestinationStream = options.format === "text" ? textDestination(sink) : sink;
  const pinoOptions: PinoLoggerOptions = {
    level: options.level,
    base: null,
    messageKey: "msg",
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: {
      level: (label) => ({ level: label }),
      log: (obj) => redactSecrets(obj),
    },
    serializers: { err: errSerializer, error: errSerializer },
    redact: { paths: [...REDACT_PATHS], censor: REDACTED },
    hooks: {
      logMethod(args, method) {
        // Message strings and printf arguments (%s, %o, %j) bypass the object pass above.
        const cleaned = args.map((a, i) => (i === 0 && typeof a === "object" ? a : redactSecrets(a))) as typeof args;
        // Without a message pino uses the error's message as `msg`; give it the scrubbed one instead.
        const first: unknown = args[0];
        if (args.length === 1 && typeof first === "object" && first !== null) {
          const err = first instanceof Error ? first : (first as { err?: unknown }).err;
          if (err instanceof Error) cleaned.push(scrubString(err.message));
        }
        method.apply(this, cleaned);
      },
    },
  };
  return pino(pinoOptions, stream);
}

/**
 * A child logger for one subsystem, carrying `subsystem_name` (and any other
 * bindings, scrubbed of secrets) on every line.
 */
export function subsystemLogger(logger: Logger, name: string, bindings: Readonly<Record<string, unknown>> = {}): Logger {
  return logger.child({ subsystem_name: name, ...redactSecrets(bindings) });
}

function checkLevel(level: string): asserts level is LogLevel {
  if (!(LEVELS as readonly string[]).includes(level)) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `log: invalid level ${JSON.stringify(level)} (expected ${LEVELS.join(", ")})`);
  }
}

/**
 * Changes the level at runtime (SPIRE's `logger set`). Set it on the root:
 * children follow the root unless a level was set on them directly.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` for an unknown level
 */
export function setLogLevel(logger: Logger, level: string): void {
  const lower = level.toLowerCase();
  checkLevel(lower);
  logger.level = lower;
}

/** The logger's current level. */
export function getLogLevel(logger: Logger): LogLevel {
  const level = logger.level;
  return (LEVELS as readonly string[]).includes(level) ? (level as LogLevel) : "error";
}

/** Who made an audited call. UDS callers are named by uid, gid, pid and binary path; TLS callers by SPIFFE ID or address. */
export interface AuditCaller {
  readonly spiffeId?: string;
  readonly uid?: number;
  readonly gid?: number;
  readonly pid?: number;
  /** The caller's binary; `""` when it could not be read. */
  readonly path?: string;
  readonly addr?: string;
}

/** One audited API call. */
export interface AuditRecord {
  /** The caller. */
  readonly caller: AuditCaller;
  /** The full RPC method, e.g. `/sigil.admin.v1.Entry/BatchCreateEntry`. */
  readonly method: string;
  /** Outcome. */
  readonly status: "success" | "error";
  /** gRPC status code name when it failed (`PERMISSION_DENIED`). */
  readonly statusCode?: string;
  /** Error message when it failed. */
  readonly statusMessage?: string;
  /** Correlates the records of one request. */
  readonly requestId?: string;
  /** Request fields worth keeping (entry IDs, SPIFFE IDs, selectors); secrets in them are redacted. */
  readonly details?: Readonly<Record<string, unknown>>;
}

// One pinned child per logger: audit records must not disappear when an
// operator raises the level to "warn".
const auditLoggers = new WeakMap<Logger, Logger>();

/**
 * Writes an audit record (`type: "audit"`, `msg: "API accessed"`, SPIRE's
 * field names `caller_id`, `caller_uid`, `caller_gid`, `caller_pid`, `caller_path`,
 * `caller_addr`, `request_id`, `status`, `status_code`, `status_message`).
 * Audit records are written at `info` whatever the logger's level.
 */
export function audit(logger: Logger, record: AuditRecord): void {
  let out = auditLoggers.get(logger);
  if (out === undefined) {
    out = logger.child({ type: "audit" });
    out.level = "info";
    auditLoggers.set(logger, out);
  }
  const c = record.caller;
  const fields: Record<string, unknown> = {
    ...record.details,
    method: record.method,
    status: record.status,
    ...(record.statusCode === undefined ? {} : { status_code: record.statusCode }),
    ...(record.statusMessage === undefined ? {} : { status_message: record.statusMessage }),
    ...(record.requestId === undefined ? {} : { request_id: record.requestId }),
    ...(c.spiffeId === undefined ? {} : { caller_id: c.spiffeId }),
    ...(c.uid === undefined ? {} : { caller_uid: c.uid }),
    ...(c.gid === undefined ? {} : { caller_gid: c.gid }),
    ...(c.pid === undefined ? {} : { caller_pid: c.pid }),
    ...(c.path === undefined ? {} : { caller_path: c.path }),
    ...(c.addr === undefined ? {} : { caller_addr: c.addr }),
  };
  out.info(fields, "API accessed");
}

const FIRST_KEYS = ["time", "level", "msg"] as const;

/** Characters a terminal acts on or reorders (controls, C1 controls, bidi and line/paragraph separators). */
const TERMINAL_UNSAFE = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u2028-\u202e\u2066-\u2069]/;
/** Those JSON.stringify leaves as they are. */
const UNESCAPED_BY_JSON = /[\u007f-\u009f\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;

/**
 * One logfmt value: bare when it is plain, else a JSON string in which every
 * character a terminal would act on is written `\uXXXX`, so text a client
 * chose (a name, a reason) cannot move the cursor, recolour or reorder a line.
 */
function logfmtValue(v: unknown): string {
  const s = typeof v === "string" ? v : JSON.stringify(v) ?? String(v);
  if (!(s === "" || /[\s="\\]/.test(s) || TERMINAL_UNSAFE.test(s) || typeof v === "object")) return s;
  return JSON.stringify(s).replace(UNESCAPED_BY_JSON, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/**
 * Wraps a destination so pino's JSON lines are written as logfmt-style text:
 * `time=… level=info msg="…" subsystem_name=ca key=value`. Redaction has
 * already happened when the JSON was produced.
 */
export function textDestination(dest: LogDestination): LogDestination {
  return {
    write(line: string): void {
      let record: Record<string, unknown>;
      try {
        record = JSON.parse(line) as Record<string, unknown>;
      } catch {
        dest.write(line);
        return;
      }
      const parts: string[] = [];
      for (const k of FIRST_KEYS) if (k in record) parts.push(`${k}=${logfmtValue(record[k])}`);
      for (const [k, v] of Object.entries(record)) {
        if (!(FIRST_KEYS as readonly string[]).includes(k)) parts.push(`${k}=${logfmtValue(v)}`);
      }
      dest.write(`${parts.join(" ")}\n`);
    },
  };
}
