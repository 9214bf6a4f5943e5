/**
 * Agent half of the `tpm` node attestor. The payload is the TPM's endorsement
 * key (its certificate from NV when the manufacturer stored one) and an
 * attestation key created for this attestation; the challenge is answered by
 * TPM2_ActivateCredential, which only the TPM holding that EK can do, and a
 * TPM2_Quote of the requested PCRs over the server's nonce.
 *
 * Both the EK and the AK are primary keys of the endorsement hierarchy, so
 * the TPM derives exactly the same keys again for the challenge: nothing is
 * kept loaded between the payload and the answer, and every transient
 * handle and session this half creates is flushed before it returns,
 * whether it succeeded or not.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { SigilError } from "../../../spiffe/errors.js";
import type { AgentNodeAttestor } from "../types.js";
import {
  encodeTpmAnswer,
  encodeTpmPayload,
  parseTpmChallenge,
  TPM_ATTESTOR,
  type PcrBank,
  type TpmChallenge,
} from "./payload.js";
import { TpmClient, type LoadedKey } from "./tpm2/client.js";
import { passwordAuth, policyAuth, TPM_RH, TpmCommandError } from "./tpm2/commands.js";
import { decodeAttest, hashAlgId, type PcrSelection } from "./tpm2/structures.js";
import { akTemplate, EK_CERT_NV_INDEX, ekTemplate, type TpmKeyType } from "./tpm2/templates.js";
import { openDeviceTransport, openTcpTransport, type TpmTransport } from "./tpm2/transport.js";

/** The TPM device the agent uses unless configured otherwise: the kernel's resource-managed device. */
export const DEFAULT_TPM_DEVICE_PATH = "/dev/tpmrm0";

/** Configuration of the agent half. */
export const tpmAgentConfigSchema = z
  .strictObject({
    device_path: z
      .string()
      .min(1, { error: "is empty (leave device_path out for /dev/tpmrm0)" })
      .optional()
      .describe("TPM character device. Default `/dev/tpmrm0` (the kernel resource manager, which also flushes what an agent that died left loaded)."),
    simulator: z
      .strictObject({
        host: z.string().min(1).describe("Simulator host (127.0.0.1)."),
        port: z.number().int().min(1).max(65535).describe("The simulator's TPM command port (swtpm `--server type=tcp,port=…`)."),
      })
      .optional()
      .describe("TESTS ONLY, not for production: talk to a TCP TPM simulator (swtpm) instead of a device. A simulator holds no hardware-protected keys, so it proves nothing about a machine."),
    ek_key_type: z
      .enum(["rsa", "ecc"])
      .default("rsa")
      .describe("Which endorsement key to attest with: `rsa` (RSA 2048, certificate at NV 0x01c00002) or `ecc` (NIST P-256, certificate at NV 0x01c0000a). Default `rsa`."),
  })
  .superRefine((c, ctx) => {
    if (c.device_path !== undefined && c.simulator !== undefined) {
      ctx.addIssue({ code: "custom", path: ["simulator"], message: "device_path and simulator exclude each other" });
    }
  });

/** Parsed configuration of the agent half. */
export type TpmAgentConfig = z.output<typeof tpmAgentConfigSchema>;

/** What the agent half needs besides its configuration; tests replace the transport. */
export interface TpmAgentDeps {
  /** Opens a connection to the TPM for one payload or one answer (closed afterwards). */
  readonly openTransport?: () => Promise<TpmTransport>;
}

/** How many times a quote is taken again when a PCR changed between the quote and the PCR read. */
const QUOTE_ATTEMPTS = 3;

/** Creates the agent half. */
export function createTpmAgentAttestor(config: TpmAgentConfig, deps: TpmAgentDeps = {}): AgentNodeAttestor {
  const keyType: TpmKeyType = config.ek_key_type;
  const simulator = config.simulator;
  const devicePath = config.device_path ?? DEFAULT_TPM_DEVICE_PATH;
  const openTransport = deps.openTransport ?? (simulator !== undefined ? () => openTcpTransport(simulator) : () => openDeviceTransport(devicePath));
  // The public areas sent in the last payload: the answer must use the very same keys.
  let sent: { readonly ek: Uint8Array; readonly ak: Uint8Array } | undefined;

  return {
    name: TPM_ATTESTOR,
    async payload(): Promise<Uint8Array> {
      return withTpm(openTransport, async (tpm, track) => {
        const ek = track(await tpm.createPrimary(TPM_RH.ENDORSEMENT, ekTemplate(keyType)));
        const ekCert = await readEkCertificate(tpm, keyType);
        const ak = track(await tpm.createPrimary(TPM_RH.ENDORSEMENT, akTemplate(keyType)));
        sent = { ek: ek.public.raw, ak: ak.public.raw };
        return encodeTpmPayload({ ekPublic: ek.public.raw, ekCert, akPublic: ak.public.raw });
      });
    },
    async answer(challengeBytes: Uint8Array): Promise<Uint8Array> {
      const challenge = parseTpmChallenge(challengeBytes);
      const expected = sent;
      if (expected === undefined) throw new SigilError("ERR_FAILED_PRECONDITION", "tpm: a challenge arrived before any attestation payload was sent");
      return withTpm(openTransport, async (tpm, track, trackSession, untrackSession) => {
        const ek = track(await tpm.createPrimary(TPM_RH.ENDORSEMENT, ekTemplate(keyType)));
        const ak = track(await tpm.createPrimary(TPM_RH.ENDORSEMENT, akTemplate(keyType)));
        if (!sameBytes(ek.public.raw, expected.ek) || !sameBytes(ak.public.raw, expected.ak)) {
          throw new SigilError("ERR_FAILED_PRECONDITION", "tpm: the TPM's EK or AK changed between the attestation payload and the challenge (was the endorsement hierarchy cleared?)");
        }
        const session = trackSession(await tpm.startPolicySession());
        await tpm.policySecret(TPM_RH.ENDORSEMENT, session);
        const secret = await tpm.activateCredential(ak.handle, ek.handle, passwordAuth(), policyAuth(session), challenge.credentialBlob, challenge.encryptedSecret);
        // A policy session that is not continued ends with the command that used it.
        untrackSession(session);
        const { attest, signature, pcrValues } = await quoteWithValues(tpm, ak, challenge);
        return encodeTpmAnswer({ secret, attest, signature, pcrValues });
      });
    },
    // A TPM can always prove the node again: the EK does not change.
    canReattest: () => true,
    reattestRemedy: "the TPM could not be used: check that the agent can open the TPM device",
  };
}

