/**
 * Fetching a SPIFFE bundle from a federation bundle endpoint (SPIFFE
 * Federation §5), for both profiles:
 *
 * - `https_web`: Web PKI, RFC 6125 name checks against the URL host, trusted
 *   CAs given or Node's defaults (FED-17).
 * - `https_spiffe`: no host-name check; the server's chain is verified as an
 *   X509-SVID against the bundle held for the endpoint's trust domain, and its
 *   SPIFFE ID must equal the configured one exactly (FED-22). The check runs on
 *   `secureConnect`, before the request is written: nothing is sent to an
 *   endpoint that has not passed it.
 *
 * Redirects are followed with the same checks on every hop, only to `https`
 * (FED-16, FED-19); callers start every poll at the configured URL. The
 * body is read up to a byte cap. No fallback between profiles (FED-28). No
 * logging: the caller logs each fetch (FED-29).
 */
import * as http from "node:http";
import { isIP } from "node:net";
import * as tls from "node:tls";
import { parseSpiffeBundle, type SpiffeBundle } from "../bundle/spiffe-bundle.js";
import type { X509Bundle } from "../bundle/x509-bundle.js";
import { SigilError } from "../errors.js";
import { SpiffeId, TrustDomain } from "../id.js";
import { encodePemCertificates } from "../pem.js";
import { authorizeAny } from "../tls/authorizer.js";
import { peerChainOf, verifyPeerSvid } from "../tls/verify-peer.js";
import { StaticX509BundleSource } from "../x509/static-bundle-source.js";

/** How the endpoint's server is authenticated (SPIFFE Federation §5.2). */
export type EndpointProfile =
  | {
      readonly kind: "https_web";
      /** DER certificates or PEM text; default: Node's default CAs (including NODE_EXTRA_CA_CERTS). */
      readonly trustedCas?: readonly Uint8Array[] | string;
    }
  | {
      readonly kind: "https_spiffe";
      /** The SPIFFE ID the endpoint's server must present, exactly. */
      readonly endpointSpiffeId: SpiffeId;
      /** The latest bundle held for the endpoint's trust domain (FED-20, FED-23, FED-24). */
      readonly bundle: X509Bundle;
    };

/** Options of {@link fetchBundle}. */
export interface FetchBundleOptions {
  /** `https` only, no userinfo, no fragment (FED-11). */
  readonly url: string;
  /** The trust domain the bundle is for; never inferred from the URL (FED-9). */
  readonly trustDomain: TrustDomain;
  readonly profile: EndpointProfile;
  /** For the whole fetch, redirects included; default 10 000. */
  readonly timeoutMs?: number;
  /** Largest body accepted; default 1 MiB. A larger one is refused without reading it all. */
  readonly maxBytes?: number;
  /** Default 3. Each hop is checked again: https, the same profile's TLS checks (FED-16, FED-19). */
  readonly maxRedirects?: number;
  readonly signal?: AbortSignal;
}

/** A fetched and parsed bundle. */
export interface FetchedBundle {
  /** Parsed for the configured trust domain. */
  readonly bundle: SpiffeBundle;
  /** The body as received (UTF-8). */
  readonly document: string;
  /** What the parser skipped, and remarks such as an unexpected Content-Type. */
  readonly warnings: readonly string[];
  /** The URL the bundle came from, after redirects. Never persist it (FED-19). */
  readonly finalUrl: string;
}

/** Default of {@link FetchBundleOptions.timeoutMs}. */
export const DEFAULT_FETCH_TIMEOUT_MS = 10_000;
/** Default of {@link FetchBundleOptions.maxBytes}: 1 MiB. */
export const DEFAULT_MAX_BUNDLE_BYTES = 1024 * 1024;
/** Default of {@link FetchBundleOptions.maxRedirects}. */
export const DEFAULT_MAX_REDIRECTS = 3;

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_URL_LENGTH = 8192;

function badArgument(message: string): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `bundle endpoint: ${message}`);
}

/**
 * Checks a bundle endpoint URL: absolute, `https`, a host, no userinfo, no
 * fragment (FED-11).
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming what is wrong.
 */
