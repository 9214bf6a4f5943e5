/**
 * The shared unary wrapper (server/api/unary.ts) used by the admin and agent
 * APIs: status mapping, audit records on success and failure, internal errors
 * hidden from the caller but logged.
 */
import { status, type handleUnaryCall, type ServerErrorResponse, type ServerUnaryCall, type StatusObject } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { createUnaryWrapper } from "../../../../server/api/unary.js";
import { SigilError } from "../../../../spiffe/errors.js";

function harness(auditEnabled = true) {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ level: "warn", destination: { write: (l) => lines.push(JSON.parse(l) as Record<string, unknown>) } });
  const unary = createUnaryWrapper({ log, auditEnabled, name: "test api", service: "sigil.test.v1.Svc" });
  return { lines, unary };
}

/** Invokes a wrapped handler the way grpc-js does and resolves with its callback arguments. */
function invoke<Req, Res>(handler: handleUnaryCall<Req, Res>, request: Req): Promise<{ err: Partial<StatusObject> | ServerErrorResponse | null; res: Res | undefined }> {
  return new Promise((resolve) => handler({ request } as ServerUnaryCall<Req, Res>, (err, res) => resolve({ err, res: res ?? undefined })));
}

describe("createUnaryWrapper", () => {
  it("returns the response and audits the call with the handler's details, even at log level warn", async () => {
    const { lines, unary } = harness();
    const h = unary<{ id: string }, string>("Get", async (req, _call, ctx) => {
      ctx.details.entry_id = req.id;
      return { res: `got ${req.id}`, caller: "spiffe://example.org/admin" };
    });
    expect(await invoke(h, { id: "e1" })).toEqual({ err: null, res: "got e1" });
    expect(lines).toEqual([expect.objectContaining({ type: "audit", method: "/sigil.test.v1.Svc/Get", status: "success", entry_id: "e1", caller_id: "spiffe://example.org/admin" })]);
  });

  it("maps a SigilError to its status and audits the failure with the details gathered so far", async () => {
    const { lines, unary } = harness();
    const h = unary<{ id: string }, string>("Get", async (req, _call, ctx) => {
      ctx.details.entry_id = req.id;
      throw new SigilError("ERR_NOT_FOUND", `id: entry "${req.id}" not found`);
    });
    const { err } = await invoke(h, { id: "e2" });
    expect(err).toMatchObject({ code: status.NOT_FOUND, details: 'id: entry "e2" not found' });
    expect(lines).toEqual([expect.objectContaining({ status: "error", status_code: "NOT_FOUND", status_message: 'id: entry "e2" not found', entry_id: "e2" })]);
  });

  it("hides an unexpected error from the caller but logs it", async () => {
    const { lines, unary } = harness();
    const h = unary<object, string>("Boom", () => {
      throw new Error("database file /secret/path is corrupt");
    });
    const { err } = await invoke(h, {});
    expect(err).toMatchObject({ code: status.INTERNAL, details: "internal error" });
    expect(lines.map((l) => l.type ?? l.level)).toEqual(["audit", "error"]);
    expect(lines[0]).toMatchObject({ status_code: "INTERNAL", status_message: "internal error" });
    expect(JSON.stringify(lines[1])).toContain("/secret/path");
  });

  it("writes no audit record when auditing is off", async () => {
    const { lines, unary } = harness(false);
    await invoke(unary<object, string>("Get", async () => ({ res: "ok" })), {});
    expect(lines).toEqual([]);
  });
});
