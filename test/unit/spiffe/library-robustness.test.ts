/**
 * Robustness of every parser, decoder, verifier and validator of the SPIFFE
 * library that takes untrusted input (the foundation rule: "every parse error
 * says what is wrong and where, with a stable error code; nothing throws a
 * bare Error or a TypeError from a library").
 *
 * Each function gets a deterministic corpus of hostile inputs: wrong JS types,
 * empty values, random bytes and strings from a seeded xorshift PRNG,
 * randomly generated DER trees, truncations and single-byte/-character
 * mutations of valid inputs built with the library itself (certificates,
 * CSRs, bundles, JWTs, PEM), type confusions inside valid JSON documents, and
 * 10 MB inputs. Every call must either return or throw a `SigilError` whose
 * message starts with a lowercase `subsystem: ` prefix; the first input that
 * does anything else is named in the failure. JWT parsers must also never
 * return an Invalid Date. There are no timing asserts: a hang (e.g. a
 * quadratic scan of a 10 MB input) shows up as the test exceeding its timeout.
 *
 * Functions whose parameter is already a decoded value (a JSON object, a
 * protobuf message, a DER element) get hostile values of that shape rather
 * than arbitrary JS types: the library's own decoders are their only callers.
 */
import { create } from "@bufbuild/protobuf";
import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { parseSelector, makeSelector } from "../../../common/selector.js";
import {
  JWTBundlesResponseSchema,
  JWTSVIDResponseSchema,
  ValidateJWTSVIDResponseSchema,
  X509BundlesResponseSchema,
  X509SVIDResponseSchema,
} from "../../../proto/gen/spiffe/workload_pb.js";
import { parseBundleMap, serializeBundleMap } from "../../../spiffe/bundle/bundle-map.js";
import { parseJson, type JsonObject } from "../../../spiffe/bundle/json.js";
import { jwkToPublicKey } from "../../../spiffe/bundle/jwk.js";
import { parseJwks, serializeJwks } from "../../../spiffe/bundle/jwks.js";
import type { JwtBundleSource } from "../../../spiffe/bundle/jwt-bundle.js";
import { parseSpiffeBundle, readBundleObject, serializeSpiffeBundle, toJwtBundle, type SpiffeBundle } from "../../../spiffe/bundle/spiffe-bundle.js";
import { X509Bundle } from "../../../spiffe/bundle/x509-bundle.js";
import { buildCsr, parseCsr, parseSubjectPublicKeyInfo } from "../../../spiffe/csr.js";
import {
  concatDer,
  decodeNamedBits,
  decodeOid,
  decodeSmallInteger,
  decodeTime,
  encodeTlv,
  expectTlv,
  integerMagnitude,
  readChildren,
  readTlv,
  splitDerConcatenation,
  TAG,
} from "../../../spiffe/der.js";
import { isSigilError } from "../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain, parseTrustDomainIdString, spiffeIdFromPath } from "../../../spiffe/id.js";
import { isJwtSvidAlg } from "../../../spiffe/jwt/alg.js";
import { readAudience, readExpiry, readOptionalNumericDate, readSubject } from "../../../spiffe/jwt/claims.js";
import { decodeJsonSegment, encodeJsonSegment, splitCompactJws } from "../../../spiffe/jwt/compact.js";
import { decodeJwtSvid } from "../../../spiffe/jwt/decode.js";
import { checkJwtSvidHeader } from "../../../spiffe/jwt/header.js";
import { parseJwtSvidInsecure } from "../../../spiffe/jwt/parse-insecure.js";
import { signJwtSvid } from "../../../spiffe/jwt/sign.js";
import { validateJwtSvid } from "../../../spiffe/jwt/validate.js";
import { decodePem, decodePemCertificates, decodePemPrivateKey, encodePemCertificates, encodePemPrivateKey } from "../../../spiffe/pem.js";
import { generateSigner } from "../../../spiffe/signer.js";
import { parseEndpointAddress, resolveEndpointAddress } from "../../../spiffe/workloadapi/address.js";
import { parseJwtBundlesResponse, parseJwtSvidResponse, parseValidateJwtSvidResponse } from "../../../spiffe/workloadapi/jwt-context.js";
import { parseX509BundlesResponse, parseX509SvidResponse } from "../../../spiffe/workloadapi/x509-context.js";
import { createIntermediateCa, createRootCa } from "../../../spiffe/x509/ca.js";
import { decodeCertificate } from "../../../spiffe/x509/decode-certificate.js";
import { loadIssuer } from "../../../spiffe/x509/issuer.js";
import { issueLeaf, prepareLeafTemplate } from "../../../spiffe/x509/leaf.js";
import { StaticX509BundleSource } from "../../../spiffe/x509/static-bundle-source.js";
import { checkSubjectPublicKeyInfo } from "../../../spiffe/x509/subject-public-key.js";
import { decodeChain, nodeCertificate, parseX509Svid } from "../../../spiffe/x509/svid.js";
import { verifyX509Svid } from "../../../spiffe/x509/verify.js";

// ---------------------------------------------------------------------------
// The harness

/** A message prefix such as `spiffe id: `, `x509svid: `, `workloadapi: `. */
const SUBSYSTEM_PREFIX = /^[a-z][a-z0-9]*(?: [a-z0-9]+)*: \S/;

function describeInput(x: unknown): string {
  if (typeof x === "string") return `string(${x.length}) ${JSON.stringify(x.length > 160 ? `${x.slice(0, 160)}…` : x)}`;
  if (x instanceof Uint8Array) {
    return `${x.constructor.name}(${x.length}) ${Buffer.from(x.buffer, x.byteOffset, Math.min(x.byteLength, 96)).toString("hex")}${x.length > 96 ? "…" : ""}`;
  }
  if (Array.isArray(x)) return `[${x.slice(0, 4).map(describeInput).join(", ")}${x.length > 4 ? ", …" : ""}]`;
  if (typeof x === "bigint") return `${x}n`;
  if (typeof x === "function") return "a function";
  if (x === null || typeof x !== "object") return String(x);
  const tag = Object.prototype.toString.call(x);
  try {
    const json = JSON.stringify(x, (_k, v: unknown) =>
      typeof v === "bigint" ? `${v}n` : v instanceof Uint8Array ? `<${v.length} bytes ${Buffer.from(v.subarray(0, 24)).toString("hex")}…>` : v,
    );
    return `${tag} ${json === undefined ? "" : json.length > 400 ? `${json.slice(0, 400)}…` : json}`;
  } catch {
    return tag;
  }
}

