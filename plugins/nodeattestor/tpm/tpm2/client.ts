/**
 * A TPM 2.0 client for the commands node attestation needs, over any
 * {@link TpmTransport}. Methods marshal one command each and decode its
 * response; a TPM failure is a {@link TpmCommandError} naming the command and
 * the decoded TPM_RC. The client never flushes on its own: callers flush the
 * handles and sessions they create (see `agent.ts`).
 */
import { randomBytes } from "node:crypto";
import { SigilError } from "../../../../spiffe/errors.js";
import { buildCommand, parseResponse, passwordAuth, TPM_CC, TPM_RH, TpmCommandError, type TpmAuth, type TpmResponse } from "./commands.js";
import { TpmReader, TpmWriter } from "./marshal.js";
import {
  decodePublic,
  decodeSignature,
  readPcrSelection,
  writePcrSelection,
  writePublic,
  type PcrSelection,
  type TpmPublic,
  type TpmPublicArea,
} from "./structures.js";
import type { TpmTransport } from "./transport.js";

/** TPM_CAP values used here. */
export const TPM_CAP = {
  HANDLES: 0x00000001,
  PCRS: 0x00000005,
  TPM_PROPERTIES: 0x00000006,
} as const;

/** TPM_PT values used here. */
export const TPM_PT = {
  /** Largest NV_Read / NV_Write buffer. */
  NV_BUFFER_MAX: 0x0000012c,
} as const;

/** TPMA_NV bits used here. */
export const TPMA_NV = {
  PPREAD: 1 << 16,
  OWNERREAD: 1 << 17,
  AUTHREAD: 1 << 18,
  POLICYREAD: 1 << 19,
  WRITTEN: 1 << 29,
} as const;

/** TPMS_NV_PUBLIC of an NV index. */
export interface NvPublic {
  readonly nvIndex: number;
  readonly nameAlg: number;
  /** TPMA_NV bits. */
  readonly attributes: number;
  readonly authPolicy: Uint8Array;
  readonly dataSize: number;
}

/** A key the TPM has loaded. */
export interface LoadedKey {
  /** Transient handle; flush it with {@link TpmClient.flushContext}. */
  readonly handle: number;
  readonly public: TpmPublic;
  readonly name: Uint8Array;
}

/** Largest NV area read (EK certificates are 1–2 KiB). */
const MAX_NV_READ_BYTES = 16 * 1024;
/** PCR_Read returns at most 8 digests per call; more calls than this mean a TPM that does not progress. */
const MAX_PCR_READ_CALLS = 64;

const EMPTY = new Uint8Array(0);

/** Warnings after which the same command is sent again: TPM_RC_YIELDED, TPM_RC_TESTING, TPM_RC_RETRY. */
const RETRY_RCS: ReadonlySet<number> = new Set([0x908, 0x90a, 0x922]);
const MAX_RETRIES = 20;

/** Issues TPM 2.0 commands over a transport. */
export class TpmClient {
  constructor(private readonly transport: TpmTransport) {}

  private async run(cc: number, handles: readonly number[], auths: readonly TpmAuth[], params: TpmWriter | Uint8Array, outHandles = 0): Promise<TpmResponse> {
    const body = params instanceof TpmWriter ? params.finish() : params;
    const command = buildCommand(cc, handles, auths, body);
    for (let attempt = 1; ; attempt++) {
      const response = await this.transport.transmit(command);
      try {
        return parseResponse(cc, response, outHandles, auths.length > 0);
      } catch (e) {
        // TPM_RC_RETRY, TPM_RC_YIELDED and TPM_RC_TESTING ask the caller to send the same command again.
        if (!(e instanceof TpmCommandError) || !RETRY_RCS.has(e.rc) || attempt >= MAX_RETRIES) throw e;
        await new Promise((r) => setTimeout(r, 20 * attempt));
      }
    }
  }

  /**
   * TPM2_CreatePrimary under `hierarchy` (TPM_RH.ENDORSEMENT, OWNER, …) with an
   * empty userAuth for the new key.
   */
  async createPrimary(hierarchy: number, template: TpmPublicArea, hierarchyAuth: TpmAuth = passwordAuth()): Promise<LoadedKey> {
    const w = new TpmWriter()
      .sized((s) => s.tpm2b(EMPTY).tpm2b(EMPTY)) // TPMS_SENSITIVE_CREATE: userAuth, data
      .sized((s) => writePublic(s, template))
      .tpm2b(EMPTY); // outsideInfo
    writePcrSelection(w, []); // creationPCR
    const res = await this.run(TPM_CC.CreatePrimary, [hierarchy], [hierarchyAuth], w, 1);
    const pub = decodePublic(res.params.tpm2b("outPublic"));
    res.params.tpm2b("creationData");
    res.params.tpm2b("creationHash");
    readTicket(res.params, "creationTicket");
    const name = res.params.tpm2b("name");
    res.params.end();
    return { handle: res.handles[0] as number, public: pub, name };
  }

