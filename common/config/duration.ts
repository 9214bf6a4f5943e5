/**
 * Go-style durations (`"1h"`, `"90m"`, `"1h30m"`, `"500ms"`), the form SPIRE,
 * Istio, Vault and every other peer writes in config files, so operators can
 * copy values between them. The grammar is Go's `time.ParseDuration`: a
 * sequence of decimal numbers, each with a unit `h`, `m`, `s`, `ms`, `us`
 * (or `µs`), `ns`; `"0"` alone is allowed. There is no `d`: a day is `"24h"`.
 */
import { z } from "zod";
import { SigilError } from "../../spiffe/errors.js";

const UNIT_MS: Readonly<Record<string, number>> = {
  h: 3_600_000,
  m: 60_000,
  s: 1_000,
  ms: 1,
  us: 1e-3,
  "µs": 1e-3, // U+00B5 micro sign
  "μs": 1e-3, // U+03BC Greek mu
  ns: 1e-6,
};

// One term: a decimal number with an optional fraction, then a unit. Longer
// units first so "ms" is not read as "m" followed by garbage.
const TERM = /([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|h|m|s)/y;

/**
 * The regular expression a non-negative duration string matches; published in
 * the JSON Schema so editors flag a bad value before the server does.
 */
export const DURATION_PATTERN = "^(0|(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|μs|ms|h|m|s))+)$";

/** The hint appended to every duration error. */
const EXPECTED = `(expected e.g. "1h", "90m", "1h30m", "500ms")`;

/**
 * Explains why `text` is not a duration, or returns `undefined` when it is one.
 * The reason never repeats more than the value itself.
 */
function durationProblem(text: string): string | undefined {
  const quoted = JSON.stringify(text);
  if (text === "") return `empty duration ${EXPECTED}`;
  if (/^[-+]?[0-9.]+$/.test(text) && text !== "0") {
    return `invalid duration ${quoted}: a unit is required ${EXPECTED}`;
  }
  const days = /^([0-9]+)d$/.exec(text);
  if (days) {
    return `invalid duration ${quoted}: there is no "d" unit; write "${Number(days[1]) * 24}h"`;
  }
  return `invalid duration ${quoted} ${EXPECTED}`;
}

/**
 * Parses a Go-style duration into milliseconds (fractional below 1 ms).
 * Accepts a leading sign like Go; config fields use {@link duration}, which
 * also rejects negative values.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` (`duration: invalid duration "1 hour" …`)
 *
 * @example
 * ```ts
 * parseDuration("1h30m"); // 5_400_000
 * parseDuration("500ms"); // 500
 * ```
 */
export function parseDuration(text: string): number {
  const ms = tryParseDuration(text);
  if (ms === undefined) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `duration: ${durationProblem(text) ?? `invalid duration ${JSON.stringify(text)}`}`);
  }
  return ms;
}

/** Like {@link parseDuration} but returns `undefined` instead of throwing. */
export function tryParseDuration(text: string): number | undefined {
  let i = 0;
  let sign = 1;
  if (text.startsWith("-") || text.startsWith("+")) {
    if (text[0] === "-") sign = -1;
    i = 1;
  }
  const rest = text.slice(i);
  if (rest === "0") return 0;
  if (rest === "") return undefined;
  let total = 0;
  TERM.lastIndex = 0;
  while (TERM.lastIndex < rest.length) {
    const start = TERM.lastIndex;
    const m = TERM.exec(rest);
    if (!m || m.index !== start) return undefined;
    const value = Number(m[1]);
    const unit = UNIT_MS[m[2] as string];
    if (unit === undefined || !Number.isFinite(value)) return undefined;
    total += value * unit;
  }
  if (!Number.isFinite(total) || total > Number.MAX_SAFE_INTEGER) return undefined;
  // -0 would print oddly and means nothing different.
  return total === 0 ? 0 : sign * total;
}

/**
 * Formats milliseconds the way Go prints a duration (`"1h30m0s"` style trimmed
 * to its non-zero parts: `"1h30m"`, `"5m"`, `"500ms"`), for docs and messages.
 */
export function formatDuration(ms: number): string {
  if (ms === 0) return "0s";
  if (ms < 0) return `-${formatDuration(-ms)}`;
  if (ms < 1) return Number.isInteger(ms * 1000) ? `${ms * 1000}us` : `${Math.round(ms * 1e6)}ns`;
  if (ms < 1000) return `${ms}ms`;
  let rest = ms;
  let out = "";
  for (const [unit, size] of [["h", 3_600_000], ["m", 60_000]] as const) {
    const n = Math.floor(rest / size);
    if (n > 0) out += `${n}${unit}`;
    rest -= n * size;
  }
  if (rest > 0) out += `${rest / 1000}s`;
  return out;
}

/** Options of {@link duration}. */
export interface DurationOptions {
  /** Smallest accepted value, in milliseconds (default 0: negative is rejected). */
  readonly minMs?: number;
}

/**
 * A zod schema for a config duration: a Go-style string in the file, a number
 * of milliseconds after parsing. Bare numbers (`ca_ttl: 3600`) are rejected,
 * since the unit would be a guess. The JSON Schema shows a string with
 * {@link DURATION_PATTERN}; give a default with `.prefault("24h")`, which is
 * parsed like a value from the file and shown as written in the docs.
 *
 * @example
 * ```ts
 * const s = z.strictObject({ ca_ttl: duration().prefault("24h").describe("CA lifetime.") });
 * s.parse({}).ca_ttl; // 86_400_000
 * ```
 */
export function duration(options: DurationOptions = {}): z.ZodPipe<z.ZodString, z.ZodTransform<number, string>> {
  const minMs = options.minMs ?? 0;
  return z
    .string({
      error: (iss) =>
        iss.input === undefined
          ? undefined
          : `a duration must be a string with a unit, got ${typeof iss.input === "number" ? `the number ${String(iss.input)}` : typeof iss.input} ${EXPECTED}`,
    })
    .transform((text, ctx) => {
      const ms = tryParseDuration(text);
      if (ms === undefined) {
        ctx.issues.push({ code: "custom", message: durationProblem(text) ?? `invalid duration ${EXPECTED}`, input: text });
        return z.NEVER;
      }
      if (ms < minMs) {
        ctx.issues.push({
          code: "custom",
          message: minMs === 0 ? `duration ${JSON.stringify(text)} must not be negative` : `duration ${JSON.stringify(text)} is below the minimum ${formatDuration(minMs)}`,
          input: text,
        });
        return z.NEVER;
      }
      return ms;
    })
    .meta({ pattern: DURATION_PATTERN });
}
