/**
 * The Workload Endpoint reads requests no larger than the Workload API needs.
 * Every request message is buffered whole before it is decoded, so with the
 * gRPC default of 4 MiB a local user could park a nearly complete 4 MiB
 * message on each of its open calls and hold gigabytes of agent memory.
 */
import http2 from "node:http2";
import net from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { MAX_WORKLOAD_REQUEST_BYTES } from "../../../../agent/endpoints/server.js";
import { JWTSVIDRequestSchema, ValidateJWTSVIDRequestSchema } from "../../../../proto/gen/spiffe/workload_pb.js";
import { FakeWorkloadCache, ownUidSelector, startTestAgentEndpoint, type TestAgentEndpoint } from "../../../fakes/fake-workload-cache.js";

let ep: TestAgentEndpoint | undefined;
afterEach(async () => {
  await ep?.close();
  ep = undefined;
});

/** Sends one framed request and resolves with the call's gRPC status. */
function unary(socketPath: string, method: string, body: Uint8Array): Promise<{ code: number; details: string }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect("http://localhost", { createConnection: () => net.connect(socketPath) });
    session.on("error", reject);
    const stream = session.request({ ":method": "POST", ":path": `/SpiffeWorkloadAPI/${method}`, "content-type": "application/grpc", te: "trailers", "workload.spiffe.io": "true" });
    let headers: Record<string, unknown> = {};
    stream.on("response", (h) => (headers = { ...headers, ...h }));
    stream.on("trailers", (t) => (headers = { ...headers, ...t }));
    stream.on("data", () => undefined);
    stream.on("error", () => undefined);
    stream.on("close", () => {
      session.close();
      resolve({ code: Number(headers["grpc-status"] ?? -1), details: decodeURIComponent(String(headers["grpc-message"] ?? "")) });
    });
    const frame = Buffer.alloc(5 + body.length);
    frame.writeUInt32BE(body.length, 1);
    frame.set(body, 5);
    stream.end(frame);
  });
}

describe("Workload Endpoint request size", () => {
  it(`refuses a request over ${MAX_WORKLOAD_REQUEST_BYTES} bytes with ResourceExhausted, and serves the largest real one`, async () => {
    const cache = new FakeWorkloadCache();
    cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ownUidSelector()] });
    ep = await startTestAgentEndpoint({ cache });
    const huge = toBinary(ValidateJWTSVIDRequestSchema, create(ValidateJWTSVIDRequestSchema, { audience: "a", svid: "x".repeat(MAX_WORKLOAD_REQUEST_BYTES) }));
    expect(await unary(ep.socketPath, "ValidateJWTSVID", huge)).toMatchObject({ code: status.RESOURCE_EXHAUSTED });
    // What the server accepts at most: 32 audiences of 1024 bytes.
    const audiences = Array.from({ length: 32 }, (_, i) => `${i}`.padEnd(1024, "a"));
    const largest = toBinary(JWTSVIDRequestSchema, create(JWTSVIDRequestSchema, { audience: audiences }));
    expect(await unary(ep.socketPath, "FetchJWTSVID", largest)).toMatchObject({ code: status.OK });
  });
});
