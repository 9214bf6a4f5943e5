import { describe, expect, it } from "vitest";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseEndpointAddress, resolveEndpointAddress } from "../../../../spiffe/workloadapi/address.js";

function rejection(addr: string): string {
  try {
    parseEndpointAddress(addr);
  } catch (e) {
    if (isSigilError(e, "ERR_ENDPOINT_ADDRESS_INVALID")) return e.message;
    throw e;
  }
  throw new Error(`${addr} was accepted`);
}

describe("parseEndpointAddress", () => {
  it.each([
    ["unix:///tmp/agent.sock", "/tmp/agent.sock", "unix:///tmp/agent.sock"],
    ["unix:/tmp/agent.sock", "/tmp/agent.sock", "unix:///tmp/agent.sock"],
    ["UNIX:///run/a.sock", "/run/a.sock", "unix:///run/a.sock"],
    ["unix:///tmp/with%20space.sock", "/tmp/with space.sock", "unix:///tmp/with space.sock"],
  ])("accepts %s", (addr, path, target) => {
    const a = parseEndpointAddress(addr);
    expect(a).toMatchObject({ kind: "unix", path, grpcTarget: target });
  });

  it.each([
    ["tcp://127.0.0.1:8000", "127.0.0.1", 4, 8000, "ipv4:127.0.0.1:8000"],
    ["tcp://[::1]:8081", "::1", 6, 8081, "ipv6:[::1]:8081"],
  ])("accepts %s", (addr, host, ipVersion, port, target) => {
    expect(parseEndpointAddress(addr)).toEqual({ kind: "tcp", host, ipVersion, port, grpcTarget: target });
  });

  it.each([
    ["", /empty/],
    ["/tmp/agent.sock", /scheme/],
    ["unix://host/tmp/a.sock", /authority/],
    ["unix:rel.sock", /absolute/],
    ["unix:", /socket path/],
    ["unix:///", /directory/],
    // A path longer than sun_path holds would be connected to cut short, somewhere else.
    [`unix:///tmp/${"s".repeat(98)}.sock`, /the socket path is 108 bytes long; a Unix socket path holds at most 107/],
    ["unix:///tmp/a.sock?x=1", /query/],
    ["unix:///tmp/a.sock#frag", /fragment/],
    ["unix:///tmp/%zz.sock", /percent-encoding/],
    ["tcp://localhost:8000", /not an IP literal/],
    ["tcp://127.0.0.1", /needs a port/],
    ["tcp://127.0.0.1:", /needs a port/],
    ["tcp://127.0.0.1:8000/foo", /path is not allowed/],
    ["tcp://127.0.0.1:8000/", /path is not allowed/],
    ["tcp://u@127.0.0.1:8000", /userinfo/],
    ["tcp://127.0.0.1:99999", /out of range/],
    ["tcp://127.0.0.1:0", /out of range/],
    ["tcp://127.0.0.1:80a", /not a decimal/],
    ["tcp://[fe80::1%25eth0]:80", /IPv6/],
    ["tcp:127.0.0.1:8000", /host and port/],
    ["http://127.0.0.1:8000", /scheme must be "unix" or "tcp"/],
    ["foo:/x", /scheme must be "unix" or "tcp"/],
    ["npipe:agent", /scheme must be "unix" or "tcp"/],
  ])("rejects %j", (addr, why) => {
    const msg = rejection(addr);
    expect(msg).toMatch(/^workloadapi: /);
    expect(msg).toMatch(why);
  });
});

describe("resolveEndpointAddress", () => {
  it("prefers the explicit address over the environment", () => {
    const a = resolveEndpointAddress("unix:///explicit.sock", { SPIFFE_ENDPOINT_SOCKET: "unix:///env.sock" });
    expect(a.grpcTarget).toBe("unix:///explicit.sock");
  });
  it("falls back to SPIFFE_ENDPOINT_SOCKET", () => {
    expect(resolveEndpointAddress(undefined, { SPIFFE_ENDPOINT_SOCKET: "unix:///env.sock" }).grpcTarget).toBe(
      "unix:///env.sock",
    );
  });
  it("fails clearly with neither", () => {
    expect(() => resolveEndpointAddress(undefined, {})).toThrow(/SPIFFE_ENDPOINT_SOCKET/);
    expect(() => resolveEndpointAddress(undefined, { SPIFFE_ENDPOINT_SOCKET: "" })).toThrow(/SPIFFE_ENDPOINT_SOCKET/);
  });
  it("validates the environment's value too", () => {
    expect(() => resolveEndpointAddress(undefined, { SPIFFE_ENDPOINT_SOCKET: "tcp://localhost:1" })).toThrow(
      /not an IP literal/,
    );
  });
});