/** What is wrong with a thrown value, or undefined when it is an acceptable SigilError. */
function problemWithThrown(e: unknown): string | undefined {
  if (!isSigilError(e)) {
    const kind = e instanceof Error ? e.constructor.name : typeof e;
    return `threw ${kind} instead of a SigilError: ${e instanceof Error ? e.message : String(e)}`;
  }
  if (typeof e.code !== "string" || e.code.length === 0) return `threw a SigilError without a code: ${e.message}`;
  if (e.message.length === 0) return `threw SigilError ${e.code} with an empty message`;
  if (!SUBSYSTEM_PREFIX.test(e.message)) {
    return `threw SigilError ${e.code} whose message does not start with a lowercase "subsystem: " prefix: ${JSON.stringify(e.message.slice(0, 200))}`;
  }
  return undefined;
}

interface FuzzOptions<T> {
  /** How to name an input in the failure message (default: its type and a preview). */
  readonly show?: (input: T) => string;
  /** Checks a normal return; returns a problem description or undefined. */
  readonly after?: (result: unknown, input: T) => string | undefined;
  /** Smallest acceptable corpus size, so a broken generator cannot pass vacuously. */
  readonly min?: number;
}

/**
 * Calls `call` on every input and asserts each returns or throws a prefixed
 * SigilError. The failure names the first offending input.
 */
function expectRobust<T>(inputs: Iterable<T>, call: (input: T) => unknown, options: FuzzOptions<T> = {}): number {
  let count = 0;
  let offence: string | undefined;
  for (const input of inputs) {
    count++;
    let problem: string | undefined;
    try {
      const result = call(input);
      problem = options.after?.(result, input);
    } catch (e) {
      problem = problemWithThrown(e);
    }
    if (problem !== undefined) {
      offence = `input #${count - 1} ${(options.show ?? describeInput)(input)}\n  ${problem}`;
      break;
    }
  }
  expect(offence, offence).toBeUndefined();
  expect(count).toBeGreaterThanOrEqual(options.min ?? 100);
  return count;
}

/** Checks that every Date a JWT parser returned is a real date (never an Invalid Date). */
function datesAreValid(result: unknown): string | undefined {
  const items = Array.isArray(result) ? result : [result];
  for (const item of items) {
    if (typeof item !== "object" || item === null) continue;
    for (const [k, v] of Object.entries(item)) {
      if (v instanceof Date && !Number.isFinite(v.getTime())) return `returned an Invalid Date as ${k}`;
    }
  }
  if (result instanceof Date && !Number.isFinite(result.getTime())) return "returned an Invalid Date";
  return undefined;
}

// ---------------------------------------------------------------------------
// Deterministic randomness

type Rng = () => number;

/** xorshift32 seeded from a name, so each test's corpus is fixed and independent of test order. */
function rngFor(name: string): Rng {
  let x = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) x = Math.imul(x ^ name.charCodeAt(i), 0x01000193) >>> 0;
  if (x === 0) x = 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[rng() % items.length] as T;
}

function randomBytes(rng: Rng, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = rng() & 0xff;
  return out;
}

const DER_TAGS = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0c, 0x13, 0x16, 0x17, 0x18, 0x30, 0x31, 0xa0, 0xa3, 0x80, 0x82, 0x86, 0x1f, 0x00, 0xff];

/** A random, mostly well-formed DER tree: gets past the outer checks into the decoders behind them. */
function randomDer(rng: Rng, depth: number): Uint8Array {
  const tag = pick(rng, DER_TAGS);
  const constructed = (tag & 0x20) !== 0;
  if (constructed && depth > 0) {
    const children: Uint8Array[] = [];
    const n = rng() % 5;
    for (let i = 0; i < n; i++) children.push(randomDer(rng, depth - 1));
    return encodeTlv(tag, ...children);
  }
  return encodeTlv(tag, randomBytes(rng, rng() % 24));
}

/** Random byte inputs: plain noise and random DER trees, some of them with a corrupted byte. */
function* randomByteInputs(rng: Rng, count: number): Generator<Uint8Array> {
  for (let i = 0; i < count; i++) {
    if (i % 2 === 0) {
      yield randomBytes(rng, rng() % 300);
    } else {
      const der = randomDer(rng, 5);
      if (i % 3 === 0 && der.length > 0) der[rng() % der.length] = rng() & 0xff;
      yield der;
    }
  }
}

const STRING_ALPHABET = [
  ..."abcxyzAZ09",
  ..."._-~:/?#[]@!$&'()*+,;=%",
  ..."{}\"\\ \t\n\r",
  "\0",
  "\u007f",
  "\u0085",
  "é",
  "ß",
  "\u202e",
  "\ufeff",
  "\ud800",
  "\udfff",
  "💥",
  "spiffe://",
  "example.org",
  "-----BEGIN ",
  "-----END ",
  "CERTIFICATE",
  "-----",
  "Bearer ",
  "unix://",
  "tcp://",
  "[::1]",
  "127.0.0.1",
  "eyJ",
];

function randomString(rng: Rng, maxParts: number): string {
  let s = "";
  const n = rng() % maxParts;
  for (let i = 0; i < n; i++) s += pick(rng, STRING_ALPHABET);
  return s;
}

function* randomStrings(rng: Rng, count: number): Generator<string> {
  for (let i = 0; i < count; i++) yield randomString(rng, 40);
}

/** Every (or, for long values, evenly spaced) truncation, one random byte change per position, tag/length specials. */
function* byteMutations(valid: Uint8Array, rng: Rng, limit = 700): Generator<Uint8Array> {
  const step = Math.max(1, Math.ceil(valid.length / limit));
  for (let n = 0; n < valid.length; n += step) yield valid.slice(0, n);
  for (let i = 0; i < valid.length; i += step) {
    const m = valid.slice();
    m[i] = (m[i] as number) ^ (1 + (rng() % 255));
    yield m;
  }
  for (let i = 0; i < Math.min(12, valid.length); i++) {
    for (const v of [0x00, 0x1f, 0x7f, 0x80, 0x81, 0x84, 0x85, 0xff]) {
      const m = valid.slice();
      m[i] = v;
      yield m;
    }
  }
  yield concatDer([valid, Uint8Array.of(0)]);
  yield concatDer([valid, valid]);
  yield concatDer([Uint8Array.of(0x30, 0x82, (valid.length >> 8) & 0xff, valid.length & 0xff), valid]);
}

