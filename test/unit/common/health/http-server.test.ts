import { describe, expect, it } from "vitest";
import { startHealthServer, startMetricsServer, type Readiness } from "../../../../common/health/http-server.js";
import { Metrics } from "../../../../common/metrics.js";

describe("startHealthServer", () => {
  it("serves /live 200 and /ready 503 → 200 as readiness flips, with reasons", async () => {
    let state: Readiness = { ready: false, reasons: ["ca: no active X.509 CA", "datastore: unreachable"] };
    const srv = await startHealthServer({ host: "127.0.0.1", port: 0, readiness: async () => state });
    try {
      expect(srv.port).toBeGreaterThan(0);
      const live = await fetch(`${srv.url}/live`);
      expect(live.status).toBe(200);
      expect(live.headers.get("content-type")).toContain("application/json");
      expect(await live.json()).toEqual({ live: true });

      const notReady = await fetch(`${srv.url}/ready`);
      expect(notReady.status).toBe(503);
      expect(await notReady.json()).toEqual({ ready: false, reasons: ["ca: no active X.509 CA", "datastore: unreachable"] });

      state = { ready: true, reasons: [] };
      const ready = await fetch(`${srv.url}/ready`);
      expect(ready.status).toBe(200);
      expect(await ready.json()).toEqual({ ready: true, reasons: [] });
    } finally {
      await srv.close();
    }
  });

  it("answers 503 with the reason when the readiness check throws", async () => {
    const srv = await startHealthServer({
      host: "127.0.0.1",
      port: 0,
      readiness: () => Promise.reject(new Error("datastore: connection refused")),
    });
    try {
      const res = await fetch(`${srv.url}/ready`);
      expect(res.status).toBe(503);
      expect(await res.json()).toEqual({ ready: false, reasons: ["readiness check failed: datastore: connection refused"] });
    } finally {
      await srv.close();
    }
  });

  it("uses configured paths, 404s others, refuses non-GET, and serves /metrics when given metrics", async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    metrics.x509SvidsSigned.inc(2);
    const srv = await startHealthServer({ host: "127.0.0.1", port: 0, livePath: "/healthz", readyPath: "/readyz", metrics, readiness: async () => ({ ready: true, reasons: [] }) });
    try {
      expect((await fetch(`${srv.url}/healthz`)).status).toBe(200);
      expect((await fetch(`${srv.url}/readyz?verbose=1`)).status).toBe(200);
      expect((await fetch(`${srv.url}/live`)).status).toBe(404);
      expect((await fetch(`${srv.url}/readyz`, { method: "POST" })).status).toBe(405);
      const m = await fetch(`${srv.url}/metrics`);
      expect(m.status).toBe(200);
      expect(m.headers.get("content-type")).toContain("text/plain");
      expect(await m.text()).toContain("sigil_x509_svids_signed_total 2");
    } finally {
      await srv.close();
    }
  });

  it("has no /metrics without metrics", async () => {
    const srv = await startHealthServer({ host: "127.0.0.1", port: 0, readiness: async () => ({ ready: true, reasons: [] }) });
    try {
      expect((await fetch(`${srv.url}/metrics`)).status).toBe(404);
    } finally {
      await srv.close();
    }
  });

  it("reports liveness failures from a liveness check", async () => {
    const srv = await startHealthServer({
      host: "127.0.0.1",
      port: 0,
      readiness: async () => ({ ready: true, reasons: [] }),
      liveness: async () => ({ ready: false, reasons: ["rotator: stopped"] }),
    });
    try {
      const res = await fetch(`${srv.url}/live`);
      expect(res.status).toBe(503);
      expect(await res.json()).toEqual({ live: false, reasons: ["rotator: stopped"] });
    } finally {
      await srv.close();
    }
  });

  it("fails clearly when the port is taken", async () => {
    const first = await startHealthServer({ host: "127.0.0.1", port: 0, readiness: async () => ({ ready: true, reasons: [] }) });
    try {
      await expect(startHealthServer({ host: "127.0.0.1", port: first.port, readiness: async () => ({ ready: true, reasons: [] }) })).rejects.toThrow(
        /^health: cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/,
      );
    } finally {
      await first.close();
    }
  });
});

describe("startMetricsServer", () => {
  it("serves only metrics", async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    const srv = await startMetricsServer({ host: "127.0.0.1", port: 0, metrics });
    try {
      expect(await (await fetch(`${srv.url}/metrics`)).text()).toContain("sigil_rpc_requests_total");
      expect((await fetch(`${srv.url}/ready`)).status).toBe(404);
    } finally {
      await srv.close();
    }
  });
});
