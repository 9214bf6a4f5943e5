/**
 * A fresh software TPM (swtpm) per test, tpm2-tools against it, and a test
 * TPM manufacturer: a CA that issues EK certificates, which are written into
 * the TPM's NV like a manufacturer's.
 *
 * @example
 * ```ts
 * const tpm = await startSwtpm();
 * try {
 *   const ca = await createTestManufacturerCa();
 *   await provisionEkCertificate(tpm, "rsa", ca);
 *   tpm2(tpm, ["getcap", "handles-transient"]);
 * } finally {
 *   await tpm.stop();
 * }
 * ```
 */
import "reflect-metadata";
import * as px from "@peculiar/x509";
import { spawn, spawnSync } from "node:child_process";
import { createPublicKey, webcrypto } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { closedLoopbackPort } from "./ports.js";

/** A running swtpm. */
export interface Swtpm {
  readonly host: "127.0.0.1";
  /** The TPM command port (raw TPM 2.0 commands). */
  readonly port: number;
  /** swtpm's control port. */
  readonly ctrlPort: number;
  /** Its own state folder (also a scratch folder for tpm2-tools files); removed by stop(). */
  readonly stateDir: string;
  /** TPM2TOOLS_TCTI value for tpm2-tools. */
  readonly tcti: string;
  /** Stops swtpm, waits for it to exit and removes its state folder. */
  stop(): Promise<void>;
}

async function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

async function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

/** A loopback port P such that P and P+1 are both free (bound once, then released). */
async function freePortPair(): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const port = await closedLoopbackPort();
    if (port < 65535 && (await canBind(port + 1))) return port;
  }
  throw new Error("no two consecutive free loopback ports found");
}

/**
 * Starts `swtpm socket --tpm2` on two consecutive free loopback ports with a fresh state
 * folder and TPM2_Startup(CLEAR) done, and resolves once its control port
 * accepts connections.
 */