export function validateEndpointUrl(url: string): URL {
  if (typeof url !== "string" || url.length === 0) throw badArgument("url must be a non-empty string");
  if (url.length > MAX_URL_LENGTH) throw badArgument(`url is longer than ${MAX_URL_LENGTH} characters`);
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw badArgument(`url ${JSON.stringify(url)} is not a valid absolute URL`);
  }
  // The URL parser drops tabs and line breaks and trims spaces, so the URL fetched would not be the one shown.
  if (/[\u0000-\u0020\u007f]/.test(url)) throw badArgument(`url ${JSON.stringify(url.slice(0, 200))} must not contain whitespace or control characters`);
  if (u.protocol !== "https:") throw badArgument(`url ${JSON.stringify(url)} must use https, not ${u.protocol.replace(/:$/, "")}`);
  if (u.username !== "" || u.password !== "") throw badArgument(`url ${JSON.stringify(redact(u))} must not contain userinfo`);
  if (u.hash !== "" || url.includes("#")) throw badArgument(`url ${JSON.stringify(url)} must not contain a fragment`);
  if (u.hostname === "") throw badArgument(`url ${JSON.stringify(url)} has no host`);
  return u;
}

function redact(u: URL): string {
  const copy = new URL(u.href);
  copy.username = "";
  copy.password = "";
  return copy.href;
}

function positiveInt(v: number | undefined, dflt: number, name: string, min: number): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < min) throw badArgument(`${name} must be an integer >= ${min}, got ${String(v)}`);
  return v;
}

function checkProfile(profile: EndpointProfile): void {
  if (profile === null || typeof profile !== "object") throw badArgument("profile is missing");
  if (profile.kind === "https_web") {
    const cas = profile.trustedCas;
    if (cas !== undefined && typeof cas !== "string" && !(Array.isArray(cas) && cas.every((c) => c instanceof Uint8Array))) {
      throw badArgument("profile.trustedCas must be PEM text or a list of DER certificates");
    }
    if (Array.isArray(cas) && cas.length === 0) throw badArgument("profile.trustedCas is an empty list");
    return;
  }
  if (profile.kind === "https_spiffe") {
    if (!(profile.endpointSpiffeId instanceof SpiffeId)) throw badArgument("profile.endpointSpiffeId must be a parsed SpiffeId");
    if (profile.bundle === undefined || profile.bundle === null || !(profile.bundle.trustDomain instanceof TrustDomain)) {
      throw badArgument("profile.bundle must be the X.509 bundle of the endpoint's trust domain");
    }
    if (!profile.bundle.trustDomain.equals(profile.endpointSpiffeId.trustDomain)) {
      throw badArgument(
        `profile.bundle is for ${profile.bundle.trustDomain.name} but profile.endpointSpiffeId ${profile.endpointSpiffeId.toString()} is in ${profile.endpointSpiffeId.trustDomain.name}`,
      );
    }
    return;
  }
  throw badArgument(`profile.kind must be "https_web" or "https_spiffe", got ${JSON.stringify((profile as { kind?: unknown }).kind)}`);
}

interface Ctx {
  readonly profile: EndpointProfile;
  readonly signal: AbortSignal;
  readonly maxBytes: number;
  readonly timeoutMs: number;
}

/**
 * Fetches and parses the bundle at `o.url` for `o.trustDomain`.
 *
 * @example
 * ```ts
 * const f = await fetchBundle({
 *   url: "https://b.example/bundle",
 *   trustDomain: parseTrustDomain("b.example"),
 *   profile: { kind: "https_spiffe", endpointSpiffeId: parseSpiffeId("spiffe://b.example/spire/server"), bundle: held },
 * });
 * log.info({ td: "b.example", seq: f.bundle.sequenceNumber }, "fetched bundle");
 * ```
 * @throws SigilError `ERR_INVALID_ARGUMENT` (bad options), `ERR_UNAVAILABLE`
 *   (network, TLS, HTTP status, redirects, timeout, abort), `ERR_BUNDLE_INVALID`
 *   (body too large, not UTF-8, not a bundle); messages name the URL.
 */
