/**
 * An in-process fake SPIFFE Workload API server on a Unix socket, for tests of
 * Workload API clients (ours, and later comparisons against the agent).
 *
 * The test controls every response: it sets the current message of each
 * streaming RPC (sent to new streams and pushed to open ones), ends open
 * streams with a chosen status, makes the next stream openings fail, and
 * installs handlers for the unary RPCs. Every call's path and security-header
 * values are recorded, so tests can check what the client sent (WEP-5).
 *
 * Like SPIRE, it rejects a call without exactly one `workload.spiffe.io: true`
 * with InvalidArgument (turn off with `requireSecurityHeader: false`), and
 * answers the WIT RPCs with Unimplemented.
 */
import { EventEmitter, once } from "node:events";
import { spawnSync } from "node:child_process";
import { generateKeyPairSync, randomBytes, webcrypto, X509Certificate, type KeyObject } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import {
  Server,
  ServerCredentials,
  status,
  type Metadata,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
} from "@grpc/grpc-js";
import {
  JWTBundlesResponseSchema,
  JWTSVIDResponseSchema,
  SpiffeWorkloadAPI,
  ValidateJWTSVIDResponseSchema,
  X509BundlesResponseSchema,
  X509SVIDResponseSchema,
  type X509SVIDSchema,
  type JWTBundlesResponse,
  type JWTSVIDRequest,
  type JWTSVIDResponse,
  type ValidateJWTSVIDRequest,
  type ValidateJWTSVIDResponse,
  type X509BundlesResponse,
  type X509SVIDResponse,
} from "../../proto/gen/spiffe/workload_pb.js";
import { grpcServiceDefinition, type GrpcServiceImplementation } from "../../spiffe/grpc/service.js";

/** The security header the Workload Endpoint requires (WEP-5). */
export const SECURITY_HEADER = "workload.spiffe.io";

/** A gRPC status the fake answers with. */
export interface FakeStatus {
  readonly code: status;
  readonly details?: string;
}

/** One call the fake received. */
export interface RecordedCall {
  /** Wire path, e.g. `/SpiffeWorkloadAPI/FetchX509SVID`. */
  readonly path: string;
  /** Every value of the `workload.spiffe.io` header, as received. */
  readonly securityHeader: readonly string[];
}

/** A unary handler: returns the response, or a status to fail with. */
export type FakeUnaryHandler<Req, Res> = (req: Req, metadata: Metadata) => Res | FakeStatus | Promise<Res | FakeStatus>;

function isStatus(v: unknown): v is FakeStatus {
  return typeof v === "object" && v !== null && "code" in v && !("$typeName" in v);
}

/**
 * The controls of one server-streaming RPC. New streams get the current
 * message at once (if set); `push` replaces it and sends it to open streams.
 */
export class FakeStream<Res> {
  readonly #open = new Set<ServerWritableStream<unknown, Res>>();
  readonly #events = new EventEmitter();
  readonly #failures: FakeStatus[] = [];
  #current: Res | undefined;
  #opened = 0;

  /** How many streams of this RPC have been accepted so far (including failed ones). */
  get openedCount(): number {
    return this.#opened;
  }

  /** How many streams are open right now. */
  get openCount(): number {
    return this.#open.size;
  }

