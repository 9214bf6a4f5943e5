/**
 * The kubelet's pod list (`GET /pods`), as the `k8s` workload attestor reads
 * it: on the authenticated port with the agent's service-account token as
 * bearer and the kubelet's serving certificate checked against the cluster CA,
 * or on the read-only port when configured. The list is kept for a short time
 * and shared by concurrent callers, so a burst of attestations costs one
 * request.
 *
 * A plain `node:https` request, not `@kubernetes/client-node`: that library
 * speaks to the API server and has no client for the kubelet's own API. Only
 * its `V1Pod`/`V1PodList` types are used, for the JSON.
 */
import { statSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import { checkServerIdentity, type PeerCertificate } from "node:tls";
import type { V1Pod, V1PodList } from "@kubernetes/client-node";
import { readSmallFileSync } from "../../../common/small-file.js";
import { SigilError } from "../../../spiffe/errors.js";

/** How the attestor reaches the kubelet. */
export interface KubeletClientOptions {
  /** Host to connect to (an address or a name). */
  readonly host: string;
  /** `https` on the secure port with a bearer token; `http` on the read-only port, unauthenticated. */
  readonly scheme: "https" | "http";
  readonly port: number;
  /** File holding the bearer token (https only); re-read on every request, since the kubelet rotates projected tokens. */
  readonly tokenPath?: string;
  /** PEM file of the CAs the kubelet's serving certificate must chain to; reloaded when the file changes. */
  readonly caPath?: string;
  /** Accept any serving certificate (https only). */
  readonly skipVerification?: boolean;
  /** The name the serving certificate must carry: the node name when known, else `host`. */
  readonly serverName?: string;
  /** Only pods whose `spec.nodeName` is this are listed (when set). */
  readonly nodeName?: string;
  /** How long a fetched list is reused, in ms. */
  readonly cacheTtlMs: number;
  /** Milliseconds clock; default `performance.now`-based monotonic time. */
  readonly now?: () => number;
  /** Longest one request may take, from sending it to the end of the answer; default {@link REQUEST_TIMEOUT_MS}. */
  readonly requestTimeoutMs?: number;
}

/** One fetched pod list, indexed by pod UID. */
export interface PodListSnapshot {
  /** Pods by `metadata.uid` (on the node, when the client has a node name). */
  readonly byUid: ReadonlyMap<string, V1Pod>;
  /** UIDs the list gives more than one pod for (on the node): no pod is believed for them. */
  readonly duplicateUids: ReadonlySet<string>;
  /** When the request for it was sent (the client's clock). */
  readonly requestedAt: number;
}

/** The kubelet's pod list, cached. */
export interface KubeletClient {
  /** The URL the client requests (for messages and docs). */
  readonly url: string;
  /**
   * The pod list. Answers from the cache while it is younger than the TTL and
   * was requested at or after `notRequestedBefore`; otherwise from a request
   * already in flight that qualifies, else a new request.
   *
   * @throws SigilError `ERR_UNAVAILABLE` naming the URL and the problem
   *   (unreachable, refused certificate, an HTTP error status, a body that is not a PodList).
   */
  pods(options?: { readonly notRequestedBefore?: number; readonly signal?: AbortSignal }): Promise<PodListSnapshot>;
  /** Closes idle kept-alive connections. */
  close(): void;
}

/** Largest pod list read, in bytes: 110 pods are about 1 MB; more is not a kubelet. */
const MAX_BODY_BYTES = 64 << 20;
/** One request's limit, from sending it to the end of the answer, apart from the caller's abort signal. */
export const REQUEST_TIMEOUT_MS = 10_000;
/** Largest token file read: a projected service account token is a JWT of a few KiB. */
const MAX_TOKEN_BYTES = 64 << 10;
/** Largest CA bundle read. */
const MAX_CA_BYTES = 4 << 20;

function kubeletError(url: string, problem: string, cause?: unknown): SigilError {
  return new SigilError("ERR_UNAVAILABLE", `workloadattestor(k8s): kubelet ${url}: ${problem}`, cause === undefined ? undefined : { cause });
}

/** Identity of a file's current content, to notice a rotated CA bundle without re-reading it on every call. */
function fileVersion(file: string): string {
  const st = statSync(file, { bigint: true });
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** Creates a {@link KubeletClient}. Nothing is read or connected until the first {@link KubeletClient.pods}. */
export function createKubeletClient(options: KubeletClientOptions): KubeletClient {
  const { scheme, port, cacheTtlMs } = options;
  const hostInUrl = options.host.includes(":") ? `[${options.host}]` : options.host;
  const url = `${scheme}://${hostInUrl}:${port}/pods`;
  const now = options.now ?? (() => performance.now());
  const serverName = options.serverName ?? options.host;
  const requestTimeoutMs = options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
  let agent: https.Agent | http.Agent | undefined;
  let caVersion = "";
  let cached: PodListSnapshot | undefined;
  let inFlight: Promise<PodListSnapshot> | undefined;
  let inFlightAt = 0;

  /** The connection pool, rebuilt when the CA file changed. */
  function currentAgent(): https.Agent | http.Agent {
    if (scheme === "http") return (agent ??= new http.Agent({ keepAlive: true, maxSockets: 4 }));
    if (options.skipVerification === true) {
      return (agent ??= new https.Agent({ keepAlive: true, maxSockets: 4, rejectUnauthorized: false }));
    }
    const caPath = options.caPath;
    if (caPath === undefined) throw kubeletError(url, "no kubelet_ca_path to verify the kubelet's certificate (set it, or skip_kubelet_verification)");
    let version: string;
    let ca: Buffer;
    try {
      version = fileVersion(caPath);
      if (agent !== undefined && version === caVersion) return agent;
      ca = readSmallFileSync(caPath, MAX_CA_BYTES);
    } catch (e) {
      throw kubeletError(url, `cannot read kubelet_ca_path ${caPath}: ${(e as Error).message}`, e);
    }
    agent?.destroy();
    caVersion = version;
    agent = new https.Agent({
      keepAlive: true,
      maxSockets: 4,
      ca,
      rejectUnauthorized: true,
      // The certificate must name the node (or the configured host), whatever address was dialled.
      checkServerIdentity: (_host: string, cert: PeerCertificate) => checkServerIdentity(serverName, cert),
      ...(/^[0-9.]+$|:/.test(serverName) ? {} : { servername: serverName }),
    });
    return agent;
  }

  function readToken(): string {
    const tokenPath = options.tokenPath;
    if (tokenPath === undefined) throw kubeletError(url, "no token_path for the secure port");
    let token: string;
    try {
      token = readSmallFileSync(tokenPath, MAX_TOKEN_BYTES).toString("utf8").trim();
    } catch (e) {
      throw kubeletError(url, `cannot read token_path ${tokenPath}: ${(e as Error).message}`, e);
    }
    if (token === "") throw kubeletError(url, `token_path ${tokenPath} is empty`);
    return token;
  }

  function fetchPods(signal: AbortSignal | undefined): Promise<PodListSnapshot> {
    const requestedAt = now();
    const headers: Record<string, string> = { accept: "application/json" };
    let pool: https.Agent | http.Agent;
    try {
      if (scheme === "https") headers.authorization = `Bearer ${readToken()}`;
      pool = currentAgent();
    } catch (e) {
      return Promise.reject(e);
    }
    const request = scheme === "https" ? https.request : http.request;
    return new Promise<PodListSnapshot>((resolve, reject) => {
      // The whole request, not only each silence, is bounded: an answer that trickles
      // in would otherwise hold this request, which every caller shares, for ever.
      let settled = false;
      const settle = (f: () => void): void => {
        if (settled) return;
        settled = true;
        clearTimeout(deadline);
        f();
      };
      const fail = (problem: string, cause?: unknown): void => settle(() => reject(kubeletError(url, problem, cause)));
      let req: http.ClientRequest | undefined;
      const deadline = setTimeout(() => {
        fail(`no complete answer within ${requestTimeoutMs} ms`);
        req?.destroy();
      }, requestTimeoutMs);
      try {
        req = request(url, { method: "GET", headers, agent: pool, timeout: requestTimeoutMs, ...(signal === undefined ? {} : { signal }) }, (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on("data", (c: Buffer) => {
            size += c.length;
            if (size > MAX_BODY_BYTES) {
              fail(`answer larger than ${MAX_BODY_BYTES} bytes`);
              res.destroy();
            } else chunks.push(c);
          });
          res.on("error", (e) => fail(e.message, e));
          res.on("end", () => {
            if (settled) return;
            const body = Buffer.concat(chunks).toString("utf8");
            const status = res.statusCode ?? 0;
            if (status !== 200) {
              const hint = status === 401 ? " (the token was not accepted)" : status === 403 ? " (the agent's service account lacks get on nodes/proxy or nodes/pods)" : "";
              return fail(`HTTP ${status}${hint}: ${body.slice(0, 200)}`);
            }
            try {
              const snap: PodListSnapshot = { ...indexPods(parsePodList(body), options.nodeName), requestedAt };
              settle(() => resolve(snap));
            } catch (e) {
              fail((e as Error).message, e);
            }
          });
        });
      } catch (e) {
        // Thrown at once, e.g. a token with a character no header may carry.
        return fail((e as Error).message, e);
      }
      const r = req;
      r.on("timeout", () => r.destroy(new Error(`no answer within ${requestTimeoutMs} ms`)));
      r.on("error", (e) => {
        const code = (e as NodeJS.ErrnoException).code;
        const problem =
          code === "ECONNREFUSED"
            ? `cannot connect (${e.message}); is the kubelet running and the port right?`
            : /certificate|self.signed|altnames|unable to (?:get|verify)/i.test(e.message)
              ? `the kubelet's serving certificate is not trusted: ${e.message} (check kubelet_ca_path and the node name, or set skip_kubelet_verification)`
              : e.message;
        fail(problem, e);
      });
      r.end();
    });
  }

  return {
    url,
    pods({ notRequestedBefore = -Infinity, signal } = {}) {
      const t = now();
      if (cached !== undefined && cached.requestedAt >= notRequestedBefore && t - cached.requestedAt < cacheTtlMs) return Promise.resolve(cached);
      if (inFlight !== undefined && inFlightAt >= notRequestedBefore) return signal === undefined ? inFlight : abortable(inFlight, signal);
      // Shared by concurrent callers, so one caller's abort signal must not cancel it.
      const p = fetchPods(undefined);
      inFlight = p;
      inFlightAt = t;
      p.then(
        (snap) => {
          if (cached === undefined || snap.requestedAt >= cached.requestedAt) cached = snap;
        },
        () => undefined,
      ).finally(() => {
        if (inFlight === p) inFlight = undefined;
      });
      return signal === undefined ? p : abortable(p, signal);
    },
    close() {
      agent?.destroy();
      agent = undefined;
    },
  };
}

/** `p`, or a rejection as soon as `signal` aborts. */
function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** Parses a PodList body; throws on anything else. */
export function parsePodList(body: string): V1Pod[] {
  let doc: unknown;
  try {
    doc = JSON.parse(body);
  } catch {
    throw new Error("the answer is not JSON");
  }
  const list = doc as Partial<V1PodList> | null;
  if (list === null || typeof list !== "object" || !Array.isArray(list.items)) throw new Error("the answer is not a PodList (no items array)");
  if (list.kind !== undefined && list.kind !== "PodList") throw new Error(`the answer is a ${String(list.kind)}, not a PodList`);
  return list.items;
}

function indexPods(pods: readonly V1Pod[], nodeName: string | undefined): { byUid: Map<string, V1Pod>; duplicateUids: Set<string> } {
  const byUid = new Map<string, V1Pod>();
  const duplicateUids = new Set<string>();
  for (const pod of pods) {
    const uid = pod?.metadata?.uid;
    if (typeof uid !== "string" || uid === "") continue;
    if (nodeName !== undefined && pod.spec?.nodeName !== nodeName) continue;
    // Two pods with one UID: a broken or lying kubelet. Believing either could give the caller the other's identity.
    if (byUid.has(uid)) duplicateUids.add(uid);
    byUid.set(uid, pod);
  }
  for (const uid of duplicateUids) byUid.delete(uid);
  return { byUid, duplicateUids };
}