const MUTATION_CHARS = [..."AZaz09-_.=+/:%@#?[]{}\" \t\n\\", "\0", "é", "\ud800", "💥"];

/** Truncations, single-character substitutions, deletions, insertions and a doubled tail. */
function* stringMutations(valid: string, rng: Rng, count = 200): Generator<string> {
  const step = Math.max(1, Math.ceil(valid.length / count));
  for (let n = 0; n < valid.length; n += step) yield valid.slice(0, n);
  for (let i = 0; i < count; i++) {
    const at = valid.length === 0 ? 0 : rng() % valid.length;
    const c = pick(rng, MUTATION_CHARS);
    switch (i % 4) {
      case 0:
        yield valid.slice(0, at) + c + valid.slice(at + 1);
        break;
      case 1:
        yield valid.slice(0, at) + valid.slice(at + 1);
        break;
      case 2:
        yield valid.slice(0, at) + c + valid.slice(at);
        break;
      default:
        yield valid + valid.slice(at);
    }
  }
  yield ` ${valid}`;
  yield `${valid} `;
  yield valid.toUpperCase();
}

// ---------------------------------------------------------------------------
// Fixed corpora

const WRONG_TYPES: readonly unknown[] = [
  undefined,
  null,
  0,
  -1,
  1.5,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  2 ** 53,
  0n,
  123n,
  true,
  false,
  {},
  Object.create(null) as object,
  { length: 3 },
  { toString: () => "spiffe://example.org/w" },
  [],
  [""],
  [null],
  [1, 2, 3],
  new Date(0),
  new Date(Number.NaN),
  /x/,
  () => "x",
  new Map(),
  new Set(),
  new ArrayBuffer(8),
  new Uint16Array(4),
  new Float64Array(2),
  new DataView(new ArrayBuffer(4)),
  new Error("not input"),
  "",
  new Uint8Array(0),
];

const HOSTILE_STRINGS: readonly string[] = [
  "",
  " ",
  "\t\n",
  "\0",
  "\0abc",
  "\ud800",
  "\udfff\ud800",
  "\ufffd",
  "\u202e",
  "é",
  "💥",
  "a".repeat(300),
  "%",
  "%zz",
  "%00",
  "spiffe",
  "spiffe:",
  "spiffe://",
  "spiffe:///",
  "spiffe://example.org",
  "spiffe://example.org/",
  "spiffe://example.org/a/../b",
  "spiffe://EXAMPLE.org/x",
  "spiffe://ex%41mple.org/x",
  "spiffe://user@example.org/x",
  "spiffe://example.org:443/x",
  "spiffe://[::1]/x",
  "spiffe://example.org/x?q",
  "spiffe://example.org/x#f",
  `spiffe://example.org/${"a".repeat(2100)}`,
  `spiffe://${"a".repeat(256)}/x`,
  "SPIFFE://example.org/x",
  "https://example.org/x",
  "__proto__",
  "constructor",
  "toString",
  "hasOwnProperty",
  "null",
  "undefined",
  "true",
  "0",
  "-0",
  "1e400",
  "{}",
  "[]",
  '{"__proto__":1}',
  '"',
  "-----BEGIN CERTIFICATE-----",
  "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----",
  "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
  "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----",
  "-----BEGIN CERTIFICATE-----\nMAA=\n-----END PRIVATE KEY-----",
  "-----BEGIN PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nMAA=\n-----END PRIVATE KEY-----",
  "Bearer",
  "Bearer ",
  "bearer x",
  "Bearer a b",
  "unix:",
  "unix://",
  "unix:///",
  "unix:///tmp/a.sock%00",
  "unix:///tmp/%zz",
  "unix://host/tmp/a.sock",
  "tcp://",
  "tcp://127.0.0.1",
  "tcp://127.0.0.1:0",
  "tcp://127.0.0.1:99999",
  "tcp://[::1",
  "tcp://[fe80::1%25eth0]:8",
  "tcp://localhost:8080",
  "a:b",
  ":",
  "::",
  "a:",
  ":b",
  "unix:uid:1000",
  "k8s:ns:\u0085",
  "...",
  ".",
  "a..b",
  "eyJ",
  "e30.e30.",
  "e30.e30.e30",
  "a.b.c.d.e",
  "..",
  '{"alg":"none"}',
];

const TEN_MB = 10 * 1024 * 1024;

/** 10 MB strings, each shaped to walk as far as possible into some parser. */
const HUGE_STRINGS: readonly string[] = [
  "a".repeat(TEN_MB),
  "-----BEGIN A-----".repeat(Math.ceil(TEN_MB / 17)),
  `spiffe://example.org/${"a".repeat(TEN_MB)}`,
  "[".repeat(TEN_MB),
  `"${"\\u0041".repeat(TEN_MB / 6)}`,
  `Bearer ${"a".repeat(TEN_MB)} x`,
  `k8s:${"v".repeat(TEN_MB)}`,
  `unix:///${"d/".repeat(TEN_MB / 2)}`,
  `${"e30".repeat(TEN_MB / 6)}.${"e30".repeat(TEN_MB / 6)}.`,
];

function hugeBytes(): Uint8Array[] {
  const rng = rngFor("huge");
  const noise = randomBytes(rng, TEN_MB);
  // One SEQUENCE whose single child is a 10 MB OCTET STRING: big but only two elements.
  const wrapped = encodeTlv(TAG.SEQUENCE, encodeTlv(TAG.OCTET_STRING, new Uint8Array(TEN_MB)));
  // A header announcing 10 MB that is not there.
  const liar = Uint8Array.of(0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x30, 0x00);
  // 64 KiB of empty SEQUENCEs inside one SEQUENCE: many small elements.
  const many = encodeTlv(TAG.SEQUENCE, new Uint8Array(65536).map((_, i) => (i % 2 === 0 ? 0x30 : 0x00)));
  return [new Uint8Array(TEN_MB), noise, wrapped, liar, many, new Uint8Array(TEN_MB).fill(0xff)];
}
const HUGE_BYTES: readonly Uint8Array[] = hugeBytes();

/** JSON values to substitute at every position of a valid document. */
const HOSTILE_JSON_VALUES: readonly unknown[] = [
  null,
  true,
  false,
  0,
  -1,
  1.5,
  1e300,
  -1e300,
  8.64e12,
  1e16,
  -8.64e15,
  "",
  " ",
  "x",
  "\u0000",
  "__proto__",
  "toString",
  "spiffe://example.org",
  "spiffe://other.org/w",
  "ES256",
  "AAAA",
  "a".repeat(5000),
  [],
  [null],
  [""],
  ["x", 1],
  [[]],
  {},
  { a: 1 },
  JSON.parse('{"__proto__":{"polluted":true}}') as unknown,
];

