/**
 * A Workload API stream whose client stops reading must not make the agent
 * hold every update it would have sent: each message is the complete state
 * (WAPI-5), so while the client lags the agent keeps only the message already
 * on its way and sends the latest state once the client reads again.
 * Otherwise a local user could open streams, never read them, and have the
 * agent buffer one more message per stream on every rotation until it runs
 * out of memory.
 */
import { once } from "node:events";
import http2 from "node:http2";
import net from "node:net";
import { fromBinary } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it } from "vitest";
import { X509SVIDResponseSchema } from "../../../../proto/gen/spiffe/workload_pb.js";
import { FakeWorkloadCache, ownUidSelector, startTestAgentEndpoint, type TestAgentEndpoint } from "../../../fakes/fake-workload-cache.js";

const ROTATIONS = 200;

let ep: TestAgentEndpoint | undefined;
afterEach(async () => {
  await ep?.close();
  ep = undefined;
});

/** Reads gRPC messages from a stream's data, whole frames only. */
function frames(onMessage: (body: Uint8Array) => void): (chunk: Buffer) => void {
  let buf = Buffer.alloc(0);
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 5 && buf.length >= 5 + buf.readUInt32BE(1)) {
      const len = buf.readUInt32BE(1);
      onMessage(buf.subarray(5, 5 + len));
      buf = buf.subarray(5 + len);
    }
  };
}

describe("a FetchX509SVID stream whose client does not read", () => {
  it(`gets the latest state once it reads again, not each of ${ROTATIONS} rotations it missed`, async () => {
    const cache = new FakeWorkloadCache();
    const identity = cache.addIdentity({ spiffeId: "spiffe://example.org/web", selectors: [ownUidSelector()] });
    ep = await startTestAgentEndpoint({ cache });
    const { socketPath } = ep;
    // A stream window of 0: the agent can send nothing until the client says so.
    const session = http2.connect("http://localhost", { createConnection: () => net.connect(socketPath), settings: { initialWindowSize: 0 } });
    try {
      await once(session, "remoteSettings");
      const stream = session.request({
        ":method": "POST",
        ":path": "/SpiffeWorkloadAPI/FetchX509SVID",
        "content-type": "application/grpc",
        te: "trailers",
        "workload.spiffe.io": "true",
      });
      stream.end(Buffer.alloc(5));
      const serials: string[] = [];
      stream.on("data", frames((body) => serials.push(Buffer.from(fromBinary(X509SVIDResponseSchema, body).svids[0]?.x509Svid ?? []).toString("hex"))));
      await cache.waitForListeners(1);
      let latest = "";
      for (let i = 0; i < ROTATIONS; i++) {
        latest = Buffer.from(cache.rotate(identity.entry.id).chain[0] ?? []).toString("hex");
        // One push per rotation: let the stream's coalesced update run.
        await new Promise((r) => setImmediate(r));
      }
      session.settings({ initialWindowSize: 1 << 20 });
      while (!serials.some((s) => s.startsWith(latest))) await once(stream, "data");
      // The message already on its way when the client stopped reading, then the latest state.
      expect(serials.length).toBe(2);
      stream.close();
    } finally {
      session.destroy();
    }
  });
});
