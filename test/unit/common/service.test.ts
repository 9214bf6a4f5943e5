/** Services with a lifecycle (common/service.ts): order, reverse stop, failing starts, readiness. */
import { describe, expect, it } from "vitest";
import { createLogger } from "../../../common/log.js";
import { service, ServiceGroup, type Service } from "../../../common/service.js";

function recorder(): { events: string[]; make: (name: string, opts?: { failStart?: boolean; failStop?: boolean; reasons?: string[] }) => Service } {
  const events: string[] = [];
  return {
    events,
    make: (name, opts = {}) => ({
      name,
      async start() {
        events.push(`start ${name}`);
        if (opts.failStart) throw new Error(`${name} cannot start`);
      },
      async stop() {
        events.push(`stop ${name}`);
        if (opts.failStop) throw new Error(`${name} cannot stop`);
      },
      readiness: () => opts.reasons ?? [],
    }),
  };
}

const lines: Array<Record<string, unknown>> = [];
const log = createLogger({ level: "debug", destination: { write: (l) => void lines.push(JSON.parse(l) as Record<string, unknown>) } });

describe("ServiceGroup", () => {
  it("starts in order and stops in reverse order, once", async () => {
    const r = recorder();
    const group = new ServiceGroup([r.make("datastore"), r.make("ca"), r.make("agent-api")], log);
    await group.start();
    await Promise.all([group.stop(), group.stop()]);
    expect(r.events).toEqual(["start datastore", "start ca", "start agent-api", "stop agent-api", "stop ca", "stop datastore"]);
  });

  it("a failing start stops those already started, in reverse, and rethrows; the failed one is not stopped", async () => {
    const r = recorder();
    const group = new ServiceGroup([r.make("a"), r.make("b"), r.make("c", { failStart: true }), r.make("d")], log);
    await expect(group.start()).rejects.toThrow("c cannot start");
    expect(r.events).toEqual(["start a", "start b", "start c", "stop b", "stop a"]);
    expect(lines.some((l) => l["service"] === "c" && l["msg"] === "Service failed to start; stopping those already started")).toBe(true);
  });

  it("a failing stop is logged and the others still stop", async () => {
    const r = recorder();
    const group = new ServiceGroup([r.make("a"), r.make("b", { failStop: true }), r.make("c")], log);
    await group.start();
    await group.stop();
    expect(r.events.slice(3)).toEqual(["stop c", "stop b", "stop a"]);
    expect(lines.some((l) => l["service"] === "b" && l["msg"] === "Service failed to stop cleanly")).toBe(true);
  });

  it("readiness: not before every service started; then the reasons of each, named by service", async () => {
    const r = recorder();
    const group = new ServiceGroup([r.make("ca", { reasons: ["no active X.509 CA"] }), service("health", () => undefined)], log);
    expect(await group.readiness()).toEqual({ ready: false, reasons: ["ca: not started", "health: not started"] });
    await group.start();
    expect(await group.readiness()).toEqual({ ready: false, reasons: ["ca: no active X.509 CA"] });
    expect(group.names).toEqual(["ca", "health"]);
  });
});