export async function fetchBundle(o: FetchBundleOptions): Promise<FetchedBundle> {
  if (o === null || typeof o !== "object") throw badArgument("options are missing");
  let url = validateEndpointUrl(o.url);
  if (!(o.trustDomain instanceof TrustDomain)) throw badArgument("trustDomain must be a parsed TrustDomain");
  checkProfile(o.profile);
  const timeoutMs = positiveInt(o.timeoutMs, DEFAULT_FETCH_TIMEOUT_MS, "timeoutMs", 1);
  const maxBytes = positiveInt(o.maxBytes, DEFAULT_MAX_BUNDLE_BYTES, "maxBytes", 1);
  const maxRedirects = positiveInt(o.maxRedirects, DEFAULT_MAX_REDIRECTS, "maxRedirects", 0);
  const timeout = AbortSignal.timeout(timeoutMs);
  const signal = o.signal === undefined ? timeout : AbortSignal.any([timeout, o.signal]);
  const ctx: Ctx = { profile: o.profile, signal, maxBytes, timeoutMs };

  for (let hop = 0; ; hop++) {
    const res = await get(url, ctx);
    if (res.kind === "redirect") {
      if (hop >= maxRedirects) throw unavailable(url, `more than ${maxRedirects} redirects`);
      let next: URL;
      try {
        next = new URL(res.location, url);
      } catch {
        throw unavailable(url, `redirect to an invalid location ${JSON.stringify(res.location.slice(0, 200))}`);
      }
      try {
        next = validateEndpointUrl(next.href);
      } catch (e) {
        throw unavailable(url, `redirect to ${JSON.stringify(redact(next))} refused: ${(e as SigilError).message.replace(/^bundle endpoint: /, "")}`, e);
      }
      url = next;
      continue;
    }
    return parseBody(url, res, o.trustDomain);
  }
}

function unavailable(url: URL, reason: string, cause?: unknown): SigilError {
  return new SigilError("ERR_UNAVAILABLE", `bundle endpoint ${url.href}: ${reason}`, cause === undefined ? undefined : { cause });
}

function invalidBody(url: URL, reason: string, cause?: unknown): SigilError {
  return new SigilError("ERR_BUNDLE_INVALID", `bundle endpoint ${url.href}: ${reason}`, cause === undefined ? undefined : { cause });
}

type Response = { kind: "redirect"; location: string } | { kind: "body"; body: Buffer; contentType: string | undefined };

function parseBody(url: URL, res: Response & { kind: "body" }, td: TrustDomain): FetchedBundle {
  let document: string;
  try {
    document = new TextDecoder("utf-8", { fatal: true }).decode(res.body);
  } catch (e) {
    throw invalidBody(url, "the body is not UTF-8", e);
  }
  const warnings: string[] = [];
  const type = res.contentType?.split(";")[0]?.trim().toLowerCase();
  if (type !== "application/json" && type !== "application/jwk-set+json") {
    warnings.push(`bundle endpoint ${url.href}: Content-Type ${type === undefined || type === "" ? "missing" : JSON.stringify(type)}, expected application/json; parsed anyway`);
  }
  try {
    const parsed = parseSpiffeBundle(document, td);
    warnings.push(...parsed.warnings);
    return { bundle: parsed.bundle, document, warnings, finalUrl: url.href };
  } catch (e) {
    throw invalidBody(url, (e as Error).message, e);
  }
}

function abortReason(ctx: Ctx, url: URL): SigilError {
  const r: unknown = ctx.signal.reason;
  if (r instanceof DOMException && r.name === "TimeoutError") return unavailable(url, `timed out after ${ctx.timeoutMs} ms`, r);
  return unavailable(url, "aborted", r);
}

function hostOf(url: URL): string {
  // IPv6 literals come bracketed in URL.hostname.
  return url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
}

function caOf(trusted: readonly Uint8Array[] | string | undefined): string | string[] | undefined {
  if (trusted === undefined || typeof trusted === "string") return trusted;
  return trusted.map((d) => encodePemCertificates([d]));
}

