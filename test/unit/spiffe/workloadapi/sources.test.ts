import { status } from "@grpc/grpc-js";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { isSigilError } from "../../../../spiffe/errors.js";
import { createWorkloadApiClient, type WorkloadApiClient } from "../../../../spiffe/workloadapi/client.js";
import { isWorkloadApiError } from "../../../../spiffe/workloadapi/errors.js";
import { JwtSource } from "../../../../spiffe/workloadapi/jwt-source.js";
import { X509Source } from "../../../../spiffe/workloadapi/x509-source.js";
import {
  createTestCa,
  FakeWorkloadApi,
  issueTestX509Svid,
  x509SvidEntry,
  x509SvidResponse,
  type TestCa,
  type TestX509Svid,
} from "../../../fakes/fake-workload-api.js";
import { requireTool } from "../../../support/tools.js";

const haveOpenssl = requireTool("openssl", ["version"], "test certificates");
const FAST = { initialDelayMs: 1, maxDelayMs: 5, multiplier: 2 };

let ca: TestCa;
let svid: TestX509Svid;
let fake: FakeWorkloadApi;
let client: WorkloadApiClient;

beforeAll(() => {
  if (!haveOpenssl) return;
  ca = createTestCa("a.test");
  svid = issueTestX509Svid(ca, "spiffe://a.test/web");
});
beforeEach(async () => {
  if (!haveOpenssl) return;
  fake = await FakeWorkloadApi.start();
  client = createWorkloadApiClient({ address: fake.address, backoff: FAST });
});
afterEach(async () => {
  if (!haveOpenssl) return;
  client.close();
  await fake.close();
});

describe.skipIf(!haveOpenssl)("X509Source / JwtSource lifecycle", () => {
  it("create() rejects when the watch stops before the first update", async () => {
    fake.x509Svid.failNext({ code: status.INVALID_ARGUMENT, details: "security header missing from request" });
    const err = await X509Source.create({ client }).catch((e: unknown) => e);
    expect(isSigilError(err, "ERR_WORKLOAD_API")).toBe(true);
    expect((err as Error).message).toMatch(/x509 source: watch stopped before the first update.*INVALID_ARGUMENT/);
    expect(isWorkloadApiError((err as Error).cause, status.INVALID_ARGUMENT)).toBe(true);
  });

  it("create() rejects when its signal aborts while the server has nothing to send", async () => {
    const controller = new AbortController();
    const pending = X509Source.create({ client, signal: controller.signal });
    await fake.x509Svid.waitForOpened(1);
    controller.abort();
    await expect(pending).rejects.toThrow(/gave up waiting for the first update/);
  });

  it("a source given a client leaves it open; one made from clientOptions closes its own", async () => {
    fake.x509Svid.push(x509SvidResponse({ svids: [x509SvidEntry(svid, ca)] }));
    const borrowed = await X509Source.create({ client });
    borrowed.close();
    borrowed.close(); // idempotent
    expect(() => borrowed.getX509Svid()).toThrow(/x509 source is closed/);
    await expect(client.fetchX509Context()).resolves.toBeDefined();

    const owned = await X509Source.create({ clientOptions: { address: fake.address } });
    expect(owned.getX509Svid().id.toString()).toBe("spiffe://a.test/web");
    owned.close();
  });

  it("JwtSource.create() rejects on Unimplemented (no retry)", async () => {
    fake.jwtBundles.failNext({ code: status.UNIMPLEMENTED, details: "no JWT profile" });
    await expect(JwtSource.create({ client })).rejects.toThrow(/jwt source: watch stopped before the first update/);
    expect(fake.jwtBundles.openedCount).toBe(1);
  });
});
