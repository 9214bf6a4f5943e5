import { describe, expect, it } from "vitest";
import { audit, createLogger, getLogLevel, setLogLevel, subsystemLogger } from "../../../common/log.js";
import { isSigilError } from "../../../spiffe/errors.js";

function capture(level: "debug" | "info" | "warn" | "error", format: "json" | "text" = "json") {
  const lines: string[] = [];
  const log = createLogger({ level, format, destination: { write: (l) => void lines.push(l) } });
  const records = (): Array<Record<string, unknown>> => lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  return { log, lines, records };
}

describe("createLogger", () => {
  it("writes JSON lines with a string level, an ISO time and msg", () => {
    const { log, lines, records } = capture("info");
    subsystemLogger(log, "ca_manager").info({ slot: "A" }, "X.509 CA prepared");
    expect(lines).toHaveLength(1);
    expect(lines[0]?.endsWith("\n")).toBe(true);
    const rec = records()[0] as Record<string, unknown>;
    expect(rec).toMatchObject({ level: "info", subsystem_name: "ca_manager", slot: "A", msg: "X.509 CA prepared" });
    expect(new Date(rec["time"] as string).toISOString()).toBe(rec["time"]);
    expect(rec).not.toHaveProperty("pid");
  });

  it("filters by level and changes level at runtime, children included", () => {
    const { log, records } = capture("info");
    const child = subsystemLogger(log, "sync");
    child.debug("hidden");
    setLogLevel(log, "debug");
    child.debug("shown");
    expect(getLogLevel(child)).toBe("debug");
    setLogLevel(log, "ERROR");
    child.warn("hidden too");
    child.error("shown too");
    expect(records().map((r) => r["msg"])).toEqual(["shown", "shown too"]);
    expect(getLogLevel(log)).toBe("error");
  });

  it("rejects an unknown level", () => {
    const { log } = capture("info");
    let caught: unknown;
    try {
      setLogLevel(log, "verbose");
    } catch (e) {
      caught = e;
    }
    expect(isSigilError(caught, "ERR_INVALID_ARGUMENT")).toBe(true);
    expect(getLogLevel(log)).toBe("info");
  });

  it("writes logfmt-style text", () => {
    const { log, lines } = capture("info", "text");
    subsystemLogger(log, "ca").info({ slot: "A", note: "two words" }, "rotated CA");
    expect(lines[0]).toMatch(/^time=\S+ level=info msg="rotated CA" subsystem_name=ca slot=A note="two words"\n$/);
  });

  it("text: client-chosen values cannot drive the terminal (escape sequences, C1 controls, bidi overrides are written \\uXXXX)", () => {
    const { log, lines } = capture("info", "text");
    log.info({ name: "\u001b[2Jcleared", c1: "a\u009bb", bidi: "abc\u202edcba", del: "x\u007f" }, "NACK");
    const line = lines[0] as string;
    expect(line).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/);
    expect(line).toContain('name="\\u001b[2Jcleared"');
    expect(line).toContain('c1="a\\u009bb"');
    expect(line).toContain('bidi="abc\\u202edcba"');
    expect(line).toContain('del="x\\u007f"');
  });
});

describe("audit", () => {
  it("writes a type=audit record with SPIRE's caller fields", () => {
    const { log, records } = capture("info");
    audit(subsystemLogger(log, "api"), {
      caller: { uid: 1000, gid: 1000, pid: 4242, path: "/usr/bin/sigil-server" },
      method: "/sigil.admin.v1.Entry/BatchCreateEntry",
      status: "error",
      statusCode: "INVALID_ARGUMENT",
      statusMessage: "entry: bad selector",
      requestId: "r-1",
      details: { entry_id: "e-1" },
    });
    expect(records()[0]).toMatchObject({
      level: "info",
      type: "audit",
      subsystem_name: "api",
      msg: "API accessed",
      method: "/sigil.admin.v1.Entry/BatchCreateEntry",
      status: "error",
      status_code: "INVALID_ARGUMENT",
      status_message: "entry: bad selector",
      request_id: "r-1",
      caller_uid: 1000,
      caller_gid: 1000,
      caller_pid: 4242,
      caller_path: "/usr/bin/sigil-server",
      entry_id: "e-1",
    });
  });

  it("is not silenced by a raised log level", () => {
    const { log, records } = capture("error");
    audit(log, { caller: { spiffeId: "spiffe://example.org/admin" }, method: "/x.Y/Z", status: "success" });
    log.info("ordinary info is filtered");
    expect(records()).toHaveLength(1);
    expect(records()[0]).toMatchObject({ type: "audit", caller_id: "spiffe://example.org/admin" });
  });
});
