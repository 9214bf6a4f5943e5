/**
 * What the `k8s_psat` agent half sends and the server half reads: a JSON
 * object `{"cluster": "<name>", "token": "<projected service account token>"}`
 * (SPIRE's field names). The token is opaque here: the server never reads its
 * claims, it asks the cluster's API server about it (TokenReview).
 */
import { z } from "zod";
import { SigilError } from "../../../spiffe/errors.js";

/** The plugin name: the AttestationData type and the selector type. */
export const K8S_PSAT_ATTESTOR = "k8s_psat";

/** Largest payload accepted, in bytes (a projected token is a JWT of a few KiB). */
export const MAX_K8S_PSAT_PAYLOAD_BYTES = 64 * 1024;

// A cluster name is a path segment of the agent ID (`…/k8s_psat/<cluster>/<node UID>`).
const CLUSTER_NAME_RE = /^[A-Za-z0-9_-][A-Za-z0-9._-]*$/;
// A JWT in compact form: base64url segments separated by dots; nothing else is a projected token.
const TOKEN_RE = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]*)*$/;

/** Why `name` cannot be a cluster name, or undefined when it can. */
export function clusterNameProblem(name: string): string | undefined {
  if (name.length === 0) return "is empty";
  if (name.length > 63) return "is longer than 63 characters";
  if (!CLUSTER_NAME_RE.test(name) || name === "." || name === "..") return "may contain only A-Z a-z 0-9 . _ - and may not start with a dot (it becomes a path segment of the agent ID)";
  return undefined;
}

/** A cluster name, as both halves' config schemas take it. */
export const clusterName = z.string().superRefine((value, ctx) => {
  const problem = clusterNameProblem(value);
  if (problem !== undefined) ctx.addIssue({ code: "custom", message: `cluster name ${problem}` });
});

/** A decoded attestation payload. */
export interface K8sPsatPayload {
  readonly cluster: string;
  readonly token: string;
}

function invalid(message: string): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `k8s_psat: malformed attestation payload: ${message}`);
}

/** Encodes the payload the agent sends. */
export function encodeK8sPsatPayload(p: K8sPsatPayload): Uint8Array {
  return Buffer.from(JSON.stringify({ cluster: p.cluster, token: p.token }), "utf8");
}

/**
 * Decodes and checks the shape of a payload (not the token's validity: that
 * is the API server's to say).
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming what is wrong
 */
export function parseK8sPsatPayload(payload: Uint8Array): K8sPsatPayload {
  if (payload.byteLength === 0) throw invalid("it is empty");
  if (payload.byteLength > MAX_K8S_PSAT_PAYLOAD_BYTES) throw invalid(`it is larger than ${MAX_K8S_PSAT_PAYLOAD_BYTES} bytes (${payload.byteLength})`);
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload));
  } catch {
    throw invalid('it is not a UTF-8 JSON object {"cluster": …, "token": …}');
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw invalid('it is not a JSON object {"cluster": …, "token": …}');
  const { cluster, token } = doc as Record<string, unknown>;
  if (typeof cluster !== "string") throw invalid('"cluster" is missing or not a string');
  const problem = clusterNameProblem(cluster);
  if (problem !== undefined) throw invalid(`"cluster" ${problem}`);
  if (typeof token !== "string" || token.length === 0) throw invalid('"token" is missing or empty');
  if (!TOKEN_RE.test(token)) throw invalid('"token" is not a JWT in compact form');
  return { cluster, token };
}