  /** TPM2_Create: a child key of `parent`; returns its private blob (for {@link TpmClient.load}) and public area. */
  async create(parent: number, template: TpmPublicArea, parentAuth: TpmAuth = passwordAuth()): Promise<{ readonly private: Uint8Array; readonly public: TpmPublic }> {
    const w = new TpmWriter()
      .sized((s) => s.tpm2b(EMPTY).tpm2b(EMPTY))
      .sized((s) => writePublic(s, template))
      .tpm2b(EMPTY);
    writePcrSelection(w, []);
    const res = await this.run(TPM_CC.Create, [parent], [parentAuth], w);
    const priv = res.params.tpm2b("outPrivate");
    const pub = decodePublic(res.params.tpm2b("outPublic"));
    res.params.tpm2b("creationData");
    res.params.tpm2b("creationHash");
    readTicket(res.params, "creationTicket");
    res.params.end();
    return { private: priv, public: pub };
  }

  /** TPM2_Load: loads a key made by {@link TpmClient.create} under `parent`. */
  async load(parent: number, privateBlob: Uint8Array, publicArea: TpmPublic, parentAuth: TpmAuth = passwordAuth()): Promise<LoadedKey> {
    const w = new TpmWriter().tpm2b(privateBlob).tpm2b(publicArea.raw);
    const res = await this.run(TPM_CC.Load, [parent], [parentAuth], w, 1);
    const name = res.params.tpm2b("name");
    res.params.end();
    return { handle: res.handles[0] as number, public: publicArea, name };
  }

  /** TPM2_ReadPublic of a loaded object. */
  async readPublic(handle: number): Promise<{ readonly public: TpmPublic; readonly name: Uint8Array }> {
    const res = await this.run(TPM_CC.ReadPublic, [handle], [], EMPTY);
    const pub = decodePublic(res.params.tpm2b("outPublic"));
    const name = res.params.tpm2b("name");
    res.params.tpm2b("qualifiedName");
    res.params.end();
    return { public: pub, name };
  }

  /** TPM2_NV_ReadPublic: an NV index's public area and name. */
  async nvReadPublic(nvIndex: number): Promise<{ readonly public: NvPublic; readonly name: Uint8Array }> {
    const res = await this.run(TPM_CC.NV_ReadPublic, [nvIndex], [], EMPTY);
    const pub = res.params.sized("nvPublic", (r) => ({
      nvIndex: r.u32("nvIndex"),
      nameAlg: r.u16("nameAlg"),
      attributes: r.u32("attributes"),
      authPolicy: r.tpm2b("authPolicy", 64),
      dataSize: r.u16("dataSize"),
    }));
    const name = res.params.tpm2b("nvName");
    res.params.end();
    return { public: pub, name };
  }

  /**
   * Reads a whole NV index with TPM2_NV_Read, in chunks of TPM_PT_NV_BUFFER_MAX,
   * authorizing as the index itself (AUTHREAD) or the owner (OWNERREAD) with
   * an empty password.
   */
  async nvReadAll(nvIndex: number): Promise<Uint8Array> {
    const { public: pub } = await this.nvReadPublic(nvIndex);
    if (pub.dataSize > MAX_NV_READ_BYTES) {
      throw new SigilError("ERR_FAILED_PRECONDITION", `tpm: NV index 0x${nvIndex.toString(16)} holds ${pub.dataSize} bytes, more than ${MAX_NV_READ_BYTES}`);
    }
    let authHandle: number;
    if (pub.attributes & TPMA_NV.AUTHREAD) authHandle = nvIndex;
    else if (pub.attributes & TPMA_NV.OWNERREAD) authHandle = TPM_RH.OWNER;
    else throw new SigilError("ERR_FAILED_PRECONDITION", `tpm: NV index 0x${nvIndex.toString(16)} is readable neither with its own nor the owner's authorization`);
    const chunk = await this.getTpmProperty(TPM_PT.NV_BUFFER_MAX);
    if (chunk === undefined || chunk === 0) throw new SigilError("ERR_INTERNAL", "tpm: the TPM does not report TPM_PT_NV_BUFFER_MAX");
    const out = new Uint8Array(pub.dataSize);
    for (let offset = 0; offset < pub.dataSize; ) {
      const size = Math.min(chunk, pub.dataSize - offset);
      const part = await this.nvRead(authHandle, nvIndex, size, offset);
      if (part.length !== size) throw new SigilError("ERR_INTERNAL", `tpm: TPM2_NV_Read returned ${part.length} bytes for ${size} asked at offset ${offset}`);
      out.set(part, offset);
      offset += size;
    }
    return out;
  }

