/**
 * `sigil.admin.v1.LogAdmin`: the issuance transparency log's latest
 * checkpoint, inclusion proofs of single credentials and key rotation, for
 * `sigil-server log checkpoint|prove|rotate-key`. Without `transparency_log.enabled` every call fails
 * with FailedPrecondition saying so (the service stays registered, so the
 * CLI gets that message rather than Unimplemented).
 */
import { create } from "@bufbuild/protobuf";
import {
  LogCheckpointSchema,
  ProveLogEntryResponseSchema,
  RotateLogKeyResponseSchema,
  type GetLogCheckpointRequest,
  type LogAdmin,
  type LogCheckpoint,
  type ProveLogEntryRequest,
  type ProveLogEntryResponse,
  type RotateLogKeyRequest,
  type RotateLogKeyResponse,
} from "../../../proto/gen/sigil/admin/v1/admin_pb.js";
import { isSigilError, SigilError } from "../../../spiffe/errors.js";
import type { GrpcServiceImplementation } from "../../../spiffe/grpc/service.js";
import { canonicalSerialHex } from "../../../spiffe/x509/serial.js";
import type { TlogReadView } from "../../tlog/types.js";
import type { UnaryWrapper } from "../unary.js";
import { invalidField } from "./common.js";

type LogMethods = (typeof LogAdmin)["method"];

/** The log as LogAdmin uses it: the read view and, when the log service offers it, key rotation. */
export type LogAdminView = TlogReadView & { readonly rotateKey?: () => Promise<string> };

const SERIAL_RE = /^[0-9a-f]{1,40}$/;
const SHA256_RE = /^[0-9a-f]{64}$/;

function enabled(view: (() => LogAdminView | undefined) | undefined): LogAdminView {
  if (view === undefined) throw new SigilError("ERR_FAILED_PRECONDITION", "log admin: the transparency log is not enabled (transparency_log.enabled in the server config)");
  const v = view();
  if (v === undefined) throw new SigilError("ERR_UNAVAILABLE", "log admin: the transparency log has not started yet");
  return v;
}

/** The lookup of a Prove request, validated: one of `serial` (hex) or `jwt_sha256` (64 hex digits). */
export function proveLookup(req: ProveLogEntryRequest): { readonly serial: string } | { readonly jwtSha256: string } {
  const l = req.lookup;
  if (l.case === "serial") {
    // Any hex spelling of the serial finds the entry: the log writes it lower-case without leading zeroes.
    const s = canonicalSerialHex(l.value.trim().replace(/:/g, ""));
    if (!SERIAL_RE.test(s)) throw invalidField("serial", `must be a hex serial number of at most 20 bytes, got ${JSON.stringify(l.value.slice(0, 80))}`);
    return { serial: s };
  }
  if (l.case === "jwtSha256") {
    const h = l.value.trim().toLowerCase();
    if (!SHA256_RE.test(h)) throw invalidField("jwt_sha256", `must be 64 hex digits (SHA-256 of the compact JWT), got ${JSON.stringify(l.value.slice(0, 80))}`);
    return { jwtSha256: h };
  }
  throw invalidField("lookup", "give serial or jwt_sha256");
}

/** Builds the LogAdmin service implementation over the log's read view, once its service started (undefined: the log is off). */
export function createLogAdmin(view: (() => LogAdminView | undefined) | undefined, unary: UnaryWrapper): GrpcServiceImplementation<LogMethods> {
  return {
    getCheckpoint: unary<GetLogCheckpointRequest, LogCheckpoint>("GetCheckpoint", async () => {
      const v = enabled(view);
      const cp = v.latestCheckpoint();
      if (cp === undefined) throw new SigilError("ERR_NOT_FOUND", "log admin: no checkpoint has been signed yet");
      const res = create(LogCheckpointSchema, { origin: v.origin, note: cp.note, size: BigInt(cp.size), rootHash: cp.rootHash, verifierKeys: [...(await v.verifierKeys())] });
      return { res, details: { size: cp.size } };
    }),
    prove: unary<ProveLogEntryRequest, ProveLogEntryResponse>("Prove", async (req) => {
      const v = enabled(view);
      const lookup = proveLookup(req);
      const what = "serial" in lookup ? `serial ${lookup.serial}` : `JWT with SHA-256 ${lookup.jwtSha256}`;
      let found;
      try {
        found = await v.prove(lookup);
      } catch (e) {
        // "Not logged" is an undefined answer; a thrown NOT_FOUND is a tile of the proof missing from storage.
        if (isSigilError(e, "ERR_NOT_FOUND")) throw new SigilError("ERR_INTERNAL", `log admin: proving the credential with ${what}: ${e.message} (the log's storage is inconsistent)`, { cause: e });
        throw e;
      }
      if (found === undefined) throw new SigilError("ERR_NOT_FOUND", `log admin: no logged credential with ${what} is covered by a checkpoint yet`);
      const res = create(ProveLogEntryResponseSchema, { index: BigInt(found.index), entry: found.entry, proof: [...found.proof], checkpoint: found.checkpoint });
      return { res, details: { ...lookup, index: found.index } };
    }),
    rotateKey: unary<RotateLogKeyRequest, RotateLogKeyResponse>("RotateKey", async () => {
      const v = enabled(view);
      if (v.rotateKey === undefined) throw new SigilError("ERR_FAILED_PRECONDITION", "log admin: this log service cannot rotate its key");
      const vkey = await v.rotateKey();
      return { res: create(RotateLogKeyResponseSchema, { verifierKey: vkey }), details: { verifier_key: vkey } };
    }),
  };
}
