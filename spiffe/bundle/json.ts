/**
 * A strict RFC 8259 JSON parser for bundles. `JSON.parse` cannot be used there:
 * it keeps the last of two duplicate keys without a word (a bundle map must be
 * rejected then, BUNDLE-15) and rounds integers beyond 2^53 (`spiffe_sequence`
 * is a 64-bit unsigned integer, pitfall A12).
 *
 * Differences from `JSON.parse`: duplicate object keys are an error; every
 * integer (a number without fraction or exponent) is returned as a `bigint`, so
 * it is exact at any size, while other numbers stay `number`; objects have a null
 * prototype (a `"__proto__"` key is plain data); errors give line, column and the
 * path of the value.
 */
import { SigilError } from "../errors.js";

/** A parsed JSON value. Integers are `bigint`, other numbers `number`. */
export type JsonValue = null | boolean | number | bigint | string | JsonArray | JsonObject;
/** A parsed JSON array. */
export type JsonArray = readonly JsonValue[];
/** A parsed JSON object (null prototype). */
export interface JsonObject {
  readonly [key: string]: JsonValue;
}

/** Options for {@link parseJson}. */
export interface ParseJsonOptions {
  /** Subsystem that starts error messages; default `"bundle"`. */
  readonly subsystem?: string;
  /**
   * Wording of the duplicate-key error, given the key and the path of the object
   * holding it (e.g. `trust_domains`). Default: `duplicate key "k" in <path>`.
   */
  readonly describeDuplicate?: (key: string, path: string) => string;
  /** Deepest nesting accepted; default 64. Guards the stack against hostile input. */
  readonly maxDepth?: number;
}

/** True for a JSON object (not null, not an array). */
export function isJsonObject(v: JsonValue | undefined): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * A parsed value as JSON text for messages. Integers print as their digits:
 * this parser makes them bigints, which `JSON.stringify` refuses with a TypeError.
 */
export function formatJsonValue(v: JsonValue | undefined): string {
  if (typeof v === "bigint") return v.toString();
  if (Array.isArray(v)) return `[${v.map(formatJsonValue).join(",")}]`;
  if (isJsonObject(v)) return `{${Object.keys(v).map((k) => `${JSON.stringify(k)}:${formatJsonValue(v[k])}`).join(",")}}`;
  return JSON.stringify(v) ?? "undefined";
}

/** A JSON path in the form used by messages: `keys[2].x5c`, `trust_domains["example.org"]`. */
export function formatJsonPath(path: readonly (string | number)[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(p)) out += out === "" ? p : `.${p}`;
    else out += `[${JSON.stringify(p)}]`;
  }
  return out === "" ? "the top-level value" : out;
}

const INTEGER = /^-?(?:0|[1-9][0-9]*)$/;
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;

class Parser {
  readonly #text: string;
  readonly #subsystem: string;
  readonly #describeDuplicate: (key: string, path: string) => string;
  readonly #maxDepth: number;
  readonly #path: (string | number)[] = [];
  #pos = 0;

  constructor(text: string, options: ParseJsonOptions) {
    this.#text = text;
    this.#subsystem = options.subsystem ?? "bundle";
    this.#describeDuplicate = options.describeDuplicate ?? ((key, path) => `duplicate key ${JSON.stringify(key)} in ${path}`);
    this.#maxDepth = options.maxDepth ?? 64;
  }

  parseDocument(): JsonValue {
    this.#skipWhitespace();
    const value = this.#value(0);
    this.#skipWhitespace();
    if (this.#pos < this.#text.length) this.#fail(`unexpected ${this.#describeHere()} after the top-level value`);
    return value;
  }

  #fail(message: string, at = this.#pos): never {
    // Line and column are computed only on failure; the happy path never pays for them.
    let line = 1;
    let lineStart = 0;
    for (let i = 0; i < at && i < this.#text.length; i++) {
      if (this.#text.charCodeAt(i) === 10) {
        line++;
        lineStart = i + 1;
      }
    }
    throw new SigilError(
      "ERR_BUNDLE_INVALID",
      `${this.#subsystem}: invalid JSON: ${message} at line ${line}, column ${at - lineStart + 1} (offset ${at})`,
    );
  }

  #describeHere(): string {
    if (this.#pos >= this.#text.length) return "end of input";
    const code = this.#text.codePointAt(this.#pos) ?? 0;
    if (code < 0x20 || code > 0x7e) return `character U+${code.toString(16).toUpperCase().padStart(4, "0")}`;
    return `'${String.fromCodePoint(code)}'`;
  }