  /** TPM2_NV_Read of `size` bytes at `offset`. */
  async nvRead(authHandle: number, nvIndex: number, size: number, offset: number, auth: TpmAuth = passwordAuth()): Promise<Uint8Array> {
    const res = await this.run(TPM_CC.NV_Read, [authHandle, nvIndex], [auth], new TpmWriter().u16(size).u16(offset));
    const data = res.params.tpm2b("data");
    res.params.end();
    return data;
  }

  /**
   * TPM2_GetCapability. Returns `moreData` and a reader over the
   * TPMS_CAPABILITY_DATA union member (after the capability field).
   */
  async getCapability(capability: number, property: number, count: number): Promise<{ readonly moreData: boolean; readonly data: TpmReader }> {
    const res = await this.run(TPM_CC.GetCapability, [], [], new TpmWriter().u32(capability).u32(property).u32(count));
    const moreData = res.params.u8("moreData") !== 0;
    const cap = res.params.u32("capabilityData.capability");
    if (cap !== capability) throw new SigilError("ERR_INTERNAL", `tpm: TPM2_GetCapability answered capability ${cap} for ${capability}`);
    return { moreData, data: res.params };
  }

  /** One fixed or variable TPM property (TPM_PT), or undefined when the TPM does not have it. */
  async getTpmProperty(property: number): Promise<number | undefined> {
    const { data } = await this.getCapability(TPM_CAP.TPM_PROPERTIES, property, 1);
    const count = data.u32("tpmProperties.count");
    if (count === 0) return undefined;
    const pt = data.u32("tpmProperties[0].property");
    const value = data.u32("tpmProperties[0].value");
    return pt === property ? value : undefined;
  }

  /** Handles of one type in use (`first` is the type's first handle, e.g. 0x80000000 for transient objects). */
  async getHandles(first: number): Promise<number[]> {
    const out: number[] = [];
    let next = first;
    const top = (first & 0xff000000) >>> 0;
    for (;;) {
      const { moreData, data } = await this.getCapability(TPM_CAP.HANDLES, next, 64);
      const count = data.u32("handles.count");
      if (count > 256) throw new SigilError("ERR_INTERNAL", `tpm: TPM2_GetCapability listed ${count} handles in one answer`);
      for (let i = 0; i < count; i++) {
        const h = data.u32(`handles[${i}]`);
        if ((h & 0xff000000) >>> 0 === top) out.push(h);
      }
      const last = out[out.length - 1];
      if (!moreData || last === undefined || count === 0) return out;
      next = last + 1;
    }
  }

  /** The PCR banks the TPM has allocated, with their PCRs. */
  async getPcrBanks(): Promise<PcrSelection[]> {
    const { data } = await this.getCapability(TPM_CAP.PCRS, 0, 1);
    return readPcrSelection(data, "assignedPCR");
  }

  /**
   * TPM2_StartAuthSession for a policy session: unbound, unsalted, no
   * parameter encryption, SHA-256. Returns the session handle (flush it if the
   * command it authorizes fails, since only success ends it).
   */
  async startPolicySession(): Promise<number> {
    const w = new TpmWriter()
      .tpm2b(randomBytes(32)) // nonceCaller
      .tpm2b(EMPTY) // encryptedSalt
      .u8(0x01) // TPM_SE_POLICY
      .u16(0x0010) // symmetric: TPM_ALG_NULL
      .u16(0x000b); // authHash: SHA-256
    const res = await this.run(TPM_CC.StartAuthSession, [TPM_RH.NULL, TPM_RH.NULL], [], w, 1);
    res.params.tpm2b("nonceTPM");
    res.params.end();
    return res.handles[0] as number;
  }

  /**
   * TPM2_PolicySecret: extends `session`'s policy with the authorization of
   * `authHandle` (TPM_RH.ENDORSEMENT for an EK), proven with `auth`.
   */
  async policySecret(authHandle: number, session: number, auth: TpmAuth = passwordAuth()): Promise<void> {
    const w = new TpmWriter()
      .tpm2b(EMPTY) // nonceTPM: no expiration, so not needed
      .tpm2b(EMPTY) // cpHashA
      .tpm2b(EMPTY) // policyRef
      .i32(0); // expiration
    const res = await this.run(TPM_CC.PolicySecret, [authHandle, session], [auth], w);
    res.params.tpm2b("timeout");
    readTicket(res.params, "policyTicket");
    res.params.end();
  }