type JsonLike = null | boolean | number | string | JsonLike[] | { [k: string]: JsonLike };

/** Copies of `doc` with one value replaced (by each hostile value) or one member removed, at every path. */
function* jsonTypeConfusions(doc: JsonLike): Generator<JsonLike> {
  function* walk(node: JsonLike, replace: (v: JsonLike | undefined) => JsonLike): Generator<JsonLike> {
    for (const v of HOSTILE_JSON_VALUES) yield replace(v as JsonLike);
    if (Array.isArray(node)) {
      yield replace([]);
      for (let i = 0; i < node.length; i++) {
        yield* walk(node[i] as JsonLike, (v) => {
          const copy = [...node];
          if (v === undefined) copy.splice(i, 1);
          else copy[i] = v;
          return replace(copy);
        });
      }
    } else if (node !== null && typeof node === "object") {
      for (const key of Object.keys(node)) {
        yield* walk(node[key] as JsonLike, (v) => {
          const copy: { [k: string]: JsonLike } = { ...node };
          if (v === undefined) delete copy[key];
          else copy[key] = v;
          return replace(copy);
        });
      }
    }
  }
  yield* walk(doc, (v) => (v === undefined ? null : v));
}

// ---------------------------------------------------------------------------
// Valid material, built with the library itself

const NOW = new Date("2030-06-01T00:30:00Z");
const CA_NOT_BEFORE = new Date("2030-01-01T00:00:00Z");
const CA_NOT_AFTER = new Date("2031-01-01T00:00:00Z");
const TD = parseTrustDomain("example.org");
const OTHER_TD = parseTrustDomain("other.org");
const SPIFFE_ID = parseSpiffeId("spiffe://example.org/ns/prod/sa/web");
const AUDIENCE = "spiffe://example.org/api";

const rootSigner = generateSigner("ec-p256");
const ROOT = createRootCa({ trustDomain: TD, signer: rootSigner, notBefore: CA_NOT_BEFORE, notAfter: CA_NOT_AFTER });
const intermediateSigner = generateSigner("ec-p384");
const INTERMEDIATE = createIntermediateCa({
  trustDomain: TD,
  subjectPublicKey: intermediateSigner.publicKey,
  issuerCertDer: ROOT,
  issuerSigner: rootSigner,
  notBefore: CA_NOT_BEFORE,
  notAfter: CA_NOT_AFTER,
});
const leafKey = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
const LEAF_SPKI = new Uint8Array(leafKey.publicKey.export({ type: "spki", format: "der" }));
const LEAF_PKCS8 = new Uint8Array(leafKey.privateKey.export({ type: "pkcs8", format: "der" }));
const LEAF = issueLeaf(prepareLeafTemplate({ issuerCertDer: INTERMEDIATE, issuerSigner: intermediateSigner }), {
  spiffeId: SPIFFE_ID,
  subjectPublicKeyDer: LEAF_SPKI,
  serial: 0x1234n,
  notBefore: new Date("2030-06-01T00:00:00Z"),
  notAfter: new Date("2030-06-01T01:00:00Z"),
  dnsNames: ["web.example.org"],
});
const CHAIN = concatDer([LEAF, INTERMEDIATE]);
const rsaKey = generateKeyPairSync("rsa", { modulusLength: 2048 });
const RSA_SPKI = new Uint8Array(rsaKey.publicKey.export({ type: "spki", format: "der" }));
const CSR_EC = buildCsr(leafKey.privateKey);
const CSR_RSA = buildCsr(rsaKey.privateKey);

const CHAIN_PEM = encodePemCertificates([LEAF, INTERMEDIATE]);
const KEY_PEM = encodePemPrivateKey(LEAF_PKCS8);

const jwtSigner = generateSigner("ec-p256", "jwt-key-1");
const BUNDLE: SpiffeBundle = {
  trustDomain: TD,
  x509Authorities: [ROOT],
  jwtAuthorities: new Map([[jwtSigner.id, jwtSigner.publicKey]]),
  sequenceNumber: 7n,
  refreshHintSeconds: 300,
};
const OTHER_ROOT = createRootCa({ trustDomain: OTHER_TD, signer: generateSigner("ec-p256"), notBefore: CA_NOT_BEFORE, notAfter: CA_NOT_AFTER });
const OTHER_BUNDLE: SpiffeBundle = { trustDomain: OTHER_TD, x509Authorities: [OTHER_ROOT], jwtAuthorities: new Map() };
const BUNDLE_JSON = serializeSpiffeBundle(BUNDLE);
const BUNDLE_MAP_JSON = serializeBundleMap([BUNDLE, OTHER_BUNDLE]);
const JWKS_JSON = serializeJwks(toJwtBundle(BUNDLE));

const JWT = signJwtSvid({
  spiffeId: SPIFFE_ID,
  audience: [AUDIENCE],
  issuedAt: new Date(NOW.getTime() - 60_000),
  expiresAt: new Date(NOW.getTime() + 300_000),
  signer: jwtSigner,
});

const X509_SOURCE = new StaticX509BundleSource([new X509Bundle(TD, [ROOT])]);
const JWT_SOURCE: JwtBundleSource = { getJwtBundleForTrustDomain: (td) => (td.equals(TD) ? toJwtBundle(BUNDLE) : undefined) };

const VALID_HEADER = { alg: "ES256", kid: jwtSigner.id, typ: "JWT" };
const VALID_CLAIMS = {
  sub: SPIFFE_ID.toString(),
  aud: AUDIENCE,
  exp: Math.floor(NOW.getTime() / 1000) + 300,
  iat: Math.floor(NOW.getTime() / 1000) - 60,
};

/** A token with a valid ES256 signature over whatever header and payload it is given. */
function signedToken(header: unknown, payload: unknown): string {
  const input = `${encodeJsonSegment(header)}.${encodeJsonSegment(payload)}`;
  const sig = jwtSigner.sign(Buffer.from(input, "latin1"), { hash: "sha256", dsaEncoding: "ieee-p1363" });
  return `${input}.${Buffer.from(sig).toString("base64url")}`;
}