type Track = (key: LoadedKey) => LoadedKey;

/**
 * Opens the TPM, runs `fn` and then flushes every transient object and
 * session `fn` recorded and closes the TPM, whether `fn` succeeded or not.
 * A flush failure after a failure does not hide the first error.
 */
async function withTpm<T>(
  openTransport: () => Promise<TpmTransport>,
  fn: (tpm: TpmClient, track: Track, trackSession: (h: number) => number, untrackSession: (h: number) => void) => Promise<T>,
): Promise<T> {
  const transport = await openTransport();
  const tpm = new TpmClient(transport);
  const handles: number[] = [];
  let result: T;
  try {
    result = await fn(
      tpm,
      (key) => {
        handles.push(key.handle);
        return key;
      },
      (h) => {
        handles.push(h);
        return h;
      },
      (h) => {
        const i = handles.indexOf(h);
        if (i >= 0) handles.splice(i, 1);
      },
    );
  } catch (e) {
    await flushAll(tpm, handles).catch(() => undefined);
    await transport.close();
    throw e;
  }
  try {
    await flushAll(tpm, handles);
  } finally {
    await transport.close();
  }
  return result;
}

/** Flushes each handle (newest first), trying all of them; throws the first failure. */
async function flushAll(tpm: TpmClient, handles: readonly number[]): Promise<void> {
  let first: unknown;
  for (const h of [...handles].reverse()) {
    try {
      await tpm.flushContext(h);
    } catch (e) {
      first ??= e;
    }
  }
  if (first !== undefined) throw first;
}

/**
 * The EK certificate from its NV index, or undefined when the TPM holds none
 * there (no such index, or an index never written).
 */
async function readEkCertificate(tpm: TpmClient, keyType: TpmKeyType): Promise<Uint8Array | undefined> {
  const index = EK_CERT_NV_INDEX[keyType];
  try {
    const der = await tpm.nvReadAll(index);
    return der.length === 0 ? undefined : trimDer(der);
  } catch (e) {
    // TPM_RC_HANDLE (no such index) and TPM_RC_NV_UNINITIALIZED (never written) mean "no certificate".
    if (e instanceof TpmCommandError && (e.decoded.base === 0x8b || e.decoded.base === 0x14a)) return undefined;
    throw e;
  }
}

/**
 * Some manufacturers size the NV index larger than the certificate and pad
 * it; the DER's own length says where the certificate ends.
 */
function trimDer(der: Uint8Array): Uint8Array {
  if (der[0] !== 0x30 || der.length < 2) return der;
  const first = der[1] as number;
  let len: number;
  let header: number;
  if (first < 0x80) {
    len = first;
    header = 2;
  } else {
    const n = first & 0x7f;
    if (n === 0 || n > 3 || der.length < 2 + n) return der;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (der[2 + i] as number);
    header = 2 + n;
  }
  return header + len <= der.length ? der.slice(0, header + len) : der;
}

/**
 * Quotes the challenge's PCRs with its nonce and reads their values. The
 * values must hash to the quote's PCR digest; when a PCR was extended in
 * between, both are taken again.
 */
async function quoteWithValues(
  tpm: TpmClient,
  ak: LoadedKey,
  challenge: TpmChallenge,
): Promise<{ attest: Uint8Array; signature: Uint8Array; pcrValues: Partial<Record<PcrBank, Record<string, string>>> }> {
  const selection: PcrSelection[] = challenge.pcrs.map((p) => ({ hash: hashAlgId(p.hash), indices: [...p.indices].sort((a, b) => a - b) }));
  for (let attempt = 1; ; attempt++) {
    const { attest, signature } = await tpm.quote(ak.handle, challenge.nonce, selection);
    const values = await tpm.pcrRead(selection);
    const digest = createHash("sha256");
    for (const v of values) digest.update(v.value);
    const quoted = decodeAttest(attest).quote?.pcrDigest;
    if ((quoted !== undefined && sameBytes(digest.digest(), quoted)) || attempt >= QUOTE_ATTEMPTS) {
      const pcrValues: Partial<Record<PcrBank, Record<string, string>>> = {};
      challenge.pcrs.forEach((p, bankIndex) => {
        const hash = selection[bankIndex]?.hash;
        const bank: Record<string, string> = (pcrValues[p.hash] ??= {});
        for (const v of values) if (v.hash === hash) bank[String(v.index)] = Buffer.from(v.value).toString("hex");
      });
      return { attest, signature, pcrValues };
    }
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a).equals(Buffer.from(b));
}
