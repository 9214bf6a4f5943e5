/**
 * Starts worker threads on a sibling module, from sources and from the build.
 */
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";

/**
 * Starts a worker on module `name` (without extension) beside the module at
 * `importMetaUrl`. From TypeScript sources (tests, tsx) the worker registers
 * the tsx loader itself first: Node 20 does not apply `--import` hooks to a
 * worker's entry. The worker is unref'd: it never keeps the process alive.
 */
export function startModuleWorker(importMetaUrl: string, name: string, workerData: unknown): Worker {
  const isTs = importMetaUrl.endsWith(".ts");
  const script = new URL(`./${name}.${isTs ? "ts" : "js"}`, importMetaUrl);
  const worker = isTs
    ? new Worker(`import("tsx/esm/api").then((api) => { api.register(); return import(${JSON.stringify(script.href)}); });`, { eval: true, workerData })
    : new Worker(fileURLToPath(script), { workerData });
  worker.unref();
  return worker;
}