/** Correctly signed tokens with hostile headers and claims: they get past the signature check. */
function* craftedTokens(): Generator<string> {
  for (const header of jsonTypeConfusions(VALID_HEADER)) yield signedToken(header, VALID_CLAIMS);
  for (const claims of jsonTypeConfusions(VALID_CLAIMS)) yield signedToken(VALID_HEADER, claims);
  yield signedToken({ ...VALID_HEADER, crit: ["exp"] }, VALID_CLAIMS);
  yield signedToken({ ...VALID_HEADER, crit: [{}, null, 1n.toString()] }, VALID_CLAIMS);
  yield signedToken(VALID_HEADER, { ...VALID_CLAIMS, nbf: 1e300 });
  yield signedToken(VALID_HEADER, { ...VALID_CLAIMS, nbf: -1e300 });
  yield signedToken(VALID_HEADER, { ...VALID_CLAIMS, aud: [AUDIENCE, 5] });
  yield `${encodeJsonSegment(VALID_HEADER)}.${Buffer.from([0xff, 0xfe, 0x80]).toString("base64url")}.${JWT.split(".")[2] ?? ""}`;
  yield `${encodeJsonSegment(VALID_HEADER)}.${encodeJsonSegment(VALID_CLAIMS)}.`;
  yield `${encodeJsonSegment(VALID_HEADER)}.${encodeJsonSegment(VALID_CLAIMS)}.${"A".repeat(86)}`;
}

/** Strings for a parser: wrong types, fixed hostile strings, random strings, mutations of valid ones, 10 MB strings. */
function* stringCorpus(name: string, valid: readonly string[], randomCount = 300): Generator<unknown> {
  const rng = rngFor(name);
  yield* WRONG_TYPES;
  yield* HOSTILE_STRINGS;
  yield* randomStrings(rng, randomCount);
  for (const v of valid) {
    yield v;
    yield* stringMutations(v, rng);
  }
  yield* HUGE_STRINGS;
}

/** Bytes for a decoder: wrong types, random bytes and DER trees, mutations of valid values, 10 MB buffers. */
function* byteCorpus(name: string, valid: readonly Uint8Array[], randomCount = 300): Generator<unknown> {
  const rng = rngFor(name);
  yield* WRONG_TYPES;
  yield "MAA=";
  yield Uint8Array.of(0x30);
  yield Uint8Array.of(0x30, 0x80);
  yield Uint8Array.of(0x30, 0x80, 0x00, 0x00);
  yield Uint8Array.of(0x30, 0x84, 0xff, 0xff, 0xff, 0xff);
  yield Uint8Array.of(0x30, 0x85, 0x01, 0x00, 0x00, 0x00, 0x00);
  yield Uint8Array.of(0x30, 0x81, 0x05);
  yield Uint8Array.of(0x30, 0x81, 0x01, 0x00);
  yield Uint8Array.of(0x1f, 0x81, 0x00);
  yield Uint8Array.of(0x30, 0x00);
  yield Uint8Array.of(0x30, 0x02, 0x30, 0x00);
  yield new Uint8Array(new ArrayBuffer(16), 8, 4);
  yield Buffer.from(ROOT);
  yield* randomByteInputs(rng, randomCount);
  for (const v of valid) {
    yield v;
    yield* byteMutations(v, rng);
  }
  yield* HUGE_BYTES;
}

/** JSON documents for a bundle parser: strings, bytes, mutations, type confusions, edge numbers. */
function* jsonCorpus(name: string, validJson: string): Generator<unknown> {
  yield* stringCorpus(name, [validJson], 200);
  yield* byteCorpus(`${name}/bytes`, [new TextEncoder().encode(validJson)], 100);
  for (const doc of jsonTypeConfusions(JSON.parse(validJson) as JsonLike)) yield JSON.stringify(doc);
  const numbers = ["18446744073709551615", "18446744073709551616", "-1", "1e400", "-0", "1.5", "1E2", "01", "9".repeat(400)];
  for (const n of numbers) {
    yield validJson.replace(/"spiffe_sequence":\d+/, `"spiffe_sequence":${n}`);
    yield validJson.replace(/"spiffe_refresh_hint":\d+/, `"spiffe_refresh_hint":${n}`);
    yield `{"keys":[],"spiffe_sequence":${n},"spiffe_refresh_hint":${n},"refresh_hint":${n}}`;
  }
  yield `${"[".repeat(65)}${"]".repeat(65)}`;
  yield `{"keys":[],"keys":[]}`;
  yield `{"trust_domains":{"example.org":{"keys":[]},"example.org":{"keys":[]}}}`;
  yield new Uint8Array([0xef, 0xbb, 0xbf, 0x7b, 0x7d]);
  yield new Uint8Array([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x3a, 0x31, 0x7d]);
}

/** Bundle documents whose x5c[0] is a mutated certificate: reaches the X.509 handling inside bundle parsing. */
function* x5cMutations(name: string): Generator<string> {
  const rng = rngFor(name);
  const doc = JSON.parse(BUNDLE_JSON) as { keys: { x5c?: string[] }[] };
  for (const der of byteMutations(ROOT, rng, 500)) {
    const copy = structuredClone(doc);
    const entry = copy.keys[0];
    if (entry?.x5c !== undefined) entry.x5c = [Buffer.from(der).toString("base64")];
    yield JSON.stringify(copy);
  }
}

// ---------------------------------------------------------------------------
// The tests

describe("SPIFFE IDs, trust domains and selectors reject hostile strings with a SigilError", () => {
  it("parseSpiffeId", () => {
    expectRobust(stringCorpus("parseSpiffeId", [SPIFFE_ID.toString(), "spiffe://a.b-c_d/A/b.c/-_"]), (s) => parseSpiffeId(s as string));
  });
  it("parseTrustDomain", () => {
    expectRobust(stringCorpus("parseTrustDomain", ["example.org", "a-b_c.d0"]), (s) => parseTrustDomain(s as string));
  });
  it("parseTrustDomainIdString", () => {
    expectRobust(stringCorpus("parseTrustDomainIdString", ["spiffe://example.org"]), (s) => parseTrustDomainIdString(s as string));
  });
  it("spiffeIdFromPath", () => {
    expectRobust(stringCorpus("spiffeIdFromPath", ["/ns/prod/sa/web", "/spire/agent/join_token/abc"]), (s) => spiffeIdFromPath(TD, s as string));
  });
  it("parseSelector", () => {
    expectRobust(stringCorpus("parseSelector", ["k8s:ns:prod", "unix:uid:1000"]), (s) => parseSelector(s as string));
  });
  it("makeSelector", () => {
    const inputs = [...stringCorpus("makeSelector", ["k8s", "ns:prod"], 150)];
    expectRobust(inputs, (s) => makeSelector(s as string, "uid:1000"));
    expectRobust(inputs, (s) => makeSelector("unix", s as string));
  });
});