/** A TLS connection that has passed the profile's checks; nothing has been written to it. */
function connect(url: URL, ctx: Ctx): Promise<tls.TLSSocket> {
  const host = hostOf(url);
  const port = url.port === "" ? 443 : Number(url.port);
  const sni = isIP(host) === 0 ? { servername: host } : {};
  const profile = ctx.profile;
  return new Promise((resolve, reject) => {
    let socket: tls.TLSSocket;
    if (profile.kind === "https_web") {
      const ca = caOf(profile.trustedCas);
      // Node's defaults: chain to a trusted CA, RFC 6125 check of the host against SAN (FED-17).
      socket = tls.connect({ host, port, ...sni, minVersion: "TLSv1.2", rejectUnauthorized: true, ...(ca === undefined ? {} : { ca }) });
    } else {
      // No host-name check and no Web PKI: the SVID check below decides (FED-22).
      socket = tls.connect({ host, port, ...sni, minVersion: "TLSv1.2", rejectUnauthorized: false });
    }
    const onAbort = (): void => {
      socket.destroy();
      reject(abortReason(ctx, url));
    };
    if (ctx.signal.aborted) return onAbort();
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    const done = (): void => ctx.signal.removeEventListener("abort", onAbort);
    socket.once("error", (e) => {
      done();
      reject(unavailable(url, `TLS: ${e.message}`, e));
    });
    socket.once("secureConnect", () => {
      done();
      if (profile.kind === "https_spiffe") {
        try {
          verifyEndpointSvid(socket, profile);
        } catch (e) {
          socket.destroy();
          reject(unavailable(url, `TLS: ${(e as Error).message}`, e));
          return;
        }
      }
      socket.removeAllListeners("error");
      resolve(socket);
    });
  });
}

function verifyEndpointSvid(socket: tls.TLSSocket, profile: EndpointProfile & { kind: "https_spiffe" }): void {
  const chain = peerChainOf(socket);
  if (chain.length === 0) throw new SigilError("ERR_X509_CHAIN_INVALID", "server presented no certificate");
  const verified = verifyPeerSvid(chain, new StaticX509BundleSource([profile.bundle]), authorizeAny());
  if (!verified.id.equals(profile.endpointSpiffeId)) {
    throw new SigilError("ERR_PERMISSION_DENIED", `server presented ${verified.id.toString()}, want ${profile.endpointSpiffeId.toString()}`);
  }
}

async function get(url: URL, ctx: Ctx): Promise<Response> {
  const socket = await connect(url, ctx);
  return new Promise<Response>((resolve, reject) => {
    let settled = false;
    const finish = (err: SigilError | undefined, value?: Response): void => {
      if (settled) return;
      settled = true;
      ctx.signal.removeEventListener("abort", onAbort);
      socket.destroy();
      if (err !== undefined) reject(err);
      else resolve(value as Response);
    };
    const onAbort = (): void => finish(abortReason(ctx, url));
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    const req = http.request({
      method: "GET",
      path: `${url.pathname}${url.search}`,
      host: hostOf(url),
      port: url.port === "" ? 443 : Number(url.port),
      headers: { host: url.host, accept: "application/json", connection: "close" },
      // The verified socket; no agent, so it is never pooled or reused.
      createConnection: () => socket,
    });
    req.on("error", (e) => finish(unavailable(url, `HTTP: ${e.message}`, e)));
    req.on("response", (res) => {
      const status = res.statusCode ?? 0;
      if (REDIRECTS.has(status)) {
        const location = res.headers.location;
        res.resume();
        if (location === undefined || location === "") finish(unavailable(url, `HTTP ${status} redirect without a Location`));
        else finish(undefined, { kind: "redirect", location });
        return;
      }
      if (status < 200 || status > 299) {
        res.resume();
        finish(unavailable(url, `HTTP status ${status}${res.statusMessage ? ` ${res.statusMessage}` : ""}`));
        return;
      }
      const declared = Number(res.headers["content-length"]);
      if (Number.isFinite(declared) && declared > ctx.maxBytes) {
        finish(invalidBody(url, `the body is ${declared} bytes, more than the ${ctx.maxBytes} allowed`));
        return;
      }
      const parts: Buffer[] = [];
      let size = 0;
      res.on("data", (chunk: Buffer) => {
        size += chunk.length;
        if (size > ctx.maxBytes) {
          finish(invalidBody(url, `the body is larger than the ${ctx.maxBytes} bytes allowed`));
          return;
        }
        parts.push(chunk);
      });
      res.on("error", (e) => finish(unavailable(url, `HTTP: ${e.message}`, e)));
      res.on("aborted", () => finish(unavailable(url, "HTTP: the response was cut short")));
      res.on("end", () => {
        if (!res.complete) finish(unavailable(url, "HTTP: the response was cut short"));
        else finish(undefined, { kind: "body", body: Buffer.concat(parts), contentType: res.headers["content-type"] });
      });
    });
    req.end();
  });
}