  #skipWhitespace(): void {
    const t = this.#text;
    let p = this.#pos;
    for (;;) {
      const c = t.charCodeAt(p);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) p++;
      else break;
    }
    this.#pos = p;
  }

  #value(depth: number): JsonValue {
    const c = this.#text.charCodeAt(this.#pos);
    if (c === 0x7b /* { */) return this.#object(depth + 1);
    if (c === 0x5b /* [ */) return this.#array(depth + 1);
    if (c === 0x22 /* " */) return this.#string();
    if (c === 0x2d /* - */ || (c >= 0x30 && c <= 0x39)) return this.#number();
    if (this.#text.startsWith("true", this.#pos)) {
      this.#pos += 4;
      return true;
    }
    if (this.#text.startsWith("false", this.#pos)) {
      this.#pos += 5;
      return false;
    }
    if (this.#text.startsWith("null", this.#pos)) {
      this.#pos += 4;
      return null;
    }
    return this.#fail(`unexpected ${this.#describeHere()}; expected a value`);
  }

  #checkDepth(depth: number): void {
    if (depth > this.#maxDepth) this.#fail(`nesting deeper than ${this.#maxDepth} levels`);
  }

  #object(depth: number): JsonObject {
    this.#checkDepth(depth);
    const start = this.#pos;
    this.#pos++;
    const obj: Record<string, JsonValue> = Object.create(null) as Record<string, JsonValue>;
    this.#skipWhitespace();
    if (this.#text.charCodeAt(this.#pos) === 0x7d /* } */) {
      this.#pos++;
      return obj;
    }
    for (;;) {
      if (this.#text.charCodeAt(this.#pos) !== 0x22) this.#fail(`unexpected ${this.#describeHere()}; expected a string key`);
      const keyAt = this.#pos;
      const key = this.#string();
      if (Object.hasOwn(obj, key)) this.#fail(this.#describeDuplicate(key, formatJsonPath(this.#path)), keyAt);
      this.#skipWhitespace();
      if (this.#text.charCodeAt(this.#pos) !== 0x3a /* : */) this.#fail(`unexpected ${this.#describeHere()}; expected ':'`);
      this.#pos++;
      this.#skipWhitespace();
      this.#path.push(key);
      obj[key] = this.#value(depth);
      this.#path.pop();
      this.#skipWhitespace();
      const c = this.#text.charCodeAt(this.#pos);
      if (c === 0x2c /* , */) {
        this.#pos++;
        this.#skipWhitespace();
        continue;
      }
      if (c === 0x7d /* } */) {
        this.#pos++;
        return obj;
      }
      if (this.#pos >= this.#text.length) this.#fail("unterminated object", start);
      this.#fail(`unexpected ${this.#describeHere()}; expected ',' or '}'`);
    }
  }

  #array(depth: number): JsonArray {
    this.#checkDepth(depth);
    const start = this.#pos;
    this.#pos++;
    const arr: JsonValue[] = [];
    this.#skipWhitespace();
    if (this.#text.charCodeAt(this.#pos) === 0x5d /* ] */) {
      this.#pos++;
      return arr;
    }
    for (;;) {
      this.#path.push(arr.length);
      arr.push(this.#value(depth));
      this.#path.pop();
      this.#skipWhitespace();
      const c = this.#text.charCodeAt(this.#pos);
      if (c === 0x2c) {
        this.#pos++;
        this.#skipWhitespace();
        continue;
      }
      if (c === 0x5d) {
        this.#pos++;
        return arr;
      }
      if (this.#pos >= this.#text.length) this.#fail("unterminated array", start);
      this.#fail(`unexpected ${this.#describeHere()}; expected ',' or ']'`);
    }
  }

  #string(): string {
    const t = this.#text;
    const start = this.#pos;
    let p = start + 1;
    let out = "";
    let chunk = p;
    for (;;) {
      if (p >= t.length) this.#fail("unterminated string", start);
      const c = t.charCodeAt(p);
      if (c === 0x22) {
        out += t.slice(chunk, p);
        this.#pos = p + 1;
        return out;
      }
      if (c < 0x20) this.#fail(`control character U+${c.toString(16).toUpperCase().padStart(4, "0")} in a string`, p);
      if (c !== 0x5c /* \ */) {
        p++;
        continue;
      }
      out += t.slice(chunk, p);
      const e = t[p + 1];
      switch (e) {
        case '"':
        case "\\":
        case "/":
          out += e;
          break;
        case "b":
          out += "\b";
          break;
        case "f":
          out += "\f";
          break;
        case "n":
          out += "\n";
          break;
        case "r":
          out += "\r";
          break;
        case "t":
          out += "\t";
          break;
        case "u": {
          const hex = t.slice(p + 2, p + 6);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.#fail("bad \\u escape", p);
          out += String.fromCharCode(parseInt(hex, 16));
          p += 4;
          break;
        }
        default:
          this.#fail("bad escape in a string", p);
      }
      p += 2;
      chunk = p;
    }
  }

  #number(): number | bigint {
    NUMBER.lastIndex = this.#pos;
    const m = NUMBER.exec(this.#text);
    if (m === null) return this.#fail(`malformed number`);
    const lexeme = m[0];
    const start = this.#pos;
    this.#pos += lexeme.length;
    // A digit right after the match means a leading zero such as "01".
    const next = this.#text.charCodeAt(this.#pos);
    if ((next >= 0x30 && next <= 0x39) || next === 0x2e || next === 0x65 || next === 0x45) this.#fail("malformed number", start);
    if (INTEGER.test(lexeme)) return BigInt(lexeme);
    const n = Number(lexeme);
    if (!Number.isFinite(n)) this.#fail("number out of range", start);
    return n;
  }
}

/**
 * Parses JSON text strictly (see the module comment). Bytes are decoded as UTF-8;
 * invalid UTF-8 and a byte-order mark are errors.
 *
 * @example
 * ```ts
 * const v = parseJson('{"spiffe_sequence": 18446744073709551615}');
 * (v as JsonObject)["spiffe_sequence"] // 18446744073709551615n
 * parseJson('{"a":1,"a":2}') // throws: bundle: invalid JSON: duplicate key "a" in the top-level value at line 1, column 8 (offset 7)
 * ```
 * @throws SigilError `ERR_BUNDLE_INVALID` with the position and what is wrong.
 */
export function parseJson(json: string | Uint8Array, options: ParseJsonOptions = {}): JsonValue {
  let text: string;
  if (typeof json === "string") {
    text = json;
  } else {
    try {
      text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(json);
    } catch (e) {
      throw new SigilError("ERR_BUNDLE_INVALID", `${options.subsystem ?? "bundle"}: invalid JSON: not UTF-8`, { cause: e });
    }
  }
  return new Parser(text, options).parseDocument();
}