describe("the DER toolkit rejects hostile bytes with a SigilError", () => {
  const valid = [ROOT, LEAF, CSR_EC];
  it("readTlv", () => {
    expectRobust(byteCorpus("readTlv", valid), (b) => readTlv(b as Uint8Array));
  });
  it("expectTlv", () => {
    expectRobust(byteCorpus("expectTlv", valid), (b) => expectTlv(b as Uint8Array, 0, TAG.SEQUENCE, "thing"));
  });
  it("readChildren", () => {
    expectRobust(byteCorpus("readChildren", valid), (b) => {
      const bytes = b as Uint8Array;
      return readChildren(bytes, readTlv(bytes));
    });
  });
  it("splitDerConcatenation", () => {
    expectRobust(byteCorpus("splitDerConcatenation", [CHAIN, ROOT]), (b) => splitDerConcatenation(b as Uint8Array));
  });
  it("decodeOid", () => {
    const rng = rngFor("decodeOid");
    const contents = [...randomByteInputs(rng, 400), Uint8Array.of(0x80), Uint8Array.of(0x2a, 0x86), Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0x7f)];
    expectRobust(contents, (c) => decodeOid(c));
  });
  it("decodeNamedBits", () => {
    const rng = rngFor("decodeNamedBits");
    expectRobust([...randomByteInputs(rng, 400), new Uint8Array(0), Uint8Array.of(8), Uint8Array.of(1)], (c) => decodeNamedBits(c));
  });
  it("decodeTime", () => {
    const rng = rngFor("decodeTime");
    const texts = [...stringMutations("300601000000Z", rng), ...stringMutations("20300601000000Z", rng), ...randomStrings(rng, 100), "991231235959Z", "00000000000000Z", "20300231000000Z", "0".repeat(40)];
    const elements = texts.flatMap((t) => [TAG.UTC_TIME, TAG.GENERALIZED_TIME, TAG.OCTET_STRING].map((tag) => readTlv(encodeTlv(tag, Buffer.from(t, "utf8")))));
    expectRobust(elements, (el) => decodeTime(el));
  });
  it("integerMagnitude", () => {
    const rng = rngFor("integerMagnitude");
    const elements = [...randomByteInputs(rng, 300), new Uint8Array(0), Uint8Array.of(0, 0), Uint8Array.of(0xff, 0x80)].map((c) => readTlv(encodeTlv(TAG.INTEGER, c)));
    expectRobust(elements, (el) => integerMagnitude(el));
  });
  it("decodeSmallInteger", () => {
    const rng = rngFor("decodeSmallInteger");
    const elements = [...randomByteInputs(rng, 300), new Uint8Array(0), new Uint8Array(7).fill(0x7f)].map((c) => readTlv(encodeTlv(TAG.INTEGER, c)));
    expectRobust(elements, (el) => decodeSmallInteger(el));
  });
});

describe("PEM decoding rejects hostile text with a SigilError", () => {
  const valid = [CHAIN_PEM, KEY_PEM, `comment\n${CHAIN_PEM}trailer`];
  it("decodePem", () => {
    expectRobust(stringCorpus("decodePem", valid), (s) => decodePem(s as string));
  });
  it("decodePemCertificates", () => {
    expectRobust(stringCorpus("decodePemCertificates", valid), (s) => decodePemCertificates(s as string));
  });
  it("decodePemPrivateKey", () => {
    expectRobust(stringCorpus("decodePemPrivateKey", valid), (s) => decodePemPrivateKey(s as string));
  });
});

describe("X.509 parsing and verification reject hostile certificates with a SigilError", () => {
  it("decodeCertificate", () => {
    expectRobust(byteCorpus("decodeCertificate", [ROOT, INTERMEDIATE, LEAF]), (b) => decodeCertificate(b as Uint8Array));
  });
  it("decodeChain", () => {
    const corpus = [...byteCorpus("decodeChain", [CHAIN]), [LEAF, null], [LEAF, "x"], [new Uint8Array(0)], [LEAF, 5]];
    expectRobust(corpus, (c) => decodeChain(c as Uint8Array, "ERR_X509_SVID_INVALID"));
  });
  it("nodeCertificate", () => {
    expectRobust(byteCorpus("nodeCertificate", [LEAF]), (b) => nodeCertificate(b as Uint8Array, "the leaf", "ERR_X509_SVID_INVALID"));
  });
  it("parseX509Svid", () => {
    const chains = [...byteCorpus("parseX509Svid", [CHAIN, LEAF]), [LEAF, INTERMEDIATE], [LEAF, null], [INTERMEDIATE, LEAF], [ROOT]];
    expectRobust(chains, (c) => parseX509Svid(c as Uint8Array));
    const keys = byteCorpus("parseX509Svid/key", [LEAF_PKCS8, new Uint8Array(rsaKey.privateKey.export({ type: "pkcs8", format: "der" }))]);
    expectRobust(keys, (k) => parseX509Svid(CHAIN, k as Uint8Array));
  });
  it("verifyX509Svid", () => {
    const chains = [...byteCorpus("verifyX509Svid", [CHAIN, LEAF]), [LEAF, INTERMEDIATE, INTERMEDIATE], [LEAF, ROOT], [LEAF, null]];
    expectRobust(chains, (c) => verifyX509Svid(c as Uint8Array, X509_SOURCE, { now: NOW }));
    // Hostile trust anchors: a bundle authority that is a mutated root.
    const rng = rngFor("verifyX509Svid/authority");
    const authorities = [...byteMutations(ROOT, rng, 600), ...randomByteInputs(rng, 100), new Uint8Array(0)];
    expectRobust(authorities, (a) => verifyX509Svid(CHAIN, new StaticX509BundleSource([new X509Bundle(TD, [a])]), { now: NOW }));
  });
  it("loadIssuer", () => {
    expectRobust(byteCorpus("loadIssuer", [ROOT, INTERMEDIATE]), (b) => loadIssuer(b as Uint8Array, rootSigner));
  });
  it("checkSubjectPublicKeyInfo", () => {
    expectRobust(byteCorpus("checkSubjectPublicKeyInfo", [LEAF_SPKI, RSA_SPKI]), (b) => checkSubjectPublicKeyInfo(b as Uint8Array));
  });
});

