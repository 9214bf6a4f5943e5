/**
 * The `sigil` UpstreamAuthority's own checks: its config, and a Workload API
 * it cannot reach, reported as ERR_UNAVAILABLE naming the socket (the CA
 * preparation that asked fails; nothing is signed). The path through a real
 * agent and parent is test/integration/nested-servers.test.ts.
 */
import { generateKeyPairSync } from "node:crypto";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { createSigilUpstreamAuthority, sigilUpstreamAuthorityConfigSchema } from "../../../../plugins/upstreamauthority/sigil/index.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import { testTempDir } from "../../../support/temp-dir.js";

describe("sigil upstream authority", () => {
  it.each([
    [{ workload_api_socket: "/run/agent.sock" }, "server_address"],
    [{ server_address: "parent.example.org", workload_api_socket: "/run/agent.sock" }, "server_address"],
    [{ server_address: "parent.example.org:8081" }, "workload_api_socket"],
    [{ server_address: "parent.example.org:8081", workload_api_socket: "/run/agent.sock", ca_ttl: "1h" }, "ca_ttl"],
  ])("refuses the config %j, naming %s", (config, field) => {
    const r = sigilUpstreamAuthorityConfigSchema.safeParse(config);
    expect(r.success).toBe(false);
    expect(JSON.stringify(r.error?.issues)).toContain(field);
  });

  it("reports a Workload API it cannot reach as ERR_UNAVAILABLE naming the socket", async () => {
    const socket = path.join(testTempDir("sigil-ua-sigil-"), "no-agent.sock");
    const ua = createSigilUpstreamAuthority({ server_address: "127.0.0.1:1", workload_api_socket: socket });
    const now = Date.now();
    const minting = ua.mintX509Ca({ trustDomain: parseTrustDomain("example.org"), publicKey: generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey, notBefore: new Date(now), notAfter: new Date(now + 3_600_000) });
    await expect(minting).rejects.toMatchObject({ code: "ERR_UNAVAILABLE", message: expect.stringContaining(`cannot fetch this server's X509-SVID from the Workload API at ${socket}`) });
  });
});
