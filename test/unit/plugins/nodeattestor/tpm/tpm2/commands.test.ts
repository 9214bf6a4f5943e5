/**
 * Command framing and TPM_RC decoding (checked against tpm2_rc_decode), and
 * the TCP transport's behaviour with peers that misbehave.
 */
import { spawnSync } from "node:child_process";
import { createServer, type Server, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { buildCommand, decodeRc, describeRc, parseResponse, passwordAuth, TPM_CC, TPM_RH, TpmCommandError } from "../../../../../../plugins/nodeattestor/tpm/tpm2/commands.js";
import { openDeviceTransport, openTcpTransport } from "../../../../../../plugins/nodeattestor/tpm/tpm2/transport.js";
import { toolAvailable } from "../../../../../support/tools.js";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("command framing", () => {
  it("marshals header, handles, the authorization area and parameters", () => {
    const cmd = buildCommand(TPM_CC.NV_Read, [TPM_RH.OWNER, 0x01c00002], [passwordAuth()], Uint8Array.of(0x04, 0x00, 0x00, 0x00));
    expect(hex(cmd)).toBe(
      "8002" + "00000023" + "0000014e" + "40000001" + "01c00002" + "00000009" + "40000009" + "0000" + "00" + "0000" + "04000000",
    );
    expect(hex(buildCommand(TPM_CC.FlushContext, [], [], Uint8Array.of(0x80, 0, 0, 0)))).toBe("8001" + "0000000e" + "00000165" + "80000000");
  });

  it("splits a response into handles and parameters and drops the authorization area", () => {
    const res = Uint8Array.from(Buffer.from("8002" + "00000019" + "00000000" + "80000001" + "00000002" + "abcd" + "0000" + "01" + "0000", "hex"));
    const r = parseResponse(TPM_CC.CreatePrimary, res, 1, true);
    expect(r.handles).toEqual([0x80000001]);
    expect(r.params.remaining).toBe(2);
    expect(() => parseResponse(TPM_CC.CreatePrimary, res.subarray(0, 20), 1, true)).toThrow(/header says 25 bytes, got 20/);
  });

  it("throws a TpmCommandError naming the command for a non-zero response code", () => {
    const res = Uint8Array.from(Buffer.from("8001" + "0000000a" + "0000098e", "hex"));
    const err = (() => {
      try {
        parseResponse(TPM_CC.ActivateCredential, res, 0, true);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(TpmCommandError);
    expect((err as TpmCommandError).message).toBe("tpm: TPM2_ActivateCredential failed: TPM_RC_AUTH_FAIL (session 1), 0x98e");
    expect((err as TpmCommandError).decoded.base).toBe(0x08e);
  });
});

describe("TPM_RC decoding", () => {
  const cases: Array<[number, string]> = [
    [0x18b, "TPM_RC_HANDLE (handle 1), 0x18b"],
    [0x28b, "TPM_RC_HANDLE (handle 2), 0x28b"],
    [0x1c4, "TPM_RC_VALUE (parameter 1), 0x1c4"],
    [0x2d5, "TPM_RC_SIZE (parameter 2), 0x2d5"],
    [0x99d, "TPM_RC_POLICY_FAIL (session 1), 0x99d"],
    [0xa9d, "TPM_RC_POLICY_FAIL (session 2), 0xa9d"],
    [0x09b, "TPM_RC_SIGNATURE, 0x9b"],
    [0x14a, "TPM_RC_NV_UNINITIALIZED, 0x14a"],
    [0x101, "TPM_RC_FAILURE, 0x101"],
    [0x149, "TPM_RC_NV_AUTHORIZATION, 0x149"],
    [0x922, "TPM_RC_RETRY [warning], 0x922"],
    [0x921, "TPM_RC_LOCKOUT [warning], 0x921"],
    [0x902, "TPM_RC_OBJECT_MEMORY [warning], 0x902"],
    [0x910, "TPM_RC_REFERENCE_H0 [warning], 0x910"],
  ];

  it("decodes format-one codes (handle, session, parameter) and format-zero errors and warnings", () => {
    for (const [rc, text] of cases) expect(describeRc(rc)).toBe(text);
    expect(decodeRc(0x1e).name).toBe("TPM 1.2 response code 0x1e");
    expect(decodeRc(0x500).name).toBe("vendor response code 0x500");
  });

  it.skipIf(!toolAvailable("tpm2_rc_decode", ["0x100"]))("agrees with tpm2_rc_decode on what each code concerns", () => {
    for (const [rc] of cases) {
      const out = spawnSync("tpm2_rc_decode", [`0x${rc.toString(16)}`], { encoding: "utf8" }).stdout;
      const d = decodeRc(rc);
      if (d.subject !== undefined) expect(out, `0x${rc.toString(16)}`).toContain(`${d.subject.kind}(${d.subject.index})`);
      else expect(out, `0x${rc.toString(16)}`).toMatch(d.warning ? /warn\(2\.0\)/ : /error\(2\.0\)|tpm:error|tpm:/);
    }
  });
});

describe("TCP transport", () => {
  let server: Server | undefined;
  const sockets: Socket[] = [];
  afterEach(async () => {
    for (const s of sockets) s.destroy();
    sockets.length = 0;
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    server = undefined;
  });

  async function peer(onData: (s: Socket, d: Buffer) => void): Promise<number> {
    server = createServer((s) => {
      sockets.push(s);
      s.on("data", (d) => onData(s, d));
    });
    await new Promise<void>((r) => server?.listen(0, "127.0.0.1", () => r()));
    return (server?.address() as { port: number }).port;
  }

  const FLUSH = buildCommand(TPM_CC.FlushContext, [], [], Uint8Array.of(0x80, 0, 0, 0));

  it("assembles a response that arrives in pieces, one command at a time", async () => {
    const port = await peer((s) => {
      const res = Buffer.from("8001" + "0000000a" + "00000000", "hex");
      s.write(res.subarray(0, 3));
      setImmediate(() => s.write(res.subarray(3)));
    });
    const t = await openTcpTransport({ host: "127.0.0.1", port });
    const [a, b] = await Promise.all([t.transmit(FLUSH), t.transmit(FLUSH)]);
    expect(hex(a)).toBe("80010000000a00000000");
    expect(hex(b)).toBe("80010000000a00000000");
    await t.close();
  });

  it("fails a command the peer never answers after the timeout, naming the command", async () => {
    const port = await peer(() => undefined);
    const t = await openTcpTransport({ host: "127.0.0.1", port }, { timeoutMs: 200 });
    await expect(t.transmit(FLUSH)).rejects.toThrow("tpm: TPM2_FlushContext: no response from the TPM simulator at 127.0.0.1:" + port + " within 200 ms");
    await expect(t.transmit(FLUSH)).rejects.toThrow(/TPM2_FlushContext/);
    await t.close();
  });

  it("refuses a response header announcing an impossible size, and a peer that hangs up", async () => {
    const port = await peer((s) => s.write(Buffer.from("8001" + "7fffffff" + "00000000", "hex")));
    const t = await openTcpTransport({ host: "127.0.0.1", port });
    await expect(t.transmit(FLUSH)).rejects.toThrow(/TPM2_FlushContext: the response header announces 2147483647 bytes/);
    await t.close();

    const port2 = await peer((s) => s.destroy());
    const t2 = await openTcpTransport({ host: "127.0.0.1", port: port2 });
    await expect(t2.transmit(FLUSH)).rejects.toThrow(/TPM2_FlushContext: the TPM simulator at 127.0.0.1:\d+ closed the connection/);
    await t2.close();
  });
});

describe("device transport", () => {
  const FLUSH = buildCommand(TPM_CC.FlushContext, [], [], Uint8Array.of(0x80, 0, 0, 0));

  it("names the device it cannot open", async () => {
    await expect(openDeviceTransport("/nonexistent/tpmrm0")).rejects.toThrow("tpm: cannot open the TPM device /nonexistent/tpmrm0: ENOENT");
  });

  it("refuses a device that answers nothing or an impossible header, and stays unusable afterwards", async () => {
    const empty = await openDeviceTransport("/dev/null");
    await expect(empty.transmit(FLUSH)).rejects.toThrow("tpm: TPM2_FlushContext: /dev/null returned end of file after 0 bytes");
    await expect(empty.transmit(FLUSH)).rejects.toThrow(/unusable after an earlier failure/);
    await empty.close();
    await expect(empty.transmit(FLUSH)).rejects.toThrow(/is closed/);

    const zeros = await openDeviceTransport("/dev/zero");
    await expect(zeros.transmit(FLUSH)).rejects.toThrow("tpm: TPM2_FlushContext: the response header announces 0 bytes (allowed 10..65536)");
    await zeros.close();
  });
});
