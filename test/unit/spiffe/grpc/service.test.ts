import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import {
  JWTSVIDRequestSchema,
  SpiffeWorkloadAPI,
  X509SVIDResponseSchema,
} from "../../../../proto/gen/spiffe/workload_pb.js";
import { grpcServiceDefinition } from "../../../../spiffe/grpc/service.js";

describe("grpcServiceDefinition", () => {
  const def = grpcServiceDefinition(SpiffeWorkloadAPI);

  it("builds paths without a package and streaming flags from the method kind", () => {
    expect(def.fetchX509SVID).toMatchObject({
      path: "/SpiffeWorkloadAPI/FetchX509SVID",
      requestStream: false,
      responseStream: true,
      originalName: "FetchX509SVID",
    });
    expect(def.fetchJWTSVID).toMatchObject({ path: "/SpiffeWorkloadAPI/FetchJWTSVID", requestStream: false, responseStream: false });
  });

  it("round-trips messages through the protobuf binary codecs", () => {
    const req = create(JWTSVIDRequestSchema, { audience: ["a", "b"], spiffeId: "spiffe://example.org/x" });
    const wire = def.fetchJWTSVID.requestSerialize(req);
    expect(Buffer.isBuffer(wire)).toBe(true);
    expect(def.fetchJWTSVID.requestDeserialize(wire)).toMatchObject({ audience: ["a", "b"], spiffeId: "spiffe://example.org/x" });

    const resp = create(X509SVIDResponseSchema, { federatedBundles: { "spiffe://b.test": new Uint8Array([1, 2, 3]) } });
    const back = def.fetchX509SVID.responseDeserialize(def.fetchX509SVID.responseSerialize(resp));
    expect(back.federatedBundles["spiffe://b.test"]).toEqual(new Uint8Array([1, 2, 3]));
  });
});