  /** Sets the current message and sends it to every open stream. */
  push(message: Res): void {
    this.#current = message;
    for (const call of this.#open) call.write(message);
  }

  /** Forgets the current message: new streams stay silent until the next push. */
  clear(): void {
    this.#current = undefined;
  }

  /** Ends every open stream with `st` (default OK, i.e. a normal end of stream). */
  endAll(st: FakeStatus = { code: status.OK }): void {
    for (const call of [...this.#open]) this.#finish(call, st);
  }

  /** The next `count` stream openings fail at once with `st`. */
  failNext(st: FakeStatus, count = 1): void {
    for (let i = 0; i < count; i++) this.#failures.push(st);
  }

  /**
   * Resolves once `n` streams have been opened in total (counting from the
   * fake's start), or rejects after `timeoutMs`.
   */
  async waitForOpened(n: number, timeoutMs = 10_000): Promise<void> {
    if (this.#opened >= n) return;
    const signal = AbortSignal.timeout(timeoutMs);
    while (this.#opened < n) await once(this.#events, "opened", { signal });
  }

  /** @internal used by the server. */
  handle(call: ServerWritableStream<unknown, Res>, rejected: FakeStatus | undefined): void {
    this.#opened++;
    const failure = rejected ?? this.#failures.shift();
    if (failure !== undefined) {
      this.#finish(call, failure);
    } else {
      this.#open.add(call);
      call.on("cancelled", () => this.#open.delete(call));
      call.on("close", () => this.#open.delete(call));
      if (this.#current !== undefined) call.write(this.#current);
    }
    this.#events.emit("opened");
  }

  #finish(call: ServerWritableStream<unknown, Res>, st: FakeStatus): void {
    this.#open.delete(call);
    if (st.code === status.OK) call.end();
    else call.emit("error", { code: st.code, details: st.details ?? status[st.code] });
  }

  /** @internal */
  closeAll(): void {
    this.endAll({ code: status.UNAVAILABLE, details: "fake shutting down" });
  }
}

/** Options for {@link FakeWorkloadApi.start}. */
export interface FakeWorkloadApiOptions {
  /** Reject calls without exactly one `workload.spiffe.io: true` (default true, as SPIRE). */
  readonly requireSecurityHeader?: boolean;
  /** Socket path; default a fresh temp directory's `agent.sock`. */
  readonly socketPath?: string;
}

/** A running fake Workload API server. Always `await fake.close()` in `afterEach`. */
export class FakeWorkloadApi {
  /** `unix:///…/agent.sock`: pass to the client or set as SPIFFE_ENDPOINT_SOCKET. */
  readonly address: string;
  readonly socketPath: string;
  /** Every call received, in order (including rejected ones). */
  readonly calls: RecordedCall[] = [];
  readonly x509Svid = new FakeStream<X509SVIDResponse>();
  readonly x509Bundles = new FakeStream<X509BundlesResponse>();
  readonly jwtBundles = new FakeStream<JWTBundlesResponse>();
  /** Handler for FetchJWTSVID; default PermissionDenied. */
  onFetchJwtSvid: FakeUnaryHandler<JWTSVIDRequest, JWTSVIDResponse> = () => ({
    code: status.PERMISSION_DENIED,
    details: "no identity issued",
  });
  /** Handler for ValidateJWTSVID; default InvalidArgument. */
  onValidateJwtSvid: FakeUnaryHandler<ValidateJWTSVIDRequest, ValidateJWTSVIDResponse> = () => ({
    code: status.INVALID_ARGUMENT,
    details: "no validator installed in the fake",
  });

  readonly #server: Server;
  readonly #tempDir: string | undefined;

  private constructor(server: Server, socketPath: string, tempDir: string | undefined) {
    this.#server = server;
    this.socketPath = socketPath;
    this.address = `unix://${socketPath}`;
    this.#tempDir = tempDir;
  }

  /** Starts the fake on a Unix socket. */
  static async start(options: FakeWorkloadApiOptions = {}): Promise<FakeWorkloadApi> {
    const tempDir = options.socketPath === undefined ? await mkdtemp(join(tmpdir(), "sigil-fake-wapi-")) : undefined;
    const socketPath = options.socketPath ?? join(tempDir as string, "agent.sock");
    const server = new Server();
    const fake = new FakeWorkloadApi(server, socketPath, tempDir);
    try {
      server.addService(grpcServiceDefinition(SpiffeWorkloadAPI), fake.#implementation(options.requireSecurityHeader ?? true));
      await new Promise<void>((resolve, reject) => {
        server.bindAsync(`unix://${socketPath}`, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
      });
    } catch (e) {
      server.forceShutdown();
      if (tempDir !== undefined) await rm(tempDir, { recursive: true, force: true });
      throw e;
    }
    return fake;
  }

  /** Calls received for one method path. */
  callsTo(path: string): RecordedCall[] {
    return this.calls.filter((c) => c.path === path);
  }

  /** Stops the server, ending open streams, and removes the temp directory. */
  async close(): Promise<void> {
    try {
      this.x509Svid.closeAll();
      this.x509Bundles.closeAll();
      this.jwtBundles.closeAll();
      await new Promise<void>((resolve) => this.#server.tryShutdown(() => resolve()));
      this.#server.forceShutdown();
    } finally {
      if (this.#tempDir !== undefined) await rm(this.#tempDir, { recursive: true, force: true });
    }
  }

  #check(path: string, metadata: Metadata, requireHeader: boolean): FakeStatus | undefined {
    const values = metadata.get(SECURITY_HEADER).map((v) => (typeof v === "string" ? v : v.toString("utf8")));
    this.calls.push({ path, securityHeader: values });
    if (requireHeader && (values.length !== 1 || values[0] !== "true")) {
      return { code: status.INVALID_ARGUMENT, details: "security header missing from request" };
    }
    return undefined;
  }

  #implementation(requireHeader: boolean): GrpcServiceImplementation<(typeof SpiffeWorkloadAPI)["method"]> {
    const stream =
      <Res>(s: FakeStream<Res>) =>
      (call: ServerWritableStream<unknown, Res>): void => {
        s.handle(call, this.#check(call.getPath(), call.metadata, requireHeader));
      };
    const unary =
      <Req, Res>(getHandler: () => FakeUnaryHandler<Req, Res>) =>
      (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
        const rejected = this.#check(call.getPath(), call.metadata, requireHeader);
        if (rejected !== undefined) {
          callback({ code: rejected.code, details: rejected.details ?? "" });
          return;
        }
        Promise.resolve()
          .then(() => getHandler()(call.request, call.metadata))
          .then(
            (res) => {
              if (isStatus(res)) callback({ code: res.code, details: res.details ?? status[res.code] });
              else callback(null, res);
            },
            (e: unknown) => callback({ code: status.INTERNAL, details: String(e) }),
          );
      };
    const unimplemented = (call: ServerWritableStream<unknown, unknown>): void => {
      const rejected = this.#check(call.getPath(), call.metadata, requireHeader);
      call.emit("error", rejected ?? { code: status.UNIMPLEMENTED, details: "WIT-SVID profile is not supported" });
    };
    return {
      fetchX509SVID: stream(this.x509Svid),
      fetchX509Bundles: stream(this.x509Bundles),
      fetchJWTBundles: stream(this.jwtBundles),
      fetchJWTSVID: unary(() => this.onFetchJwtSvid),
      validateJWTSVID: unary(() => this.onValidateJwtSvid),
      fetchWITSVID: unimplemented,
      fetchWITBundles: unimplemented,
    };
  }
}

/** Builds an X509SVIDResponse from a plain init object (fields may be partial). */
export function x509SvidResponse(init: MessageInitShape<typeof X509SVIDResponseSchema>): X509SVIDResponse {
  return create(X509SVIDResponseSchema, init);
}

/** Builds an X509BundlesResponse. */
export function x509BundlesResponse(init: MessageInitShape<typeof X509BundlesResponseSchema>): X509BundlesResponse {
  return create(X509BundlesResponseSchema, init);
}

/** Builds a JWTBundlesResponse. */
export function jwtBundlesResponse(init: MessageInitShape<typeof JWTBundlesResponseSchema>): JWTBundlesResponse {
  return create(JWTBundlesResponseSchema, init);
}

/** Builds a JWTSVIDResponse. */
export function jwtSvidResponse(init: MessageInitShape<typeof JWTSVIDResponseSchema>): JWTSVIDResponse {
  return create(JWTSVIDResponseSchema, init);
}

/** Builds a ValidateJWTSVIDResponse. */
export function validateJwtSvidResponse(
  init: MessageInitShape<typeof ValidateJWTSVIDResponseSchema>,
): ValidateJWTSVIDResponse {
  return create(ValidateJWTSVIDResponseSchema, init);
}

// ---------------------------------------------------------------------------
// Test identity material: real certificates (made with the OpenSSL CLI; gate
// tests with `requireTool("openssl")`) and JWTs for the fake's responses.

/** A test CA for one trust domain. */
export interface TestCa {
  readonly trustDomain: string;
  /** The CA certificate, DER. */
  readonly der: Uint8Array;
  /** The CA certificate and key, PEM (for signing further certificates). */
  readonly certPem: string;
  readonly keyPem: string;
  /** Certificates sent after a leaf issued by this CA: itself and its parents, if it is an intermediate. */
  readonly chainTail: readonly Uint8Array[];
}

/** A test X509-SVID in Workload API wire form. */
export interface TestX509Svid {
  readonly spiffeId: string;
  /** Leaf, then the issuing CA's intermediates, as concatenated DER: the `x509_svid` field. */
  readonly chainDer: Uint8Array;
  /** Unencrypted PKCS#8 DER: the `x509_svid_key` field. */
  readonly keyDer: Uint8Array;
  /** The leaf certificate alone, DER. */
  readonly leafDer: Uint8Array;
}

function openssl(dir: string, args: string[]): void {
  const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`openssl ${args.join(" ")} failed: ${r.stderr}`);
}

function withTempDir<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), "sigil-test-pki-"));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Signs a certificate for `key` with the given extensions: self-signed, or by `issuer`. */
function signCert(key: KeyObject, subject: string, extensions: string, issuer: TestCa | undefined, days: number): Uint8Array {
  return withTempDir((dir) => {
    writeFileSync(join(dir, "key.pem"), key.export({ type: "pkcs8", format: "pem" }));
    writeFileSync(join(dir, "ext.cnf"), `[v3]\n${extensions}\n`);
    const serial = `0x${randomBytes(16).toString("hex")}`;
    if (issuer === undefined) {
      openssl(dir, ["req", "-x509", "-new", "-key", "key.pem", "-subj", subject, "-days", String(days), "-set_serial", serial,
        "-config", "ext.cnf", "-extensions", "v3", "-outform", "DER", "-out", "cert.der"]);
    } else {
      writeFileSync(join(dir, "ca.pem"), issuer.certPem);
      writeFileSync(join(dir, "ca.key"), issuer.keyPem);
      openssl(dir, ["req", "-new", "-key", "key.pem", "-subj", subject, "-out", "req.csr", "-config", "ext.cnf"]);
      openssl(dir, ["x509", "-req", "-in", "req.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", serial,
        "-days", String(days), "-extfile", "ext.cnf", "-extensions", "v3", "-outform", "DER", "-out", "cert.der"]);
    }
    return new Uint8Array(readFileSync(join(dir, "cert.der")));
  });
}

function p256(): KeyObject {
  return generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
}

/**
 * Creates a CA certificate with URI SAN `spiffe://<trustDomain>`: self-signed,
 * or an intermediate signed by `parent` when given.
 */
export function createTestCa(trustDomain: string, parent?: TestCa): TestCa {
  const key = p256();
  const kind = parent === undefined ? "root" : "intermediate";
  const der = signCert(
    key,
    `/O=Sigil tests/CN=${trustDomain} test ${kind} CA ${randomBytes(4).toString("hex")}`,
    [
      "basicConstraints=critical,CA:TRUE",
      "keyUsage=critical,keyCertSign,cRLSign",
      `subjectAltName=URI:spiffe://${trustDomain}`,
      "subjectKeyIdentifier=hash",
    ].join("\n"),
    parent,
    2,
  );
  const certPem = new X509Certificate(der).toString();
  const keyPem = key.export({ type: "pkcs8", format: "pem" }).toString();
  return { trustDomain, der, certPem, keyPem, chainTail: parent === undefined ? [] : [der, ...parent.chainTail] };
}

/** Issues a leaf X509-SVID for `spiffeId` from `ca`. */
export function issueTestX509Svid(ca: TestCa, spiffeId: string): TestX509Svid {
  const key = p256();
  const leafDer = signCert(
    key,
    "/O=Sigil tests",
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement",
      "extendedKeyUsage=serverAuth,clientAuth",
      `subjectAltName=URI:${spiffeId}`,
      "authorityKeyIdentifier=keyid",
    ].join("\n"),
    ca,
    1,
  );
  const keyDer = new Uint8Array(key.export({ type: "pkcs8", format: "der" }));
  return { spiffeId, chainDer: new Uint8Array(Buffer.concat([leafDer, ...ca.chainTail])), keyDer, leafDer };
}

/** A test JWT signing authority of one trust domain. */
export interface TestJwtAuthority {
  readonly trustDomain: string;
  readonly kid: string;
  readonly privateKey: webcrypto.CryptoKey;
  /** The Workload API JWKS JSON bytes for this authority (no `use`, as SPIRE serves it). */
  readonly jwksBytes: Uint8Array;
}

/** Creates an ES256 JWT authority and its JWKS. */
export async function createTestJwtAuthority(trustDomain: string, kid = `${trustDomain}-key-1`): Promise<TestJwtAuthority> {
  const { privateKey, publicKey } = await generateKeyPair("ES256", { extractable: true });
  const jwk = await exportJWK(publicKey);
  const jwksBytes = new TextEncoder().encode(JSON.stringify({ keys: [{ ...jwk, kid, alg: "ES256" }] }));
  return { trustDomain, kid, privateKey, jwksBytes };
}

/** Signs a JWT-SVID for `spiffeId` with `authority`. */
export async function signTestJwtSvid(
  authority: TestJwtAuthority,
  spiffeId: string,
  audience: string | string[],
  ttlSeconds = 300,
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({})
    .setProtectedHeader({ alg: "ES256", kid: authority.kid, typ: "JWT" })
    .setSubject(spiffeId)
    .setAudience(audience)
    .setIssuedAt(now)
    .setExpirationTime(now + ttlSeconds)
    .sign(authority.privateKey);
}

/** One `X509SVID` entry of an X509SVIDResponse for a test SVID and its trust domain's CA(s). */
export function x509SvidEntry(
  svid: TestX509Svid,
  bundle: TestCa | readonly TestCa[],
  hint = "",
): MessageInitShape<typeof X509SVIDSchema> {
  const cas = Array.isArray(bundle) ? (bundle as readonly TestCa[]) : [bundle as TestCa];
  return {
    spiffeId: svid.spiffeId,
    x509Svid: svid.chainDer,
    x509SvidKey: svid.keyDer,
    bundle: concatCaDers(cas),
    hint,
  };
}

/** The Workload API bundle form of CA certificates: their DER, concatenated. */
export function concatCaDers(cas: readonly TestCa[]): Uint8Array {
  return new Uint8Array(Buffer.concat(cas.map((c) => c.der)));
}

/**
 * A queue of values delivered by callbacks (watch updates, errors) that a test
 * awaits one at a time, with a timeout instead of sleeps.
 */
export class AsyncQueue<T> {
  readonly #items: T[] = [];
  readonly #waiters: Array<(v: T) => void> = [];

  /** Adds a value; bind it as a callback: `(v) => queue.push(v)`. */
  push(value: T): void {
    const w = this.#waiters.shift();
    if (w !== undefined) w(value);
    else this.#items.push(value);
  }

  /** Values received and not yet taken. */
  get pending(): number {
    return this.#items.length;
  }

  /** The next value, or a rejection after `timeoutMs`. */
  next(timeoutMs = 10_000): Promise<T> {
    const item = this.#items.shift();
    if (item !== undefined) return Promise.resolve(item);
    return new Promise<T>((resolve, reject) => {
      const waiter = (v: T): void => {
        clearTimeout(timer);
        resolve(v);
      };
      const timer = setTimeout(() => {
        const i = this.#waiters.indexOf(waiter);
        if (i !== -1) this.#waiters.splice(i, 1);
        reject(new Error(`AsyncQueue: nothing arrived within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }
}
