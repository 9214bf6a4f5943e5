/**
 * The strict bundle JSON parser: duplicate keys, exact integers, positions in
 * errors, and agreement with JSON.parse wherever JSON.parse is right.
 */
import { describe, expect, it } from "vitest";
import { isSigilError } from "../../../../spiffe/errors.js";
import { formatJsonPath, parseJson, type JsonObject } from "../../../../spiffe/bundle/json.js";

function failure(input: string | Uint8Array, options = {}): string {
  try {
    parseJson(input, options);
  } catch (e) {
    expect(isSigilError(e, "ERR_BUNDLE_INVALID")).toBe(true);
    return (e as Error).message;
  }
  throw new Error(`expected ${String(input)} to be rejected`);
}

describe("parseJson", () => {
  it("returns integers as exact bigints and other numbers as numbers", () => {
    expect(parseJson("[0, -0, 7, 9007199254740993, 18446744073709551615, -12]")).toEqual([0n, 0n, 7n, 9007199254740993n, 18446744073709551615n, -12n]);
    expect(parseJson("[1.5, -2.25e3, 1E2, 0.1]")).toEqual([1.5, -2250, 100, 0.1]);
  });

  it("agrees with JSON.parse on documents without integers", () => {
    const samples = [
      '{"a":"x\\u00e9\\n\\t\\"\\\\\\/","b":[true,false,null,{}],"c":[[]],"d":{"e":-1.5e-3}}',
      '"\\ud83d\\ude00 plain ✓"',
      ' \t\r\n{ "k" : [ 1.25 , "v" ] }\n',
      '"\\b\\f\\r"',
    ];
    for (const s of samples) expect(parseJson(s)).toEqual(JSON.parse(s));
  });

  it("rejects duplicate keys at any depth, with position and path", () => {
    expect(failure('{"a":1,"a":2}')).toBe('bundle: invalid JSON: duplicate key "a" in the top-level value at line 1, column 8 (offset 7)');
    expect(failure('{"keys":[{"kid":"x",\n  "kid":"y"}]}')).toBe('bundle: invalid JSON: duplicate key "kid" in keys[0] at line 2, column 3 (offset 23)');
    const custom = failure('{"m":{"t":1,"t":2}}', { describeDuplicate: (k: string, p: string) => `twice ${k} under ${p}`, subsystem: "federation" });
    expect(custom).toMatch(/^federation: invalid JSON: twice t under m at line 1/);
  });

  it("rejects malformed input with the position of the problem", () => {
    const cases: [string, RegExp][] = [
      ["", /unexpected end of input; expected a value at line 1, column 1/],
      ['{"a":1,}', /expected a string key at line 1, column 8/],
      ["[1,]", /unexpected '\]'; expected a value/],
      ["01", /malformed number/],
      ["1.", /malformed number/],
      ["-", /malformed number/],
      ["1e999", /number out of range/],
      ['"abc', /unterminated string at line 1, column 1/],
      ['"a\u0001"', /control character U\+0001 in a string/],
      ['"\\x"', /bad escape/],
      ['"\\u12g4"', /bad \\u escape/],
      ["[1 2]", /expected ',' or '\]'/],
      ["{\"a\" 1}", /expected ':'/],
      ["[1] x", /unexpected 'x' after the top-level value/],
      ["\uFEFF{}", /unexpected character U\+FEFF/],
      ["tru", /expected a value/],
      ["NaN", /expected a value/],
      ["{'a':1}", /expected a string key/],
      ["[", /unterminated array|expected a value/],
    ];
    for (const [input, re] of cases) expect(failure(input), JSON.stringify(input)).toMatch(re);
  });

  it("refuses invalid UTF-8 and a byte-order mark in byte input", () => {
    expect(failure(new Uint8Array([0x22, 0xc3, 0x28, 0x22]))).toMatch(/not UTF-8/);
    expect(failure(new Uint8Array([0xef, 0xbb, 0xbf, 0x7b, 0x7d]))).toMatch(/U\+FEFF/);
    expect(parseJson(new TextEncoder().encode('{"é":1}'))).toEqual({ "é": 1n });
  });

  it("limits nesting depth", () => {
    expect(failure("[".repeat(65) + "]".repeat(65))).toMatch(/nesting deeper than 64 levels/);
    expect(() => parseJson("[".repeat(64) + "]".repeat(64))).not.toThrow();
  });

  it("keeps __proto__ as plain data", () => {
    const v = parseJson('{"__proto__":{"polluted":true},"a":1}') as JsonObject;
    expect(Object.getPrototypeOf(v)).toBeNull();
    expect(Object.keys(v)).toEqual(["__proto__", "a"]);
    expect(({} as Record<string, unknown>)["polluted"]).toBeUndefined();
  });

  it("formats paths for messages", () => {
    expect(formatJsonPath([])).toBe("the top-level value");
    expect(formatJsonPath(["keys", 2, "x5c", 0])).toBe("keys[2].x5c[0]");
    expect(formatJsonPath(["trust_domains", "example.org", "keys"])).toBe('trust_domains["example.org"].keys');
  });
});
