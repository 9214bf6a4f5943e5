/**
 * A minimal agent-side client of the server's agent API for integration tests:
 * attests with a join token over TLS, then calls the API with its agent SVID
 * as client certificate (mTLS), exactly as the agent does on the wire.
 */
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { Client, credentials, Metadata, type ChannelCredentials, type ServiceError } from "@grpc/grpc-js";
import { createUnaryClient, type UnaryClient } from "../../../common/rpc/unary-client.js";
import { AgentAPI, AttestAgentRequestSchema, type AttestAgentResponse } from "../../../proto/gen/sigil/agent/v1/agent_pb.js";
import { parseSpiffeBundle } from "../../../spiffe/bundle/spiffe-bundle.js";
import { buildCsr } from "../../../spiffe/csr.js";
import { parseTrustDomain } from "../../../spiffe/id.js";
import { grpcServiceDefinition } from "../../../spiffe/grpc/service.js";
import { encodePemCertificates } from "../../../spiffe/pem.js";
import type { RunningServer } from "../../../server/main.js";

type AgentMethods = (typeof AgentAPI)["method"];

/** TLS credentials trusting `rootsPem`; the server's SPIFFE ID is checked by the real agent, not here. */
export function tlsCredentials(rootsPem: string, identity?: { keyPem: string; certPem: string }): ChannelCredentials {
  return credentials.createSsl(
    Buffer.from(rootsPem),
    identity ? Buffer.from(identity.keyPem) : null,
    identity ? Buffer.from(identity.certPem) : null,
    { checkServerIdentity: () => undefined },
  );
}

/** The own bundle's X.509 roots as PEM, from `bundle show --output json`. */
export function rootsPemFromBundleJson(bundleShowJson: string, td = "example.org"): string {
  const doc = JSON.parse(bundleShowJson) as { spiffe_bundle_json: string };
  return encodePemCertificates(parseSpiffeBundle(doc.spiffe_bundle_json, parseTrustDomain(td)).bundle.x509Authorities);
}

/** Result of an attestation. */
export interface Attested {
  readonly spiffeId: string;
  readonly key: KeyObject;
  readonly chain: Uint8Array[];
  /** A client that authenticates with the agent SVID. */
  readonly api: UnaryClient<AgentMethods>;
}

/** Runs AttestAgent with a join token; rejects with the server's ServiceError on refusal. */
export function attestWithJoinToken(address: string, rootsPem: string, token: string, csrOverride?: Uint8Array): Promise<Attested> {
  return attestAgent(address, rootsPem, { type: "join_token", payload: Buffer.from(token) }, csrOverride);
}

/**
 * Runs AttestAgent with any node attestor's data; rejects with the server's
 * ServiceError on refusal. `answer` answers the server's challenges (TPM);
 * when it throws, the call is cancelled and the promise rejects with that error.
 */
export async function attestAgent(
  address: string,
  rootsPem: string,
  data: { type: string; payload: Uint8Array },
  csrOverride?: Uint8Array,
  answer?: (challenge: Uint8Array) => Promise<Uint8Array>,
): Promise<Attested> {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const def = grpcServiceDefinition(AgentAPI).attestAgent;
  const client = new Client(address, tlsCredentials(rootsPem));
  const result = await new Promise<AttestAgentResponse>((resolve, reject) => {
    const call = client.makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, new Metadata(), {
      deadline: new Date(Date.now() + 30_000),
    });
    call.on("data", (m: AttestAgentResponse) => {
      if (m.step.case !== "challenge" || answer === undefined) return resolve(m);
      answer(m.step.value).then(
        (response) => call.write(create(AttestAgentRequestSchema, { step: { case: "challengeResponse", value: response } })),
        (e: unknown) => {
          reject(e);
          call.cancel();
        },
      );
    });
    call.on("error", (e: ServiceError) => reject(e));
    call.write(
      create(AttestAgentRequestSchema, {
        step: { case: "params", value: { data, csr: csrOverride ?? buildCsr(privateKey) } },
      }),
    );
  }).finally(() => client.close());
  if (result.step.case !== "result") throw new Error("expected an attestation result");
  const svid = result.step.value.svid;
  const chain = svid?.certChain ?? [];
  const api = createUnaryClient(
    AgentAPI,
    address,
    tlsCredentials(rootsPem, { keyPem: privateKey.export({ format: "pem", type: "pkcs8" }).toString(), certPem: encodePemCertificates(chain) }),
    { "grpc-node.flow_control_window": 4 << 20 },
  );
  return { spiffeId: svid?.spiffeId ?? "", key: privateKey, chain, api };
}

/**
 * Attests a new agent against an in-process server: a fresh join token named
 * after `name`, valid for ten minutes from `now` (the server's clock).
 */
export async function attestInProcess(server: RunningServer, now: Date, name: string): Promise<Attested> {
  const token = `${name}-${Math.random().toString(36).slice(2)}`;
  await server.datastore.createJoinToken({ token, expiresAt: new Date(now.getTime() + 600_000) });
  return attestWithJoinToken(server.agentApiAddress, encodePemCertificates(server.ca.bundle().x509Authorities), token);
}

/** The error a call is refused with; throws when it succeeds. */
export async function refusal(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (e) {
    return e as ServiceError;
  }
  throw new Error("expected the call to be refused");
}