export async function startSwtpm(): Promise<Swtpm> {
  let lastError = "";
  for (let attempt = 0; attempt < 3; attempt++) {
    // tpm2-tools' swtpm TCTI expects the control port right after the command port.
    const port = await freePortPair();
    const ctrlPort = port + 1;
    const stateDir = mkdtempSync(join(tmpdir(), "sigil-swtpm-"));
    const child = spawn(
      "swtpm",
      [
        "socket",
        "--tpm2",
        "--server",
        `type=tcp,port=${port},bindaddr=127.0.0.1`,
        "--ctrl",
        `type=tcp,port=${ctrlPort},bindaddr=127.0.0.1`,
        "--flags",
        "startup-clear",
        "--tpmstate",
        `dir=${stateDir}`,
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    let exitedEarly = false;
    void exited.then(() => (exitedEarly = true));
    const stop = async (): Promise<void> => {
      if (!exitedEarly) {
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(stateDir, { recursive: true, force: true });
    };
    const deadline = Date.now() + 15_000;
    let up = false;
    while (!exitedEarly && Date.now() < deadline) {
      if ((await canConnect(ctrlPort)) && (await canConnect(port))) {
        up = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    if (up) return { host: "127.0.0.1", port, ctrlPort, stateDir, tcti: `swtpm:host=127.0.0.1,port=${port}`, stop };
    lastError = stderr;
    await stop();
  }
  throw new Error(`swtpm did not start: ${lastError}`);
}

/** Runs `tpm2_<tool> ...args` against `tpm` in its state folder and returns stdout; throws with stderr when it fails. */
export function tpm2(tpm: Swtpm, args: readonly string[]): string {
  const [tool, ...rest] = args;
  const r = spawnSync(`tpm2_${tool}`, rest, { cwd: tpm.stateDir, env: { ...process.env, TPM2TOOLS_TCTI: tpm.tcti }, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`tpm2_${tool} ${rest.join(" ")} failed (${r.status ?? r.signal}): ${r.stderr}`);
  return r.stdout;
}

/** Handles of one kind loaded in the TPM, from `tpm2_getcap handles-transient` / `handles-loaded-session`. */
export function loadedHandles(tpm: Swtpm, kind: "handles-transient" | "handles-loaded-session"): string[] {
  return tpm2(tpm, ["getcap", kind])
    .split("\n")
    .map((l) => l.replace(/^-\s*/, "").trim())
    .filter((l) => l !== "");
}

/** Flushes every transient object and session tpm2-tools left behind (it does not flush what it creates). */
export function flushAll(tpm: Swtpm): void {
  tpm2(tpm, ["flushcontext", "-t"]);
  tpm2(tpm, ["flushcontext", "-l"]);
}

/**
 * The EK public key as `tpm2_createek -G <type> -f pem` prints it (SPKI PEM);
 * the transient EK tpm2_createek leaves loaded is flushed.
 */
export function ekPublicPemFromTools(tpm: Swtpm, type: "rsa" | "ecc"): string {
  const pem = join(tpm.stateDir, `ek-${type}.pem`);
  tpm2(tpm, ["createek", "-G", type, "-u", pem, "-f", "pem", "-c", join(tpm.stateDir, `ek-${type}.ctx`)]);
  flushAll(tpm);
  return readFileSync(pem, "utf8");
}

/** A test TPM manufacturer CA that issues EK certificates. */
export interface TestManufacturerCa {
  /** The CA certificate as PEM (what `ek_ca_certificates_path` points to). */
  readonly certPem: string;
  readonly certDer: Uint8Array;
  readonly subject: string;
  readonly keys: webcrypto.CryptoKeyPair;
}

const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

/** Makes a self-signed P-256 manufacturer CA named `CN=<name>, O=Sigil Test TPM Manufacturer`. */
export async function createTestManufacturerCa(name = "Test EK Root CA"): Promise<TestManufacturerCa> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const subject = `CN=${name}, O=Sigil Test TPM Manufacturer`;
  const cert = await px.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: "01",
      name: subject,
      notBefore: new Date(Date.now() - 3600_000),
      notAfter: new Date(Date.now() + 365 * 86400_000),
      signingAlgorithm: ALG,
      keys,
      extensions: [new px.BasicConstraintsExtension(true, undefined, true), new px.KeyUsagesExtension(px.KeyUsageFlags.keyCertSign | px.KeyUsageFlags.cRLSign, true)],
    },
    webcrypto,
  );
  return { certPem: cert.toString("pem"), certDer: new Uint8Array(cert.rawData), subject, keys };
}

/** Issues an EK certificate (keyEncipherment, not a CA) for an SPKI PEM public key. */
export async function issueEkCertificate(ca: TestManufacturerCa, ekPublicPem: string, serialHex = "0a1b2c3d"): Promise<Uint8Array> {
  const spki = createPublicKey(ekPublicPem).export({ type: "spki", format: "der" });
  const cert = await px.X509CertificateGenerator.create(
    {
      serialNumber: serialHex,
      subject: "",
      issuer: new px.X509Certificate(ca.certDer).subject,
      notBefore: new Date(Date.now() - 3600_000),
      notAfter: new Date(Date.now() + 10 * 365 * 86400_000),
      signingAlgorithm: ALG,
      publicKey: new Uint8Array(spki),
      signingKey: ca.keys.privateKey,
      extensions: [new px.BasicConstraintsExtension(false, undefined, true), new px.KeyUsagesExtension(px.KeyUsageFlags.keyEncipherment, true)],
    },
    webcrypto,
  );
  return new Uint8Array(cert.rawData);
}

/**
 * Writes `der` into the TPM's EK certificate NV index for `type` (0x01c00002
 * RSA, 0x01c0000a ECC) with owner and index read/write, as tpm2-tools does
 * for a manufacturer-provisioned certificate.
 */
export function writeEkCertificate(tpm: Swtpm, type: "rsa" | "ecc", der: Uint8Array): void {
  const index = type === "rsa" ? "0x01c00002" : "0x01c0000a";
  const file = join(tpm.stateDir, `ek-cert-${type}.der`);
  writeFileSync(file, der);
  tpm2(tpm, ["nvdefine", index, "-C", "o", "-s", String(der.length), "-a", "ownerread|policyread|policywrite|ownerwrite|authread|authwrite"]);
  tpm2(tpm, ["nvwrite", index, "-C", "o", "-i", file]);
}

/**
 * Provisions an EK certificate as a manufacturer would: reads the EK public
 * key with tpm2-tools, has `ca` (a fresh test CA by default) certify it and
 * writes the DER certificate into the EK certificate NV index.
 */
export async function provisionEkCertificate(
  tpm: Swtpm,
  type: "rsa" | "ecc",
  ca?: TestManufacturerCa,
): Promise<{ readonly certDer: Uint8Array; readonly ca: TestManufacturerCa; readonly ekPublicPem: string }> {
  const issuer = ca ?? (await createTestManufacturerCa());
  const ekPublicPem = ekPublicPemFromTools(tpm, type);
  const certDer = await issueEkCertificate(issuer, ekPublicPem);
  writeEkCertificate(tpm, type, certDer);
  return { certDer, ca: issuer, ekPublicPem };
}