describe("CSR and public-key intake reject hostile bytes with a SigilError", () => {
  it("parseCsr", () => {
    expectRobust(byteCorpus("parseCsr", [CSR_EC, CSR_RSA]), (b) => parseCsr(b as Uint8Array, ["ec-p256", "ec-p384", "rsa-2048"]));
  });
  it("parseSubjectPublicKeyInfo", () => {
    expectRobust(byteCorpus("parseSubjectPublicKeyInfo", [LEAF_SPKI, RSA_SPKI]), (b) => parseSubjectPublicKeyInfo(b as Uint8Array, ["ec-p256", "rsa-2048"]));
  });
});

describe("bundle parsing rejects hostile documents with a SigilError", () => {
  it("parseJson", () => {
    expectRobust(jsonCorpus("parseJson", BUNDLE_MAP_JSON), (j) => parseJson(j as string));
  });
  it("parseSpiffeBundle", () => {
    const corpus = [...jsonCorpus("parseSpiffeBundle", BUNDLE_JSON), ...x5cMutations("parseSpiffeBundle/x5c")];
    expectRobust(corpus, (j) => parseSpiffeBundle(j as string, TD));
  });
  it("parseBundleMap", () => {
    const rng = rngFor("parseBundleMap/keys");
    const keyed = [...HOSTILE_STRINGS, ...randomStrings(rng, 100)].map((k) => JSON.stringify({ trust_domains: { [k]: JSON.parse(BUNDLE_JSON) as unknown } }));
    const corpus = [...jsonCorpus("parseBundleMap", BUNDLE_MAP_JSON), ...keyed, ...[...x5cMutations("parseBundleMap/x5c")].slice(0, 300).map((b) => `{"trust_domains":{"example.org":${b}}}`)];
    expectRobust(corpus, (j) => parseBundleMap(j as string));
  });
  it("parseJwks", () => {
    const warnings: string[] = [];
    expectRobust(jsonCorpus("parseJwks", JWKS_JSON), (j) => parseJwks(j as string, TD, { onWarning: (w) => warnings.push(w) }));
  });
  it("readBundleObject", () => {
    const objects: JsonObject[] = [];
    for (const doc of jsonTypeConfusions(JSON.parse(BUNDLE_JSON) as JsonLike)) {
      const parsed = parseJson(JSON.stringify(doc));
      if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) objects.push(parsed as JsonObject);
    }
    expectRobust(objects, (o) => readBundleObject(o, TD, [], { path: ["trust_domains", "example.org"] }));
  });
  it("jwkToPublicKey", () => {
    const jwks = JSON.parse(BUNDLE_JSON) as { keys: JsonLike[] };
    const objects: JsonObject[] = [];
    for (const key of jwks.keys) {
      for (const doc of jsonTypeConfusions(key)) {
        const parsed = parseJson(JSON.stringify(doc));
        if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) objects.push(parsed as JsonObject);
      }
    }
    objects.push(parseJson('{"kty":"RSA","n":"AA","e":"AQAB"}') as JsonObject, parseJson('{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}') as JsonObject);
    expectRobust(objects, (o) => jwkToPublicKey(o));
  });
});

describe("JWT-SVID parsing and validation reject hostile tokens with a SigilError", () => {
  const tokens = (name: string): unknown[] => [...stringCorpus(name, [JWT]), ...craftedTokens()];
  it("splitCompactJws", () => {
    expectRobust(stringCorpus("splitCompactJws", [JWT]), (t) => splitCompactJws(t));
  });
  it("decodeJsonSegment", () => {
    const segments = [...stringCorpus("decodeJsonSegment", JWT.split(".").slice(0, 2)), encodeJsonSegment([]), encodeJsonSegment(null), "_w", "-_-_"];
    expectRobust(segments, (s) => decodeJsonSegment(s as string, "header"));
  });
  it("checkJwtSvidHeader", () => {
    const headers = [...jsonTypeConfusions(VALID_HEADER)].filter((h): h is { [k: string]: JsonLike } => typeof h === "object" && h !== null && !Array.isArray(h));
    headers.push({ ...VALID_HEADER, crit: ["b64"] }, { ...VALID_HEADER, crit: "b64" }, Object.create(null) as { [k: string]: JsonLike });
    expectRobust(headers, (h) => checkJwtSvidHeader(h), { min: 50 });
  });
  const claimObjects = (): Record<string, unknown>[] =>
    [...jsonTypeConfusions({ ...VALID_CLAIMS, nbf: VALID_CLAIMS.iat })].filter((c): c is { [k: string]: JsonLike } => typeof c === "object" && c !== null && !Array.isArray(c));
  it("readSubject", () => {
    expectRobust(claimObjects(), (c) => readSubject(c));
  });
  it("readAudience", () => {
    expectRobust(claimObjects(), (c) => readAudience(c));
  });
  it("readExpiry", () => {
    expectRobust(claimObjects(), (c) => readExpiry(c), { after: datesAreValid });
  });
  it("readOptionalNumericDate", () => {
    expectRobust(claimObjects(), (c) => readOptionalNumericDate(c, "nbf"), { after: datesAreValid });
  });
  it("decodeJwtSvid", () => {
    expectRobust(tokens("decodeJwtSvid"), (t) => decodeJwtSvid(t as string));
  });
  it("parseJwtSvidInsecure", () => {
    expectRobust(tokens("parseJwtSvidInsecure"), (t) => parseJwtSvidInsecure(t as string), { after: datesAreValid });
  });
  it("validateJwtSvid", () => {
    expectRobust(tokens("validateJwtSvid"), (t) => validateJwtSvid(t as string, JWT_SOURCE, { audience: AUDIENCE, now: NOW }), { after: datesAreValid });
  });
  it("refuses a correctly signed token whose exp is beyond the range of dates instead of treating it as never expiring", () => {
    for (const exp of [-1e300, 1e300, -8.64e15]) {
      const token = signedToken(VALID_HEADER, { ...VALID_CLAIMS, exp });
      let error: unknown;
      try {
        validateJwtSvid(token, JWT_SOURCE, { audience: AUDIENCE, now: NOW });
      } catch (e) {
        error = e;
      }
      expect(isSigilError(error, "ERR_JWT_CLAIM_INVALID"), `exp ${exp}`).toBe(true);
      expect((error as Error).message).toMatch(/^jwtsvid: exp claim .* is outside the range of dates$/);
    }
  });
  it("isJwtSvidAlg", () => {
    expectRobust(stringCorpus("isJwtSvidAlg", ["ES256", "PS512"]), (a) => isJwtSvidAlg(a), {
      after: (r) => (typeof r === "boolean" ? undefined : `returned ${typeof r}, not a boolean`),
    });
  });
});