  /**
   * TPM2_ActivateCredential: recovers the credential that was sealed to the
   * object named `activateHandle`'s name with the key `keyHandle` (the EK).
   * `credentialBlob` and `secret` are the contents of the TPM2B_ID_OBJECT and
   * TPM2B_ENCRYPTED_SECRET, without their sizes.
   */
  async activateCredential(
    activateHandle: number,
    keyHandle: number,
    activateAuth: TpmAuth,
    keyAuth: TpmAuth,
    credentialBlob: Uint8Array,
    secret: Uint8Array,
  ): Promise<Uint8Array> {
    const res = await this.run(TPM_CC.ActivateCredential, [activateHandle, keyHandle], [activateAuth, keyAuth], new TpmWriter().tpm2b(credentialBlob).tpm2b(secret));
    const certInfo = res.params.tpm2b("certInfo", 64);
    res.params.end();
    return certInfo;
  }

  /**
   * TPM2_Quote with the key's own scheme over `pcrs`, `qualifyingData` as
   * extraData. Returns the TPMS_ATTEST bytes and the TPMT_SIGNATURE bytes.
   */
  async quote(signHandle: number, qualifyingData: Uint8Array, pcrs: readonly PcrSelection[], auth: TpmAuth = passwordAuth()): Promise<{ readonly attest: Uint8Array; readonly signature: Uint8Array }> {
    const w = new TpmWriter().tpm2b(qualifyingData).u16(0x0010); // inScheme: TPM_ALG_NULL, the key's scheme
    writePcrSelection(w, pcrs);
    const res = await this.run(TPM_CC.Quote, [signHandle], [auth], w);
    const attest = res.params.tpm2b("quoted");
    const signature = res.params.bytes(res.params.remaining, "signature");
    decodeSignature(signature);
    return { attest, signature };
  }

  /**
   * TPM2_PCR_Read of every selected PCR, in as many calls as the TPM needs
   * (it returns at most 8 digests each). Values come back per bank, indices
   * ascending. A PCR the TPM does not have fails with the bank and index named.
   */
  async pcrRead(pcrs: readonly PcrSelection[]): Promise<Array<{ readonly hash: number; readonly index: number; readonly value: Uint8Array }>> {
    const want = new Map<number, Set<number>>();
    for (const s of pcrs) {
      const set = want.get(s.hash) ?? new Set<number>();
      for (const i of s.indices) set.add(i);
      want.set(s.hash, set);
    }
    const got = new Map<string, Uint8Array>();
    for (let calls = 0; [...want.values()].some((s) => s.size > 0); calls++) {
      if (calls >= MAX_PCR_READ_CALLS) throw new SigilError("ERR_INTERNAL", "tpm: TPM2_PCR_Read does not progress");
      const request: PcrSelection[] = [...want].filter(([, s]) => s.size > 0).map(([hash, s]) => ({ hash, indices: [...s].sort((a, b) => a - b) }));
      const w = new TpmWriter();
      writePcrSelection(w, request);
      const res = await this.run(TPM_CC.PCR_Read, [], [], w);
      res.params.u32("pcrUpdateCounter");
      const out = readPcrSelection(res.params, "pcrSelectionOut");
      const count = res.params.u32("pcrValues.count");
      const values: Uint8Array[] = [];
      for (let i = 0; i < count; i++) values.push(res.params.tpm2b(`pcrValues[${i}]`, 64));
      res.params.end();
      let k = 0;
      for (const s of out) {
        for (const i of s.indices) {
          const v = values[k++];
          if (v === undefined || !want.get(s.hash)?.has(i)) throw new SigilError("ERR_INTERNAL", "tpm: TPM2_PCR_Read returned values that do not match its selection");
          got.set(`${s.hash}:${i}`, v);
          want.get(s.hash)?.delete(i);
        }
      }
      if (k !== values.length) throw new SigilError("ERR_INTERNAL", "tpm: TPM2_PCR_Read returned more values than it selected");
      if (k === 0) {
        const [hash, s] = [...want].find(([, set]) => set.size > 0) as [number, Set<number>];
        throw new SigilError("ERR_FAILED_PRECONDITION", `tpm: the TPM has no PCR ${[...s].join(",")} in bank 0x${hash.toString(16)} (bank not allocated?)`);
      }
    }
    const result: Array<{ hash: number; index: number; value: Uint8Array }> = [];
    for (const s of pcrs) {
      for (const i of [...new Set(s.indices)].sort((a, b) => a - b)) result.push({ hash: s.hash, index: i, value: got.get(`${s.hash}:${i}`) as Uint8Array });
    }
    return result;
  }

  /** TPM2_FlushContext: unloads a transient object or ends a session. */
  async flushContext(handle: number): Promise<void> {
    const res = await this.run(TPM_CC.FlushContext, [], [], new TpmWriter().u32(handle));
    res.params.end();
  }
}

/** Skips a TPMT_TK_CREATION / TPMT_TK_AUTH: tag, hierarchy, digest. */
function readTicket(r: TpmReader, field: string): void {
  r.u16(`${field}.tag`);
  r.u32(`${field}.hierarchy`);
  r.tpm2b(`${field}.digest`, 64);
}
