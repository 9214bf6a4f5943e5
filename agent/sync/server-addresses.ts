/**
 * The servers an agent talks to: `server_addresses` (`host:port` each), or
 * `server_address` and `server_port`. A host name that resolves to several
 * addresses stands for several servers: every A and AAAA record becomes one
 * (a DNS name in front of a cluster of servers), so the agent can spread
 * across them and fail over without a load balancer. Names that resolve to
 * one address are kept as names (gRPC resolves them again on reconnect).
 */
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { SigilError } from "../../spiffe/errors.js";

/** A `host:port` split; IPv6 literals are in brackets (`[::1]:8081`). */
export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/**
 * Parses `host:port` (`[v6]:port` for IPv6 literals).
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming `what`
 */
export function parseHostPort(value: string, what: string): HostPort {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:\s[\]]+)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 1 || port > 65535) throw new SigilError("ERR_INVALID_ARGUMENT", `${what}: ${JSON.stringify(value)} is not host:port (a port 1-65535; IPv6 addresses in brackets)`);
  const host = (m[1] ?? m[2]) as string;
  if (m[1] !== undefined && isIP(host) !== 6) throw new SigilError("ERR_INVALID_ARGUMENT", `${what}: ${JSON.stringify(value)}: ${host} in brackets is not an IPv6 address`);
  return { host, port };
}

/** `host:port` for a gRPC target, IPv6 in brackets. */
export function formatHostPort(a: HostPort): string {
  return isIP(a.host) === 6 ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** Resolves a host name to every address it has (A and AAAA). */
export type HostResolver = (host: string) => Promise<readonly string[]>;

/** The system resolver (`getaddrinfo`, as the rest of the agent resolves names). */
export const systemResolver: HostResolver = async (host) => (await lookup(host, { all: true, verbatim: true })).map((r) => r.address);

/**
 * The agent API targets for `servers`: IP literals as they are; a name
 * resolving to several addresses becomes one target per address; a name
 * resolving to one (or failing to resolve now) is kept as the name. Duplicates
 * are dropped, order kept.
 */
export async function resolveServerTargets(servers: readonly HostPort[], resolve: HostResolver = systemResolver): Promise<string[]> {
  const out: string[] = [];
  for (const s of servers) {
    if (isIP(s.host) !== 0) {
      out.push(formatHostPort(s));
      continue;
    }
    let addrs: readonly string[] = [];
    try {
      addrs = [...new Set(await resolve(s.host))];
    } catch {
      // Not resolvable yet: gRPC will try the name itself and the failover moves on.
    }
    if (addrs.length <= 1) out.push(formatHostPort(s));
    else for (const a of addrs) out.push(formatHostPort({ host: a, port: s.port }));
  }
  return [...new Set(out)];
}
