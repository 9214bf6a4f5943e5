/**
 * The TPM client against a fresh swtpm per test, cross-checked with
 * tpm2-tools: the EK it derives is the one tpm2_createek prints, NV and PCR
 * reads agree with tpm2_nvread / tpm2_pcrread, a credential made by
 * tpm2_makecredential activates, and tpm2_checkquote accepts its quotes.
 */
import { spawnSync } from "node:child_process";
import { createHash, createPublicKey, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { TpmClient, TPM_PT } from "../../../../../../plugins/nodeattestor/tpm/tpm2/client.js";
import { passwordAuth, policyAuth, TPM_RH, TpmCommandError } from "../../../../../../plugins/nodeattestor/tpm/tpm2/commands.js";
import {
  decodeAttest,
  decodeSignature,
  objectName,
  publicToKeyObject,
  TPM_ALG,
  TPM_GENERATED_VALUE,
  TPM_ST,
  TPMA_OBJECT,
  type TpmPublicArea,
} from "../../../../../../plugins/nodeattestor/tpm/tpm2/structures.js";
import { akTemplate, EK_CERT_NV_INDEX, ekTemplate, type TpmKeyType } from "../../../../../../plugins/nodeattestor/tpm/tpm2/templates.js";
import { openTcpTransport, type TpmTransport } from "../../../../../../plugins/nodeattestor/tpm/tpm2/transport.js";
import { ekPublicPemFromTools, flushAll, loadedHandles, provisionEkCertificate, startSwtpm, tpm2, type Swtpm } from "../../../../../support/swtpm.js";
import { requireTool } from "../../../../../support/tools.js";

const haveTools = requireTool("swtpm", ["--version"], "TPM simulator") && requireTool("tpm2_getcap", ["--version"], "tpm2-tools");

/** Parses `tpm2_pcrread` output into bank -> index -> lowercase hex. */
function parsePcrread(out: string): Record<string, Record<number, string>> {
  const result: Record<string, Record<number, string>> = {};
  let bank = "";
  for (const line of out.split("\n")) {
    const b = /^\s*(sha\d+):\s*$/.exec(line);
    if (b) {
      bank = b[1] as string;
      result[bank] = {};
      continue;
    }
    const v = /^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$/.exec(line);
    if (v) (result[bank] as Record<number, string>)[Number(v[1])] = (v[2] as string).toLowerCase();
  }
  return result;
}

describe.skipIf(!haveTools)("TpmClient against swtpm", () => {
  let tpm: Swtpm;
  let transport: TpmTransport;
  let client: TpmClient;

  beforeEach(async () => {
    tpm = await startSwtpm();
    transport = await openTcpTransport({ host: tpm.host, port: tpm.port });
    client = new TpmClient(transport);
  });

  afterEach(async () => {
    await transport.close();
    await tpm.stop();
  });

  /** Runs tpm2-tools while the client's connection is closed (swtpm serves one connection at a time). */
  async function withTools<T>(fn: () => T | Promise<T>): Promise<T> {
    await transport.close();
    try {
      return await fn();
    } finally {
      transport = await openTcpTransport({ host: tpm.host, port: tpm.port });
      client = new TpmClient(transport);
    }
  }

  for (const type of ["rsa", "ecc"] as const satisfies readonly TpmKeyType[]) {
    describe(`${type} EK`, () => {
      it("CreatePrimary with the profile template derives the EK tpm2_createek prints; ReadPublic and the name agree", async () => {
        const ek = await client.createPrimary(TPM_RH.ENDORSEMENT, ekTemplate(type));
        expect(ek.handle >>> 24).toBe(0x80);
        expect(ek.public.type).toBe(type);
        expect(ek.name).toEqual(objectName(ek.public.raw));
        const back = await client.readPublic(ek.handle);
        expect(back.public.raw).toEqual(ek.public.raw);
        expect(back.name).toEqual(ek.name);
        await client.flushContext(ek.handle);

        const pem = await withTools(() => ekPublicPemFromTools(tpm, type));
        const ours = publicToKeyObject(ek.public).export({ type: "spki", format: "der" });
        const theirs = createPublicKey(pem).export({ type: "spki", format: "der" });
        expect(createHash("sha256").update(ours).digest("hex")).toBe(createHash("sha256").update(theirs).digest("hex"));
      });

      it("reads a provisioned EK certificate from NV in chunks, as tpm2_nvread does", async () => {
        const index = EK_CERT_NV_INDEX[type];
        await expect(client.nvReadPublic(index)).rejects.toThrow(/TPM2_NV_ReadPublic failed: TPM_RC_HANDLE \(handle 1\), 0x18b/);
        const { certDer } = await withTools(() => provisionEkCertificate(tpm, type));
        const { public: nv } = await client.nvReadPublic(index);
        expect(nv).toMatchObject({ nvIndex: index, dataSize: certDer.length });
        const der = await client.nvReadAll(index);
        expect(Buffer.from(der).equals(Buffer.from(certDer))).toBe(true);

        const out = join(tpm.stateDir, "nvread.der");
        await withTools(() => tpm2(tpm, ["nvread", `0x${index.toString(16)}`, "-C", "o", "-o", out]));
        expect(Buffer.from(der).equals(readFileSync(out))).toBe(true);
      });

      it("ActivateCredential recovers a secret tpm2_makecredential sealed to the EK for the AK's name", async () => {
        const ek = await client.createPrimary(TPM_RH.ENDORSEMENT, ekTemplate(type));
        const ak = await client.createPrimary(TPM_RH.ENDORSEMENT, akTemplate(type));
        expect(ak.public.objectAttributes & TPMA_OBJECT.restricted).toBeTruthy();
        const secret = randomBytes(32);
        const dir = tpm.stateDir;
        const ekFile = join(dir, "ek.pub");
        writeFileSync(ekFile, Buffer.concat([Buffer.from([ek.public.raw.length >> 8, ek.public.raw.length & 0xff]), ek.public.raw]));
        writeFileSync(join(dir, "secret.bin"), secret);
        // Offline (-T none): tpm2-tools does the MakeCredential arithmetic in software, not with this TPM.
        const made = spawnTools(["makecredential", "-T", "none", "-u", ekFile, "-s", join(dir, "secret.bin"), "-n", Buffer.from(ak.name).toString("hex"), "-o", join(dir, "cred.out")]);
        expect(made.status, made.stderr).toBe(0);
        const { idObject, encSecret } = parseCredentialFile(readFileSync(join(dir, "cred.out")));

        const session = await client.startPolicySession();
        expect(session >>> 24).toBe(0x03);
        await client.policySecret(TPM_RH.ENDORSEMENT, session);
        const got = await client.activateCredential(ak.handle, ek.handle, passwordAuth(), policyAuth(session), idObject, encSecret);
        expect(Buffer.from(got).equals(secret)).toBe(true);
        // The session was not continued: the TPM ended it.
        await expect(client.flushContext(session)).rejects.toBeInstanceOf(TpmCommandError);

        // Without the EK's policy satisfied the TPM refuses, naming the session.
        const bare = await client.startPolicySession();
        const err = await client.activateCredential(ak.handle, ek.handle, passwordAuth(), policyAuth(bare), idObject, encSecret).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(TpmCommandError);
        expect((err as Error).message).toMatch(/^tpm: TPM2_ActivateCredential failed: TPM_RC_POLICY_FAIL \(session 2\)/);
        await client.flushContext(bare);
        await client.flushContext(ak.handle);
        await client.flushContext(ek.handle);
        expect(await client.getHandles(0x80000000)).toEqual([]);
      });

      it("Quote over PCRs with a nonce is accepted by tpm2_checkquote and its digest matches PCR_Read", async () => {
        const ak = await client.createPrimary(TPM_RH.ENDORSEMENT, akTemplate(type));
        const nonce = randomBytes(32);
        const selection = [
          { hash: TPM_ALG.SHA256, indices: [0, 1, 2, 3, 4, 5, 6, 7, 16] },
          { hash: TPM_ALG.SHA1, indices: [0, 16] },
        ];
        const { attest, signature } = await client.quote(ak.handle, nonce, selection);
        const a = decodeAttest(attest);
        expect(a.magic).toBe(TPM_GENERATED_VALUE);
        expect(a.type).toBe(TPM_ST.ATTEST_QUOTE);
        expect(Buffer.from(a.extraData).equals(nonce)).toBe(true);
        expect(a.quote?.pcrSelect).toEqual(selection);
        const values = await client.pcrRead(selection);
        const digest = createHash("sha256");
        for (const v of values) digest.update(v.value);
        expect(Buffer.from(a.quote?.pcrDigest ?? []).toString("hex")).toBe(digest.digest("hex"));
        const sig = decodeSignature(signature);
        expect(sig.sigAlg).toBe(type === "rsa" ? TPM_ALG.RSASSA : TPM_ALG.ECDSA);
        await client.flushContext(ak.handle);

        const dir = tpm.stateDir;
        writeFileSync(join(dir, "ak.pem"), publicToKeyObject(ak.public).export({ type: "spki", format: "pem" }));
        writeFileSync(join(dir, "quote.msg"), attest);
        writeFileSync(join(dir, "quote.sig"), signature);
        const args = ["checkquote", "-u", join(dir, "ak.pem"), "-m", join(dir, "quote.msg"), "-s", join(dir, "quote.sig"), "-g", "sha256"];
        expect(spawnTools([...args, "-q", nonce.toString("hex")]).status).toBe(0);
        // A different nonce is refused: the check is not vacuous.
        expect(spawnTools([...args, "-q", randomBytes(32).toString("hex")]).status).not.toBe(0);
      });
    });
  }

  it("NV_Read reads an index larger than TPM_PT_NV_BUFFER_MAX in chunks", async () => {
    const chunk = await client.getTpmProperty(TPM_PT.NV_BUFFER_MAX);
    expect(chunk).toBeGreaterThan(0);
    const blob = randomBytes((chunk as number) + 123);
    const file = join(tpm.stateDir, "blob.bin");
    writeFileSync(file, blob);
    await withTools(() => {
      tpm2(tpm, ["nvdefine", "0x01500010", "-C", "o", "-s", String(blob.length), "-a", "ownerread|ownerwrite"]);
      tpm2(tpm, ["nvwrite", "0x01500010", "-C", "o", "-i", file]);
    });
    expect(Buffer.from(await client.nvReadAll(0x01500010)).equals(blob)).toBe(true);
  });

  it("PCR_Read returns what tpm2_pcrread prints, over several calls for many PCRs and banks", async () => {
    await withTools(() => {
      tpm2(tpm, ["pcrextend", `16:sha256=${"ab".repeat(32)},sha1=${"cd".repeat(20)}`]);
      tpm2(tpm, ["pcrextend", `23:sha384=${"ef".repeat(48)}`]);
    });
    const all = Array.from({ length: 24 }, (_, i) => i);
    const selection = [
      { hash: TPM_ALG.SHA256, indices: all },
      { hash: TPM_ALG.SHA1, indices: all },
      { hash: TPM_ALG.SHA384, indices: [0, 16, 23] },
    ];
    const values = await client.pcrRead(selection);
    expect(values).toHaveLength(24 + 24 + 3);
    const text = await withTools(() => tpm2(tpm, ["pcrread", "sha256:all+sha1:all+sha384:0,16,23"]));
    const expected = parsePcrread(text);
    const names: Record<number, string> = { [TPM_ALG.SHA256]: "sha256", [TPM_ALG.SHA1]: "sha1", [TPM_ALG.SHA384]: "sha384" };
    for (const v of values) {
      expect(Buffer.from(v.value).toString("hex"), `${names[v.hash]}:${v.index}`).toBe(expected[names[v.hash] as string]?.[v.index]);
    }
    expect(expected.sha256?.[16]).not.toBe("0".repeat(64));
    await expect(client.pcrRead([{ hash: TPM_ALG.SHA256, indices: [30] }])).rejects.toThrow(/^tpm: TPM2_PCR_Read failed: TPM_RC_VALUE \(parameter 1\)/);
  });

  it("GetCapability lists PCR banks, properties and handles", async () => {
    const banks = await client.getPcrBanks();
    expect(banks.map((b) => b.hash)).toContain(TPM_ALG.SHA256);
    expect(await client.getTpmProperty(0x0000_0100)).toBe(0x322e3000); // TPM_PT_FAMILY_INDICATOR "2.0"
    const ek = await client.createPrimary(TPM_RH.ENDORSEMENT, ekTemplate("rsa"));
    expect(await client.getHandles(0x80000000)).toEqual([ek.handle]);
    await client.flushContext(ek.handle);
    expect(await client.getHandles(0x80000000)).toEqual([]);
  });

  it("Create and Load a child of the EK with PolicySecret sessions; flushing leaves nothing loaded", async () => {
    const ek = await client.createPrimary(TPM_RH.ENDORSEMENT, ekTemplate("ecc"));
    const s1 = await client.startPolicySession();
    await client.policySecret(TPM_RH.ENDORSEMENT, s1);
    const child = await client.create(ek.handle, akTemplate("ecc"), policyAuth(s1));
    const s2 = await client.startPolicySession();
    await client.policySecret(TPM_RH.ENDORSEMENT, s2);
    const loaded = await client.load(ek.handle, child.private, child.public, policyAuth(s2));
    expect(loaded.name).toEqual(objectName(child.public.raw));
    const back = await client.readPublic(loaded.handle);
    expect(back.public.raw).toEqual(child.public.raw);
    await client.flushContext(loaded.handle);
    await client.flushContext(ek.handle);
    await transport.close();
    expect(loadedHandles(tpm, "handles-transient")).toEqual([]);
    expect(loadedHandles(tpm, "handles-loaded-session")).toEqual([]);
    transport = await openTcpTransport({ host: tpm.host, port: tpm.port });
  });

  it("names the command and decodes the TPM_RC when the TPM refuses", async () => {
    const err = await client.flushContext(0x80001234).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TpmCommandError);
    expect((err as TpmCommandError).message).toBe("tpm: TPM2_FlushContext failed: TPM_RC_VALUE (parameter 1), 0x1c4");
    // A template the TPM rejects (an RSA key of 1000 bits).
    const bad: TpmPublicArea = { ...akTemplate("rsa"), rsa: { keyBits: 1000, exponent: 0, modulus: new Uint8Array(0) } };
    await expect(client.createPrimary(TPM_RH.ENDORSEMENT, bad)).rejects.toThrow(/^tpm: TPM2_CreatePrimary failed: TPM_RC_\w+ \(parameter 2\)/);
    await withTools(() => flushAll(tpm));
  });
});

/** Runs a tpm2-tools command that needs no TPM (offline makecredential, checkquote). */
function spawnTools(args: string[]): { status: number | null; stderr: string } {
  const [tool, ...rest] = args;
  const r = spawnSync(`tpm2_${tool}`, rest, { encoding: "utf8" });
  return { status: r.status, stderr: r.stderr };
}

/** tpm2-tools' credential file: magic 0xBADCC0DE, version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET. */
function parseCredentialFile(b: Buffer): { idObject: Uint8Array; encSecret: Uint8Array } {
  expect(b.readUInt32BE(0)).toBe(0xbadcc0de);
  let off = 8;
  const idLen = b.readUInt16BE(off);
  const idObject = new Uint8Array(b.subarray(off + 2, off + 2 + idLen));
  off += 2 + idLen;
  const secLen = b.readUInt16BE(off);
  const encSecret = new Uint8Array(b.subarray(off + 2, off + 2 + secLen));
  expect(off + 2 + secLen).toBe(b.length);
  return { idObject, encSecret };
}
