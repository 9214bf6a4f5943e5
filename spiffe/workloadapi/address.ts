/**
 * Workload Endpoint socket addresses (Workload Endpoint §4, WEP-8..11, pitfall
 * A16). The address is an RFC 3986 URI:
 *
 * - `unix:` with no authority (an empty one, as in `unix:///tmp/a.sock`, is
 *   fine), an absolute path, and nothing else: `unix:///abs` and `unix:/abs`.
 *   go-spiffe lets `unix://host/path` through; Sigil follows the spec and
 *   rejects it.
 * - `tcp:` with an IP literal host and a port, and nothing else. `localhost` is
 *   not an IP literal and is rejected, as go-spiffe does.
 *
 * Parsing yields a structured address plus the grpc-js target string for it.
 */
import { isIPv4, isIPv6 } from "node:net";
import { SigilError } from "../errors.js";

/** The environment variable a workload reads its endpoint address from (WEP-8). */
export const SPIFFE_ENDPOINT_SOCKET = "SPIFFE_ENDPOINT_SOCKET";

/** A parsed Unix-domain-socket endpoint address. */
export interface UnixEndpointAddress {
  readonly kind: "unix";
  /** Absolute socket path, percent-decoded. */
  readonly path: string;
  /** grpc-js channel target, e.g. `unix:///run/spire/agent.sock`. */
  readonly grpcTarget: string;
}

/** A parsed TCP endpoint address. */
export interface TcpEndpointAddress {
  readonly kind: "tcp";
  /** The IP literal (IPv6 without brackets). */
  readonly host: string;
  readonly ipVersion: 4 | 6;
  readonly port: number;
  /** grpc-js channel target, e.g. `ipv4:127.0.0.1:8000` or `ipv6:[::1]:8000`. */
  readonly grpcTarget: string;
}

/** A Workload Endpoint address, made only by {@link parseEndpointAddress}. */
export type EndpointAddress = UnixEndpointAddress | TcpEndpointAddress;

