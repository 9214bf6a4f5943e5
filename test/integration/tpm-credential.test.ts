/**
 * The server's MakeCredential, checked by an independent implementation:
 * tpm2-tools' TPM2_ActivateCredential on a swtpm whose EK and AK
 * tpm2_createek / tpm2_createak made must recover the secret, for RSA and
 * ECC EKs. A credential sealed for another AK name must not activate.
 */
import { createPublicKey } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { makeCredential } from "../../plugins/nodeattestor/tpm/credential.js";
import { flushAll, startSwtpm, tpm2, type Swtpm } from "../support/swtpm.js";
import { requireTool } from "../support/tools.js";

const haveTools = requireTool("swtpm", ["--version"], "TPM node attestation tests") && requireTool("tpm2_createek", ["--version"], "TPM node attestation tests");

// tpm2-tools' credential file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
function credentialFile(blob: Uint8Array, encryptedSecret: Uint8Array): Buffer {
  const header = Buffer.alloc(8);
  header.writeUInt32BE(0xbadcc0de, 0);
  header.writeUInt32BE(1, 4);
  const sized = (b: Uint8Array) => {
    const n = Buffer.alloc(2);
    n.writeUInt16BE(b.byteLength);
    return Buffer.concat([n, b]);
  };
  return Buffer.concat([header, sized(blob), sized(encryptedSecret)]);
}

describe.skipIf(!haveTools)("MakeCredential against tpm2_activatecredential", () => {
  let tpm: Swtpm;
  beforeEach(async () => {
    tpm = await startSwtpm();
  });
  afterEach(async () => {
    await tpm.stop();
  });

  function activate(file: string): Buffer {
    tpm2(tpm, ["startauthsession", "--policy-session", "-S", "session.ctx"]);
    try {
      tpm2(tpm, ["policysecret", "-S", "session.ctx", "-c", "e"]);
      tpm2(tpm, ["activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", file, "-o", "out.bin", "-P", "session:session.ctx"]);
      return readFileSync(join(tpm.stateDir, "out.bin"));
    } finally {
      flushAll(tpm);
    }
  }

  it.each([
    ["rsa", "rsassa"],
    ["ecc", "ecdsa"],
  ] as const)("a %s EK's TPM recovers the secret; a credential for another name does not activate", (type, scheme) => {
    tpm2(tpm, ["createek", "-c", "ek.ctx", "-G", type, "-u", "ek.pub", "-f", "pem"]);
    tpm2(tpm, ["createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", type, "-g", "sha256", "-s", scheme, "-u", "ak.pub", "-n", "ak.name"]);
    flushAll(tpm);
    const ekKey = createPublicKey(readFileSync(join(tpm.stateDir, "ek.pub")));
    const akName = readFileSync(join(tpm.stateDir, "ak.name"));

    for (let attempt = 0; attempt < 2; attempt++) {
      const made = makeCredential(ekKey, akName);
      writeFileSync(join(tpm.stateDir, "cred.bin"), credentialFile(made.credentialBlob, made.encryptedSecret));
      expect(activate("cred.bin").equals(made.secret)).toBe(true);
    }

    const wrongName = Buffer.from(akName);
    wrongName[wrongName.length - 1] = (wrongName[wrongName.length - 1] ?? 0) ^ 1;
    const other = makeCredential(ekKey, wrongName);
    writeFileSync(join(tpm.stateDir, "wrong.bin"), credentialFile(other.credentialBlob, other.encryptedSecret));
    expect(() => activate("wrong.bin")).toThrow(/activatecredential/);
  });
});