describe("Workload API input rejects hostile values with a SigilError", () => {
  const addresses = ["unix:///run/sigil/agent.sock", "unix:/tmp/a%20b.sock", "tcp://127.0.0.1:8081", "tcp://[::1]:8081"];
  it("parseEndpointAddress", () => {
    expectRobust(stringCorpus("parseEndpointAddress", addresses), (a) => parseEndpointAddress(a as string));
  });
  it("resolveEndpointAddress", () => {
    const corpus = [...stringCorpus("resolveEndpointAddress", addresses, 150)];
    expectRobust(corpus, (a) => resolveEndpointAddress(undefined, { SPIFFE_ENDPOINT_SOCKET: a as string }));
    expectRobust(corpus, (a) => resolveEndpointAddress(a as string, {}));
  });

  const validSvid = { spiffeId: SPIFFE_ID.toString(), x509Svid: CHAIN, x509SvidKey: LEAF_PKCS8, bundle: ROOT, hint: "" };
  const hostileStrings = (name: string): string[] => {
    const rng = rngFor(name);
    return [...HOSTILE_STRINGS, ...randomStrings(rng, 80), ...stringMutations(SPIFFE_ID.toString(), rng, 80), ...stringMutations("spiffe://other.org", rng, 40)];
  };
  const hostileBytes = (name: string, valid: Uint8Array, limit: number): Uint8Array[] => {
    const rng = rngFor(name);
    return [new Uint8Array(0), ...randomByteInputs(rng, 60), ...byteMutations(valid, rng, limit)];
  };

  it("parseX509SvidResponse", () => {
    const messages = function* (): Generator<unknown> {
      yield create(X509SVIDResponseSchema, {});
      yield create(X509SVIDResponseSchema, { svids: [validSvid, { ...validSvid, hint: "a" }, { ...validSvid, hint: "a" }] });
      for (const s of hostileStrings("parseX509SvidResponse/id")) {
        yield create(X509SVIDResponseSchema, { svids: [{ ...validSvid, spiffeId: s }] });
        yield create(X509SVIDResponseSchema, { svids: [{ ...validSvid, hint: s }] });
        yield create(X509SVIDResponseSchema, { svids: [validSvid], federatedBundles: { [s]: OTHER_ROOT } });
      }
      for (const b of hostileBytes("parseX509SvidResponse/chain", CHAIN, 400)) yield create(X509SVIDResponseSchema, { svids: [{ ...validSvid, x509Svid: b }] });
      for (const b of hostileBytes("parseX509SvidResponse/key", LEAF_PKCS8, 200)) yield create(X509SVIDResponseSchema, { svids: [{ ...validSvid, x509SvidKey: b }] });
      for (const b of hostileBytes("parseX509SvidResponse/bundle", ROOT, 300)) {
        yield create(X509SVIDResponseSchema, { svids: [{ ...validSvid, bundle: b }] });
        yield create(X509SVIDResponseSchema, { svids: [validSvid], federatedBundles: { "spiffe://other.org": b } });
        yield create(X509SVIDResponseSchema, { svids: [validSvid], crl: [b] });
      }
    };
    expectRobust(messages(), (m) => parseX509SvidResponse(m as never));
  });

  it("parseX509BundlesResponse", () => {
    const messages = function* (): Generator<unknown> {
      yield create(X509BundlesResponseSchema, {});
      for (const s of hostileStrings("parseX509BundlesResponse/key")) yield create(X509BundlesResponseSchema, { bundles: { [s]: ROOT } });
      for (const b of hostileBytes("parseX509BundlesResponse/value", concatDer([ROOT, OTHER_ROOT]), 500)) {
        yield create(X509BundlesResponseSchema, { bundles: { "spiffe://example.org": b } });
      }
    };
    expectRobust(messages(), (m) => parseX509BundlesResponse(m as never));
  });

  it("parseJwtSvidResponse", () => {
    const messages = function* (): Generator<unknown> {
      const valid = { spiffeId: SPIFFE_ID.toString(), svid: JWT, hint: "" };
      yield create(JWTSVIDResponseSchema, {});
      for (const s of hostileStrings("parseJwtSvidResponse/id")) {
        yield create(JWTSVIDResponseSchema, { svids: [{ ...valid, spiffeId: s }] });
        yield create(JWTSVIDResponseSchema, { svids: [valid, { ...valid, hint: s }] });
      }
      for (const t of [...stringMutations(JWT, rngFor("parseJwtSvidResponse/token"), 300), ...craftedTokens()]) {
        yield create(JWTSVIDResponseSchema, { svids: [{ ...valid, svid: t }] });
      }
    };
    expectRobust(messages(), (m) => parseJwtSvidResponse(m as never, SPIFFE_ID), { after: datesAreValid });
  });

  it("parseJwtBundlesResponse", () => {
    const messages = function* (): Generator<unknown> {
      const jwks = new TextEncoder().encode(JWKS_JSON);
      yield create(JWTBundlesResponseSchema, {});
      for (const s of hostileStrings("parseJwtBundlesResponse/key")) yield create(JWTBundlesResponseSchema, { bundles: { [s]: jwks } });
      for (const b of hostileBytes("parseJwtBundlesResponse/value", jwks, 400)) yield create(JWTBundlesResponseSchema, { bundles: { "spiffe://example.org": b } });
      for (const doc of jsonTypeConfusions(JSON.parse(JWKS_JSON) as JsonLike)) {
        yield create(JWTBundlesResponseSchema, { bundles: { "spiffe://example.org": new TextEncoder().encode(JSON.stringify(doc)) } });
      }
    };
    expectRobust(messages(), (m) => parseJwtBundlesResponse(m as never));
  });

  it("parseValidateJwtSvidResponse", () => {
    const messages = function* (): Generator<unknown> {
      for (const s of hostileStrings("parseValidateJwtSvidResponse")) yield create(ValidateJWTSVIDResponseSchema, { spiffeId: s });
      yield create(ValidateJWTSVIDResponseSchema, { spiffeId: SPIFFE_ID.toString(), claims: { sub: 5, aud: null, exp: "x" } });
    };
    expectRobust(messages(), (m) => parseValidateJwtSvidResponse(m as never));
  });
});
