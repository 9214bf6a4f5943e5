import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ekPubHash } from "../../../../../plugins/nodeattestor/tpm/ek.js";
import { encodeTpmPayload } from "../../../../../plugins/nodeattestor/tpm/payload.js";
import { createTpmServerAttestor, tpmServerConfigSchema } from "../../../../../plugins/nodeattestor/tpm/server.js";
import { decodePublic, encodePublic, TPMA_OBJECT, type TpmPublicArea } from "../../../../../plugins/nodeattestor/tpm/tpm2/structures.js";
import type { ChallengeFn, ServerNodeAttestor } from "../../../../../plugins/nodeattestor/types.js";
import { isSigilError, type ErrorCode } from "../../../../../spiffe/errors.js";
import { parseTrustDomain } from "../../../../../spiffe/id.js";
import { createSoftTpm } from "../../../../support/soft-tpm.js";
import { createTestManufacturerCa, issueEkCertificate } from "../../../../support/swtpm.js";

const td = parseTrustDomain("example.org");
const dir = mkdtempSync(join(tmpdir(), "sigil-tpm-hostile-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function server(config: unknown): ServerNodeAttestor {
  return createTpmServerAttestor(tpmServerConfigSchema.parse(config), { trustDomain: td });
}

const neverChallenged: ChallengeFn = async () => {
  throw new Error("the server challenged a payload it should have refused");
};

async function refusal(p: Promise<unknown>, code: ErrorCode, message: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(isSigilError(e), String(e)).toBe(true);
  if (!isSigilError(e)) return;
  expect(e.code).toBe(code);
  expect(e.message).toMatch(message);
}

function rebuilt(raw: Uint8Array, change: (p: TpmPublicArea) => TpmPublicArea): Uint8Array {
  return encodePublic(change(decodePublic(raw)));
}

describe("tpm server half against a hostile agent", () => {
  const rsa = createSoftTpm("rsa");
  const rsaHash = ekPubHash(rsa.ekKey);

  // A TPM makes the AK from its template, so its public area is consistent; a
  // made-up one is refused before the server seals anything to it.
  it.each([
    ["an RSA modulus shorter than keyBits", (p: TpmPublicArea) => ({ ...p, rsa: { keyBits: 2048, exponent: 0, modulus: Buffer.alloc(64, 0xff) } }), /the AK's RSA modulus is 512 bits, but its keyBits say 2048/],
    ["an RSA modulus longer than keyBits", (p: TpmPublicArea) => ({ ...p, rsa: { keyBits: 2048, exponent: 0, modulus: Buffer.alloc(512, 0xff) } }), /the AK's RSA modulus is 4096 bits, but its keyBits say 2048/],
    ["RSA exponent 1", (p: TpmPublicArea) => ({ ...p, rsa: { ...(p.rsa as NonNullable<TpmPublicArea["rsa"]>), exponent: 1 } }), /the AK's RSA exponent 1 is not 65537/],
    ["RSA exponent 3", (p: TpmPublicArea) => ({ ...p, rsa: { ...(p.rsa as NonNullable<TpmPublicArea["rsa"]>), exponent: 3 } }), /the AK's RSA exponent 3 is not 65537/],
    // ActivateCredential authorizes the AK in the ADMIN role: with adminWithPolicy a
    // policy the agent chose would stand in for holding the key.
    ["adminWithPolicy and an authPolicy", (p: TpmPublicArea) => ({ ...p, objectAttributes: p.objectAttributes | TPMA_OBJECT.adminWithPolicy, authPolicy: Buffer.alloc(32, 7) }), /the AK has adminWithPolicy/],
  ])("refuses an AK with %s", async (_what, change, message) => {
    const payload = encodeTpmPayload({ ekPublic: rsa.ekPublic, akPublic: rebuilt(rsa.akPublic, change) });
    await refusal(server({ ek_hashes: [rsaHash] }).attest(payload, neverChallenged), "ERR_PERMISSION_DENIED", message);
  });

  it("refuses an EK whose RSA exponent or modulus is not the standard template's, naming it", async () => {
    for (const [change, message] of [
      [(p: TpmPublicArea) => ({ ...p, rsa: { ...(p.rsa as NonNullable<TpmPublicArea["rsa"]>), exponent: 1 } }), /the EK's RSA exponent 1 is not 65537/],
      [(p: TpmPublicArea) => ({ ...p, rsa: { keyBits: 2048, exponent: 0, modulus: Buffer.alloc(64, 0xff) } }), /the EK's RSA modulus is 512 bits, but its keyBits say 2048/],
    ] as const) {
      const ekPublic = rebuilt(rsa.ekPublic, change);
      await refusal(server({ ek_hashes: ["00".repeat(32)] }).attest(encodeTpmPayload({ ekPublic, akPublic: rsa.akPublic }), neverChallenged), "ERR_PERMISSION_DENIED", message);
    }
  });

  it("refuses an EK certificate whose public key cannot be read with a clear error, not an internal one", async () => {
    const ca = await createTestManufacturerCa();
    const caPath = join(dir, "ca.pem");
    writeFileSync(caPath, ca.certPem);
    const ecc = createSoftTpm("ecc");
    const cert = Buffer.from(await issueEkCertificate(ca, ecc.ekKey.export({ format: "pem", type: "spki" }).toString()));
    // id-ecPublicKey (1.2.840.10045.2.1) turned into an algorithm nobody knows (…2.9).
    const oid = Buffer.from("06072a8648ce3d0201", "hex");
    const at = cert.indexOf(oid);
    expect(at).toBeGreaterThan(0);
    cert[at + oid.length - 1] = 0x09;
    await refusal(server({ ek_ca_certificates_path: caPath }).attest(ecc.payload(cert), neverChallenged), "ERR_PERMISSION_DENIED", /the EK certificate's public key cannot be read/);
  });

  it("fails a broken ek_hashes_path as the server's problem (logged as internal), not as the agent's invalid argument", async () => {
    const path = join(dir, "hashes.txt");
    writeFileSync(path, `${rsaHash}\n`);
    const s = server({ ek_hashes_path: path });
    writeFileSync(path, `${rsaHash}\nnot-a-hash-half-written\n`);
    await refusal(s.attest(rsa.payload(), neverChallenged), "ERR_INTERNAL", /ek_hashes_path: .* line 2 is not 64 hex digits/);
  });
});