// RFC 3986 Appendix B.
const URI_RE = /^(?:([^:/?#]+):)?(?:\/\/([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$/s;
const SCHEME_RE = /^[A-Za-z][A-Za-z0-9+.-]*$/;

function addrError(addr: string, problem: string): SigilError {
  const shown = addr.length > 120 ? `${addr.slice(0, 117)}...` : addr;
  return new SigilError("ERR_ENDPOINT_ADDRESS_INVALID", `workloadapi: endpoint address ${JSON.stringify(shown)}: ${problem}`);
}

function percentDecode(addr: string, s: string, what: string): string {
  try {
    return decodeURIComponent(s);
  } catch (e) {
    throw new SigilError(
      "ERR_ENDPOINT_ADDRESS_INVALID",
      `workloadapi: endpoint address ${JSON.stringify(addr)}: ${what} has invalid percent-encoding`,
      { cause: e },
    );
  }
}

/**
 * Parses a Workload Endpoint address (`unix:///path` or `tcp://ip:port`).
 *
 * @example
 * ```ts
 * parseEndpointAddress("unix:///run/sigil/agent.sock").grpcTarget; // "unix:///run/sigil/agent.sock"
 * parseEndpointAddress("tcp://127.0.0.1:8081").grpcTarget;         // "ipv4:127.0.0.1:8081"
 * ```
 * @throws SigilError `ERR_ENDPOINT_ADDRESS_INVALID`, naming the offending part.
 */
export function parseEndpointAddress(addr: string): EndpointAddress {
  if (typeof addr !== "string" || addr.length === 0) {
    throw new SigilError("ERR_ENDPOINT_ADDRESS_INVALID", "workloadapi: endpoint address is empty");
  }
  const m = URI_RE.exec(addr);
  const rawScheme = m?.[1];
  if (m === null || rawScheme === undefined) {
    throw addrError(addr, "not a URI with a scheme; expected unix:///path or tcp://ip:port");
  }
  if (!SCHEME_RE.test(rawScheme)) throw addrError(addr, `scheme ${JSON.stringify(rawScheme)} is not a valid URI scheme`);
  const authority = m[2];
  const path = m[3] ?? "";
  const query = m[4];
  const fragment = m[5];
  // Schemes are case-insensitive (RFC 3986 §3.1).
  const scheme = rawScheme.toLowerCase();
  if (scheme !== "unix" && scheme !== "tcp") {
    throw addrError(addr, `scheme must be "unix" or "tcp", got ${JSON.stringify(rawScheme)}`);
  }
  if (query !== undefined) throw addrError(addr, `a query is not allowed in a ${scheme} address`);
  if (fragment !== undefined) throw addrError(addr, `a fragment is not allowed in a ${scheme} address`);
  return scheme === "unix" ? parseUnix(addr, authority, path) : parseTcp(addr, authority, path);
}

/** Longest Unix socket path in bytes: `sun_path` holds 108, the terminating NUL included. */
export const MAX_UNIX_SOCKET_PATH_BYTES = 107;

/**
 * Why `socketPath` cannot name a Unix socket as given (`is 120 bytes long; …`),
 * or undefined. Node binds and connects to a longer path silently truncated:
 * a prefix of it, possibly in a directory above the intended one (a sticky
 * /tmp, where anyone may create that name).
 */
export function unixSocketPathLengthProblem(socketPath: string): string | undefined {
  const bytes = Buffer.byteLength(socketPath);
  return bytes > MAX_UNIX_SOCKET_PATH_BYTES ? `is ${bytes} bytes long; a Unix socket path holds at most ${MAX_UNIX_SOCKET_PATH_BYTES}` : undefined;
}

function parseUnix(addr: string, authority: string | undefined, rawPath: string): UnixEndpointAddress {
  if (authority !== undefined && authority !== "") {
    throw addrError(addr, `a unix address must not have an authority (got ${JSON.stringify(authority)}); use unix:///absolute/path`);
  }
  if (rawPath === "") throw addrError(addr, "a unix address needs the socket path");
  if (!rawPath.startsWith("/")) {
    throw addrError(addr, "the socket path must be absolute (unix:///absolute/path or unix:/absolute/path)");
  }
  const path = percentDecode(addr, rawPath, "the socket path");
  if (path === "/" || path.endsWith("/")) throw addrError(addr, "the socket path names a directory, not a socket");
  if (path.includes("\0")) throw addrError(addr, "the socket path contains a NUL byte");
  const tooLong = unixSocketPathLengthProblem(path);
  if (tooLong !== undefined) throw addrError(addr, `the socket path ${tooLong}`);
  return { kind: "unix", path, grpcTarget: `unix://${path}` };
}

function parseTcp(addr: string, authority: string | undefined, path: string): TcpEndpointAddress {
  if (authority === undefined || authority === "") {
    throw addrError(addr, "a tcp address needs a host and port (tcp://ip:port)");
  }
  if (path !== "") throw addrError(addr, `a path is not allowed in a tcp address (got ${JSON.stringify(path)})`);
  if (authority.includes("@")) throw addrError(addr, "userinfo is not allowed in a tcp address");
  let host: string;
  let portText: string | undefined;
  if (authority.startsWith("[")) {
    const close = authority.indexOf("]");
    if (close === -1) throw addrError(addr, "unterminated IPv6 literal");
    host = authority.slice(1, close);
    const rest = authority.slice(close + 1);
    if (rest !== "" && !rest.startsWith(":")) throw addrError(addr, "unexpected characters after the IPv6 literal");
    portText = rest === "" ? undefined : rest.slice(1);
    if (!isIPv6(host) || host.includes("%")) throw addrError(addr, `host ${JSON.stringify(host)} is not an IPv6 literal`);
  } else {
    const colon = authority.lastIndexOf(":");
    host = colon === -1 ? authority : authority.slice(0, colon);
    portText = colon === -1 ? undefined : authority.slice(colon + 1);
    if (!isIPv4(host)) {
      throw addrError(addr, `host ${JSON.stringify(host)} is not an IP literal (host names such as localhost are not allowed)`);
    }
  }
  if (portText === undefined || portText === "") throw addrError(addr, "a tcp address needs a port");
  if (!/^[0-9]{1,5}$/.test(portText)) throw addrError(addr, `port ${JSON.stringify(portText)} is not a decimal number`);
  const port = Number(portText);
  if (port < 1 || port > 65535) throw addrError(addr, `port ${port} is out of range 1-65535`);
  const ipVersion = isIPv4(host) ? 4 : 6;
  const grpcTarget = ipVersion === 4 ? `ipv4:${host}:${port}` : `ipv6:[${host}]:${port}`;
  return { kind: "tcp", host, ipVersion, port, grpcTarget };
}

/**
 * The endpoint address to use: the explicit one if given, otherwise
 * `SPIFFE_ENDPOINT_SOCKET` from `env` (WEP-8).
 *
 * @throws SigilError `ERR_ENDPOINT_ADDRESS_INVALID` when neither is set or the address is malformed.
 */
export function resolveEndpointAddress(
  explicit: string | undefined,
  env: Readonly<Record<string, string | undefined>> = process.env,
): EndpointAddress {
  if (explicit !== undefined) return parseEndpointAddress(explicit);
  const fromEnv = env[SPIFFE_ENDPOINT_SOCKET];
  if (fromEnv === undefined || fromEnv === "") {
    throw new SigilError(
      "ERR_ENDPOINT_ADDRESS_INVALID",
      `workloadapi: no endpoint address: pass one explicitly or set ${SPIFFE_ENDPOINT_SOCKET}`,
    );
  }
  return parseEndpointAddress(fromEnv);
}
