/**
 * A local Kubernetes API server for tests: HTTPS on 127.0.0.1 (an ephemeral
 * port, a CA made for the test), bearer-token authentication, and the three
 * resources the `k8s_psat` node attestor reads, in the wire format of the
 * Kubernetes API reference:
 *
 * - `POST /apis/authentication.k8s.io/v1/tokenreviews`: a TokenReview in, the
 *   same with `status` out (`authenticated`, `user.username/uid/groups/extra`,
 *   `audiences`, `error`). Tokens are registered with what the review should
 *   say about them; audiences are intersected as the API server does, and a
 *   token bound to a pod is refused once that pod (or its UID) is gone, unless
 *   `staleTokenReviews` imitates an authenticator that has not noticed yet.
 * - `GET /api/v1/namespaces/{ns}/pods/{name}` (Pod) and `GET /api/v1/nodes/{name}` (Node).
 * - Writable objects (`objects`): ConfigMaps, admissionregistration.k8s.io/v1
 *   Mutating/ValidatingWebhookConfigurations and apiregistration.k8s.io/v1
 *   APIServices; GET, list with `labelSelector`, PUT with resourceVersion
 *   checks (409 Conflict), and forced conflicts.
 * - Errors as `Status` objects: 401 Unauthorized without the expected bearer
 *   token, 403 Forbidden for a resource listed in `forbidden`, 404 NotFound.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { createServingPki } from "./serving-cert.js";

/** The extras a pod-bound projected token carries in its TokenReview. */
const POD_NAME = "authentication.kubernetes.io/pod-name";
const POD_UID = "authentication.kubernetes.io/pod-uid";
const NODE_NAME = "authentication.kubernetes.io/node-name";
const NODE_UID = "authentication.kubernetes.io/node-uid";
const CREDENTIAL_ID = "authentication.kubernetes.io/credential-id";

/** A pod as the fake stores it (the fields the attestor reads, and enough besides to be a Pod). */
export interface FakePod {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
  readonly serviceAccountName: string;
  /** `spec.nodeName`; empty for a pod not yet scheduled. */
  readonly nodeName: string;
  readonly hostIP?: string;
  readonly labels?: Readonly<Record<string, string>>;
  /** `status.phase`; default Running when scheduled with a host IP, else Pending. */
  readonly phase?: "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown";
}

/** A node as the fake stores it. */
export interface FakeNode {
  readonly name: string;
  readonly uid: string;
  readonly internalIP?: string;
  readonly labels?: Readonly<Record<string, string>>;
}

/** What a TokenReview says about a registered token. */
export interface TokenFacts {
  /** `system:serviceaccount:<ns>:<name>` or any other user name. */
  readonly username: string;
  readonly uid?: string;
  readonly groups?: readonly string[];
  readonly extra?: Readonly<Record<string, readonly string[]>>;
  /** The audiences the token was issued for; a review asking for none of them fails. */
  readonly audiences: readonly string[];
  /** The token is no longer valid (expired): reviews fail with this error. */
  readonly invalid?: string;
}

/** What a test sees of one request. */
export interface KubeApiRequest {
  readonly method: string;
  readonly path: string;
  readonly authorization: string | undefined;
  readonly body: unknown;
}

/** The running fake. */
export interface FakeKubeApi extends FakeKubeWatchables {
  /** `https://127.0.0.1:<port>`. */
  readonly url: string;
  /** The CA certificate that issued the serving certificate. */
  readonly caPem: string;
  /** The bearer token the fake accepts from its client (the Sigil server). */
  readonly bearerToken: string;
  /** Every request, in order. */
  readonly requests: KubeApiRequest[];
  /** Resources whose requests are answered 403 Forbidden (the client lacks RBAC). */
  readonly forbidden: Set<"tokenreviews" | "pods" | "nodes">;
  /** When true, TokenReviews do not check that a token's pod still exists (an authenticator's cache). */
  staleTokenReviews: boolean;
  /** ConfigMaps, webhook configurations and APIServices (see {@link FakeObjectStore}). */
  readonly objects: FakeObjectStore;
  putPod(pod: FakePod): void;
  deletePod(namespace: string, name: string): void;
  putNode(node: FakeNode): void;
  deleteNode(name: string): void;
  /** Registers a token with what reviews should say; returns the token. */
  addToken(facts: TokenFacts, token?: string): string;
  /**
   * A pod-bound projected token for a service account's pod (the pod and its
   * node must be put already), as the kubelet would mount it.
   */
  projectedToken(pod: FakePod, opts?: { audiences?: readonly string[] }): string;
  /** Writes a kubeconfig for this API server (CA, URL, bearer token) as `<dir>/<name>` and returns its path. */
  writeKubeconfig(dir: string, name?: string): string;
  close(): Promise<void>;
}

/** A worker node for tests, with a zone label. */
export const EXAMPLE_NODE: FakeNode = {
  name: "worker-1",
  uid: "6a1e3c2b-9f0d-4e55-8d7e-0c1b2a3f4e5d",
  internalIP: "192.0.2.11",
  labels: { "topology.kubernetes.io/zone": "zone-a", "kubernetes.io/hostname": "worker-1" },
};

/** A sigil-agent DaemonSet pod (namespace `sigil`, service account `sigil-agent`) on {@link EXAMPLE_NODE}. */
export const EXAMPLE_AGENT_POD: FakePod = {
  namespace: "sigil",
  name: "sigil-agent-x7k2p",
  uid: "0f9e8d7c-6b5a-4c3d-9e2f-1a0b9c8d7e6f",
  serviceAccountName: "sigil-agent",
  nodeName: EXAMPLE_NODE.name,
  hostIP: "192.0.2.11",
  labels: { app: "sigil-agent", "pod-template-hash": "5d9f" },
};

/** A JWT-shaped opaque token: the attestor must never read its claims, so they say something else. */
export function opaqueToken(claims: Record<string, unknown> = { sub: "system:serviceaccount:kube-system:lies" }): string {
  const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString("base64url");
  return `${b64({ alg: "RS256", kid: "fake" })}.${b64(claims)}.${randomBytes(32).toString("base64url")}`;
}

function status(code: number, reason: string, message: string, details?: Record<string, unknown>): Record<string, unknown> {
  return { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, ...(details ? { details } : {}), code };
}

function podJson(p: FakePod): Record<string, unknown> {
  return {
    kind: "Pod",
    apiVersion: "v1",
    metadata: { name: p.name, namespace: p.namespace, uid: p.uid, resourceVersion: "1", creationTimestamp: "2026-01-01T00:00:00Z", ...(p.labels ? { labels: p.labels } : {}) },
    spec: {
      containers: [{ name: "agent", image: "ghcr.io/example/sigil-agent:latest" }],
      serviceAccountName: p.serviceAccountName,
      ...(p.nodeName ? { nodeName: p.nodeName } : {}),
    },
    status: p.hostIP
      ? { phase: p.phase ?? "Running", hostIP: p.hostIP, hostIPs: [{ ip: p.hostIP }], podIP: "10.244.0.7", podIPs: [{ ip: "10.244.0.7" }] }
      : { phase: p.phase ?? "Pending" },
  };
}

function nodeJson(n: FakeNode): Record<string, unknown> {
  return {
    kind: "Node",
    apiVersion: "v1",
    metadata: { name: n.name, uid: n.uid, resourceVersion: "1", creationTimestamp: "2026-01-01T00:00:00Z", ...(n.labels ? { labels: n.labels } : {}) },
    spec: {},
    status: {
      addresses: [...(n.internalIP ? [{ type: "InternalIP", address: n.internalIP }] : []), { type: "Hostname", address: n.name }],
      conditions: [{ type: "Ready", status: "True" }],
    },
  };
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (d: string) => (body += d));
    req.on("end", () => resolve(body));
    req.on("error", reject);
  });
}

/** Starts the fake on 127.0.0.1 with a fresh CA; `close()` it when done. */
export async function startFakeKubeApi(): Promise<FakeKubeApi> {
  const pki = createServingPki("fake kube-apiserver");
  const bearerToken = randomBytes(24).toString("hex");
  const pods = new Map<string, FakePod>();
  const nodes = new Map<string, FakeNode>();
  const tokens = new Map<string, TokenFacts>();
  const requests: KubeApiRequest[] = [];
  const forbidden = new Set<"tokenreviews" | "pods" | "nodes">();
  const watchables = createWatchables(pods, nodes);
  const objects = createObjectStore();

  const reviewToken = (spec: { token?: unknown; audiences?: unknown }, stale: boolean): Record<string, unknown> => {
    const token = typeof spec.token === "string" ? spec.token : "";
    const facts = tokens.get(token);
    if (facts === undefined) return { user: {}, error: "[invalid bearer token, square/go-jose: compact JWS format must have three parts]" };
    if (facts.invalid !== undefined) return { user: {}, error: `[invalid bearer token, ${facts.invalid}]` };
    const wanted = Array.isArray(spec.audiences) && spec.audiences.length > 0 ? (spec.audiences as string[]) : ["https://kubernetes.default.svc.cluster.local"];
    const audiences = wanted.filter((a) => facts.audiences.includes(a));
    if (audiences.length === 0) {
      return { user: {}, error: `[invalid bearer token, token audiences ${JSON.stringify(facts.audiences)} is invalid for the target audiences ${JSON.stringify(wanted)}]` };
    }
    const podName = facts.extra?.[POD_NAME]?.[0];
    const podUid = facts.extra?.[POD_UID]?.[0];
    if (!stale && podName !== undefined) {
      const ns = facts.username.split(":")[2] ?? "";
      const pod = pods.get(`${ns}/${podName}`);
      if (pod === undefined) return { user: {}, error: `[invalid bearer token, pods "${podName}" not found]` };
      if (pod.uid !== podUid) return { user: {}, error: `[invalid bearer token, pod "${podName}" UID (${pod.uid}) does not match the token's (${podUid})]` };
    }
    const user: Record<string, unknown> = { username: facts.username, ...(facts.uid ? { uid: facts.uid } : {}), groups: facts.groups ?? ["system:authenticated"] };
    if (facts.extra !== undefined) user.extra = facts.extra;
    return { authenticated: true, user, audiences };
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? "/", "https://127.0.0.1");
    const raw = req.method === "POST" ? await readBody(req) : "";
    let body: unknown;
    try {
      body = raw === "" ? undefined : JSON.parse(raw);
    } catch {
      body = raw;
    }
    requests.push({ method: req.method ?? "", path: url.pathname, authorization: req.headers.authorization, body });
    const send = (code: number, doc: unknown): void => {
      res.writeHead(code, { "content-type": "application/json" });
      res.end(JSON.stringify(doc));
    };
    if (req.headers.authorization !== `Bearer ${bearerToken}`) return send(401, status(401, "Unauthorized", "Unauthorized"));
    const deny = (verb: string, resource: "tokenreviews" | "pods" | "nodes", group: string, scope: string): void =>
      send(403, status(403, "Forbidden", `${resource} is forbidden: User "system:serviceaccount:sigil:sigil-server" cannot ${verb} resource "${resource}" in API group "${group}" ${scope}`, { kind: resource }));

    if (url.pathname === "/apis/authentication.k8s.io/v1/tokenreviews") {
      if (req.method !== "POST") return send(405, status(405, "MethodNotAllowed", `the server does not allow this method on the requested resource`));
      if (forbidden.has("tokenreviews")) return deny("create", "tokenreviews", "authentication.k8s.io", "at the cluster scope");
      const review = body as { apiVersion?: unknown; kind?: unknown; spec?: { token?: unknown; audiences?: unknown } } | undefined;
      if (review?.apiVersion !== "authentication.k8s.io/v1" || review.kind !== "TokenReview" || typeof review.spec !== "object") {
        return send(400, status(400, "BadRequest", "the body is not an authentication.k8s.io/v1 TokenReview"));
      }
      if (typeof review.spec.token !== "string" || review.spec.token === "") return send(400, status(400, "BadRequest", "token is required"));
      return send(201, {
        kind: "TokenReview",
        apiVersion: "authentication.k8s.io/v1",
        metadata: { creationTimestamp: null },
        spec: review.spec,
        status: reviewToken(review.spec, fake.staleTokenReviews),
      });
    }
    let m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/.exec(url.pathname);
    if (m && req.method === "GET") {
      const [ns, name] = [decodeURIComponent(m[1] ?? ""), decodeURIComponent(m[2] ?? "")];
      if (forbidden.has("pods")) return deny("get", "pods", "", `in the namespace "${ns}"`);
      const pod = pods.get(`${ns}/${name}`);
      return pod ? send(200, podJson(pod)) : send(404, status(404, "NotFound", `pods "${name}" not found`, { name, kind: "pods" }));
    }
    m = /^\/api\/v1\/nodes\/([^/]+)$/.exec(url.pathname);
    if (m && req.method === "GET") {
      const name = decodeURIComponent(m[1] ?? "");
      if (forbidden.has("nodes")) return deny("get", "nodes", "", "at the cluster scope");
      const node = nodes.get(name);
      return node ? send(200, nodeJson(node)) : send(404, status(404, "NotFound", `nodes "${name}" not found`, { name, kind: "nodes" }));
    }
    const written = await objects.route(req, url);
    if (written) return send(written.code, written.doc);
    if (await watchables.handle(req, res, url)) return;
    return send(404, status(404, "NotFound", "the server could not find the requested resource"));
  };

  const server: Server = createServer({ cert: pki.certPem, key: pki.keyPem }, (req, res) => {
    handle(req, res).catch((e: unknown) => {
      res.writeHead(500, { "content-type": "application/json" });
      res.end(JSON.stringify(status(500, "InternalError", String(e))));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const fake: FakeKubeApi = {
    url,
    caPem: pki.caPem,
    bearerToken,
    requests,
    forbidden,
    staleTokenReviews: false,
    objects,
    // Through the LIST/WATCH collections, which keep these maps and stream the change.
    putPod: watchables.feeds.putPod,
    deletePod: watchables.feeds.deletePod,
    putNode: watchables.feeds.putNode,
    deleteNode: watchables.feeds.deleteNode,
    addToken(facts, token = opaqueToken()) {
      tokens.set(token, facts);
      return token;
    },
    projectedToken(pod, opts = {}) {
      const node = nodes.get(pod.nodeName);
      return fake.addToken({
        username: `system:serviceaccount:${pod.namespace}:${pod.serviceAccountName}`,
        uid: randomUUID(),
        groups: ["system:serviceaccounts", `system:serviceaccounts:${pod.namespace}`, "system:authenticated"],
        extra: {
          [CREDENTIAL_ID]: [`JTI=${randomUUID()}`],
          ...(node ? { [NODE_NAME]: [node.name], [NODE_UID]: [node.uid] } : {}),
          [POD_NAME]: [pod.name],
          [POD_UID]: [pod.uid],
        },
        audiences: opts.audiences ?? ["sigil-server"],
      });
    },
    writeKubeconfig(dir, name = "kubeconfig.yaml") {
      const file = join(dir, name);
      writeFileSync(
        file,
        [
          "apiVersion: v1",
          "kind: Config",
          "clusters:",
          "- name: fake",
          "  cluster:",
          `    server: ${url}`,
          `    certificate-authority-data: ${Buffer.from(pki.caPem).toString("base64")}`,
          "users:",
          "- name: sigil-server",
          "  user:",
          `    token: ${bearerToken}`,
          "contexts:",
          "- name: fake",
          "  context:",
          "    cluster: fake",
          "    user: sigil-server",
          "current-context: fake",
          "",
        ].join("\n"),
        { mode: 0o600 },
      );
      return file;
    },
    ...watchables.api,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
  return fake;
}

// ---------------------------------------------------------------------------
// Writable objects (the trust bundle publisher's targets): ConfigMaps,
// Mutating/ValidatingWebhookConfigurations and APIServices, with
// resourceVersion semantics. Kept apart from the read-only resources above.
// ---------------------------------------------------------------------------

/** The writable resources the fake serves, by their plural names in the API paths. */
export type WritableResource = "configmaps" | "mutatingwebhookconfigurations" | "validatingwebhookconfigurations" | "apiservices";

/** An object as the API returns it: `metadata.resourceVersion` is the fake's. */
export interface WritableObject {
  apiVersion?: string;
  kind?: string;
  metadata: { name: string; namespace?: string; resourceVersion?: string; labels?: Record<string, string>; [key: string]: unknown };
  [key: string]: unknown;
}

/** The stored writable objects, for tests to seed, read and disturb. */
export interface FakeObjectStore {
  /** Creates or replaces an object as another writer would (its resourceVersion moves on); returns the stored copy. */
  put(resource: WritableResource, obj: WritableObject): WritableObject;
  /** A copy of the stored object, or undefined. */
  get(resource: WritableResource, name: string, namespace?: string): WritableObject | undefined;
  delete(resource: WritableResource, name: string, namespace?: string): void;
  /**
   * The next `n` PUTs to `resource` lose a race with another writer: the
   * stored object's resourceVersion moves on first, so the PUT (carrying the
   * version it read) is answered 409 Conflict, as the API server would.
   */
  forceConflicts(resource: WritableResource, n: number): void;
  /** Resources whose requests are answered 403 Forbidden. */
  readonly forbidden: Set<WritableResource>;
}

interface WritableKind {
  readonly resource: WritableResource;
  readonly kind: string;
  readonly apiVersion: string;
  /** Path prefix of the collection; a namespaced kind has `{ns}` in it. */
  readonly collection: RegExp;
  readonly group: string;
}

const WRITABLE_KINDS: readonly WritableKind[] = [
  { resource: "configmaps", kind: "ConfigMap", apiVersion: "v1", group: "", collection: /^\/api\/v1\/namespaces\/([^/]+)\/configmaps(?:\/([^/]+))?$/ },
  {
    resource: "mutatingwebhookconfigurations",
    kind: "MutatingWebhookConfiguration",
    apiVersion: "admissionregistration.k8s.io/v1",
    group: "admissionregistration.k8s.io",
    collection: /^\/apis\/admissionregistration\.k8s\.io\/v1\/mutatingwebhookconfigurations(?:\/([^/]+))?$/,
  },
  {
    resource: "validatingwebhookconfigurations",
    kind: "ValidatingWebhookConfiguration",
    apiVersion: "admissionregistration.k8s.io/v1",
    group: "admissionregistration.k8s.io",
    collection: /^\/apis\/admissionregistration\.k8s\.io\/v1\/validatingwebhookconfigurations(?:\/([^/]+))?$/,
  },
  { resource: "apiservices", kind: "APIService", apiVersion: "apiregistration.k8s.io/v1", group: "apiregistration.k8s.io", collection: /^\/apis\/apiregistration\.k8s\.io\/v1\/apiservices(?:\/([^/]+))?$/ },
];

/** Whether `labels` match a label selector (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated). */
function matchesLabelSelector(labels: Readonly<Record<string, string>> | undefined, selector: string | null): boolean {
  if (selector === null || selector === "") return true;
  const l = labels ?? {};
  return selector.split(",").every((term) => {
    const t = term.trim();
    let m = /^([^!=]+)!=(.*)$/.exec(t);
    if (m) return l[m[1] ?? ""] !== m[2];
    m = /^([^!=]+)==?(.*)$/.exec(t);
    if (m) return l[m[1] ?? ""] === m[2];
    if (t.startsWith("!")) return !(t.slice(1) in l);
    return t in l;
  });
}

/**
 * The writable objects and their routes: GET of an object, GET of a
 * collection (with `labelSelector`), PUT of an object (404 when it does not
 * exist; 409 Conflict when `metadata.resourceVersion` is stale; no
 * resourceVersion is an unconditional update, as the API allows for these kinds).
 */
function createObjectStore(): FakeObjectStore & { route(req: IncomingMessage, url: URL): Promise<{ code: number; doc: unknown } | undefined> } {
  const objects = new Map<string, WritableObject>();
  const conflicts = new Map<WritableResource, number>();
  const forbidden = new Set<WritableResource>();
  let version = 1000;
  const key = (resource: WritableResource, name: string, namespace?: string): string => `${resource}/${namespace ?? ""}/${name}`;
  const copy = (o: WritableObject): WritableObject => JSON.parse(JSON.stringify(o)) as WritableObject;
  const kindOf = (resource: WritableResource): WritableKind => WRITABLE_KINDS.find((k) => k.resource === resource) as WritableKind;
  const store = (resource: WritableResource, obj: WritableObject, previous: WritableObject | undefined): WritableObject => {
    const k = kindOf(resource);
    const stored = copy({ ...obj, apiVersion: k.apiVersion, kind: k.kind });
    stored.metadata.resourceVersion = String(++version);
    stored.metadata.uid = previous?.metadata.uid ?? randomUUID();
    stored.metadata.creationTimestamp = previous?.metadata.creationTimestamp ?? "2026-01-01T00:00:00Z";
    objects.set(key(resource, obj.metadata.name, obj.metadata.namespace), stored);
    return copy(stored);
  };

  const route = async (req: IncomingMessage, url: URL): Promise<{ code: number; doc: unknown } | undefined> => {
    const method = req.method ?? "";
    for (const k of WRITABLE_KINDS) {
      const m = k.collection.exec(url.pathname);
      if (!m) continue;
      const namespaced = k.resource === "configmaps";
      const namespace = namespaced ? decodeURIComponent(m[1] ?? "") : undefined;
      const rawName = namespaced ? m[2] : m[1];
      const name = rawName === undefined ? undefined : decodeURIComponent(rawName);
      const scope = namespace === undefined ? "at the cluster scope" : `in the namespace "${namespace}"`;
      const verb = method === "PUT" ? "update" : name === undefined ? "list" : "get";
      if (forbidden.has(k.resource)) {
        const what = name === undefined ? k.resource : `${k.resource} "${name}"`;
        return {
          code: 403,
          doc: status(403, "Forbidden", `${what} is forbidden: User "system:serviceaccount:sigil:sigil-server" cannot ${verb} resource "${k.resource}" in API group "${k.group}" ${scope}`, {
            ...(name !== undefined ? { name } : {}),
            ...(k.group !== "" ? { group: k.group } : {}),
            kind: k.resource,
          }),
        };
      }
      const notFound = (n: string) => ({ code: 404, doc: status(404, "NotFound", `${k.resource}${k.group ? `.${k.group}` : ""} "${n}" not found`, { name: n, ...(k.group ? { group: k.group } : {}), kind: k.resource }) });
      if (name === undefined) {
        if (method !== "GET") return { code: 405, doc: status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource") };
        const items = [...objects.entries()]
          .filter(([id, o]) => id.startsWith(`${k.resource}/${namespace ?? ""}/`) && matchesLabelSelector(o.metadata.labels, url.searchParams.get("labelSelector")))
          .map(([, o]) => {
            const { apiVersion: _a, kind: _k, ...item } = copy(o);
            return item;
          });
        return { code: 200, doc: { kind: `${k.kind}List`, apiVersion: k.apiVersion, metadata: { resourceVersion: String(version) }, items } };
      }
      const current = objects.get(key(k.resource, name, namespace));
      if (method === "GET") return current ? { code: 200, doc: copy(current) } : notFound(name);
      if (method !== "PUT") return { code: 405, doc: status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource") };
      let obj: WritableObject | undefined;
      try {
        obj = JSON.parse(await readBody(req)) as WritableObject;
      } catch {
        obj = undefined;
      }
      if (typeof obj !== "object" || obj === null || typeof obj.metadata !== "object" || obj.metadata === null) {
        return { code: 400, doc: status(400, "BadRequest", `the body is not a ${k.kind}`) };
      }
      if (obj.metadata.name !== name) {
        return { code: 400, doc: status(400, "BadRequest", `the name of the object (${String(obj.metadata.name)}) does not match the name on the URL (${name})`) };
      }
      if ((obj.metadata.namespace ?? namespace) !== namespace) {
        return { code: 400, doc: status(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request") };
      }
      if (!current) return notFound(name);
      const forced = conflicts.get(k.resource) ?? 0;
      if (forced > 0) {
        conflicts.set(k.resource, forced - 1);
        // Another writer got there first.
        store(k.resource, current, current);
      }
      const latest = objects.get(key(k.resource, name, namespace)) as WritableObject;
      const sent = obj.metadata.resourceVersion;
      if (sent !== undefined && sent !== "" && sent !== latest.metadata.resourceVersion) {
        return {
          code: 409,
          doc: status(409, "Conflict", `Operation cannot be fulfilled on ${k.resource}${k.group ? `.${k.group}` : ""} "${name}": the object has been modified; please apply your changes to the latest version and try again`, {
            name,
            ...(k.group ? { group: k.group } : {}),
            kind: k.resource,
          }),
        };
      }
      return { code: 200, doc: store(k.resource, { ...obj, metadata: { ...obj.metadata, ...(namespace !== undefined ? { namespace } : {}) } }, latest) };
    }
    return undefined;
  };

  return {
    put: (resource, obj) => store(resource, obj, objects.get(key(resource, obj.metadata.name, obj.metadata.namespace))),
    get: (resource, name, namespace) => {
      const o = objects.get(key(resource, name, namespace));
      return o ? copy(o) : undefined;
    },
    delete: (resource, name, namespace) => void objects.delete(key(resource, name, namespace)),
    forceConflicts: (resource, n) => void conflicts.set(resource, n),
    forbidden,
    route,
  };
}

// ── LIST and WATCH: pods, namespaces, nodes, EndpointSlices and the ClusterSPIFFEID custom resource ──
//
// A separate block (the k8s registration controller's): the collections below are
// listed with `metadata.resourceVersion` and watched with `?watch=true&resourceVersion=…`
// as newline-delimited WatchEvents (ADDED, MODIFIED, DELETED, BOOKMARK; an ERROR
// with a 410 Status for a resourceVersion older than `compactWatchHistory()`), as
// the API server streams them. Every put or delete takes the next resourceVersion.

/** A namespace as the fake stores it. */
export interface FakeNamespace {
  readonly name: string;
  readonly labels?: Readonly<Record<string, string>>;
}

/** An EndpointSlice of a Service (`discovery.k8s.io/v1`, IPv4) as the fake stores it. */
export interface FakeEndpointSlice {
  readonly namespace: string;
  readonly name: string;
  /** The Service: the `kubernetes.io/service-name` label. */
  readonly service: string;
  /** Each with `targetRef` to a pod when `pod` is given (as the EndpointSlice controller writes it), else an address only. */
  readonly endpoints: ReadonlyArray<{ readonly addresses: readonly string[]; readonly ready?: boolean; readonly pod?: { readonly name: string; readonly uid: string } }>;
}

/** The ClusterSPIFFEID resource's coordinates. */
export const CLUSTER_SPIFFE_ID_PATH = "/apis/sigil.dev/v1alpha1/clusterspiffeids";

/** One LIST or WATCH request the collections answered. */
export interface ListWatchRequest {
  readonly path: string;
  readonly watch: boolean;
  readonly resourceVersion: string;
  /** The watch's `timeoutSeconds`, when given. */
  readonly timeoutSeconds?: string;
}

/** LIST/WATCH collections and the ClusterSPIFFEID status subresource (part of {@link FakeKubeApi}). */
export interface FakeKubeWatchables {
  /** Every LIST and WATCH request, in order. */
  readonly listWatchRequests: ListWatchRequest[];
  putNamespace(ns: FakeNamespace): void;
  deleteNamespace(name: string): void;
  /** Creates or replaces a ClusterSPIFFEID (`{ metadata: { name }, spec }`); `status` is kept on replace. */
  putClusterSpiffeId(obj: { metadata: { name: string }; spec: Record<string, unknown> }): void;
  deleteClusterSpiffeId(name: string): void;
  /** Creates or replaces an EndpointSlice (listed and watched at `/apis/discovery.k8s.io/v1/endpointslices`). */
  putEndpointSlice(slice: FakeEndpointSlice): void;
  deleteEndpointSlice(namespace: string, name: string): void;
  /** The stored ClusterSPIFFEID (with the status the client wrote), or undefined. */
  clusterSpiffeId(name: string): Record<string, unknown> | undefined;
  /** Sends a BOOKMARK with the current resourceVersion on every open watch. */
  bookmark(): void;
  /** Forgets watch history: a watch from any resourceVersion seen so far gets 410 Gone (a new list does not). */
  compactWatchHistory(): void;
  /** Ends every open watch stream (clients resume from their last resourceVersion). */
  dropWatches(): void;
  /** Sends an in-stream ERROR 410 Expired on every open watch without ending it (the client lists again once the stream ends). */
  expireWatches(): void;
  /** Stops sending events on every open watch while keeping it open (a proxy or API server that hangs); later watches work. */
  stallWatches(): void;
  /** Number of open watch streams. */
  openWatches(): number;
  /** Installs (default) or removes the ClusterSPIFFEID CRD: without it, its paths answer 404 NotFound. */
  setCrdInstalled(installed: boolean): void;
}

type WatchKind = "pods" | "namespaces" | "nodes" | "clusterspiffeids" | "endpointslices";
type WatchObject = { metadata: Record<string, unknown> } & Record<string, unknown>;

function endpointSliceJson(s: FakeEndpointSlice): WatchObject {
  return {
    kind: "EndpointSlice",
    apiVersion: "discovery.k8s.io/v1",
    metadata: {
      name: s.name,
      namespace: s.namespace,
      uid: randomUUID(),
      creationTimestamp: "2026-01-01T00:00:00Z",
      labels: { "kubernetes.io/service-name": s.service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io" },
    },
    addressType: "IPv4",
    endpoints: s.endpoints.map((e) => ({
      addresses: e.addresses,
      conditions: { ready: e.ready ?? true, serving: e.ready ?? true, terminating: false },
      ...(e.pod ? { targetRef: { kind: "Pod", namespace: s.namespace, name: e.pod.name, uid: e.pod.uid }, nodeName: "worker-1" } : {}),
    })),
    ports: [{ name: "https", protocol: "TCP", port: 8443 }],
  };
}

function namespaceJson(n: FakeNamespace): WatchObject {
  return {
    kind: "Namespace",
    apiVersion: "v1",
    metadata: { name: n.name, uid: randomUUID(), creationTimestamp: "2026-01-01T00:00:00Z", labels: { "kubernetes.io/metadata.name": n.name, ...(n.labels ?? {}) } },
    spec: { finalizers: ["kubernetes"] },
    status: { phase: "Active" },
  };
}

/** The collections, fed by the fake's own pod and node maps as well. */
function createWatchables(pods: Map<string, FakePod>, nodes: Map<string, FakeNode>) {
  let rv = 100;
  let compactedBelow = 0;
  let crdInstalled = true;
  const store: Record<WatchKind, Map<string, WatchObject>> = { pods: new Map(), namespaces: new Map(), nodes: new Map(), clusterspiffeids: new Map(), endpointslices: new Map() };
  const history: Array<{ kind: WatchKind; rv: number; type: string; object: WatchObject }> = [];
  const streams = new Set<{ kind: WatchKind; res: ServerResponse }>();
  const listWatchRequests: ListWatchRequest[] = [];
  const LIST_KIND: Record<WatchKind, [string, string]> = {
    pods: ["PodList", "v1"],
    namespaces: ["NamespaceList", "v1"],
    nodes: ["NodeList", "v1"],
    clusterspiffeids: ["ClusterSPIFFEIDList", "sigil.dev/v1alpha1"],
    endpointslices: ["EndpointSliceList", "discovery.k8s.io/v1"],
  };

  const emit = (kind: WatchKind, type: string, object: WatchObject): void => {
    history.push({ kind, rv, type, object });
    for (const s of streams) if (s.kind === kind) s.res.write(`${JSON.stringify({ type, object })}\n`);
  };
  const put = (kind: WatchKind, key: string, object: WatchObject): void => {
    const had = store[kind].has(key);
    const stored: WatchObject = { ...object, metadata: { ...object.metadata, resourceVersion: String(++rv) } };
    store[kind].set(key, stored);
    emit(kind, had ? "MODIFIED" : "ADDED", stored);
  };
  const remove = (kind: WatchKind, key: string): void => {
    const old = store[kind].get(key);
    if (old === undefined) return;
    store[kind].delete(key);
    emit(kind, "DELETED", { ...old, metadata: { ...old.metadata, resourceVersion: String(++rv) } });
  };

  const routes: Array<[RegExp, WatchKind]> = [
    [/^\/api\/v1\/pods$/, "pods"],
    [/^\/api\/v1\/namespaces$/, "namespaces"],
    [/^\/api\/v1\/nodes$/, "nodes"],
    [new RegExp(`^${CLUSTER_SPIFFE_ID_PATH}$`), "clusterspiffeids"],
    [/^\/apis\/discovery\.k8s\.io\/v1\/endpointslices$/, "endpointslices"],
  ];
  const send = (res: ServerResponse, code: number, doc: unknown): void => {
    res.writeHead(code, { "content-type": "application/json" });
    res.end(JSON.stringify(doc));
  };

  /** Answers LIST, WATCH and PUT status; false when the request is not for these collections. */
  const handle = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> => {
    const statusPut = new RegExp(`^${CLUSTER_SPIFFE_ID_PATH}/([^/]+)/status$`).exec(url.pathname);
    if (statusPut && req.method === "PUT") {
      const name = decodeURIComponent(statusPut[1] ?? "");
      const body = JSON.parse(await readBody(req)) as WatchObject;
      const current = store.clusterspiffeids.get(name);
      if (current === undefined) return send(res, 404, status(404, "NotFound", `clusterspiffeids.sigil.dev "${name}" not found`, { name, group: "sigil.dev", kind: "clusterspiffeids" })), true;
      if (body.metadata?.resourceVersion !== current.metadata.resourceVersion) {
        return (
          send(res, 409, status(409, "Conflict", `Operation cannot be fulfilled on clusterspiffeids.sigil.dev "${name}": the object has been modified; please apply your changes to the latest version and try again`, { name, group: "sigil.dev", kind: "clusterspiffeids" })),
          true
        );
      }
      // The status subresource changes status only.
      put("clusterspiffeids", name, { ...current, status: body.status });
      send(res, 200, store.clusterspiffeids.get(name));
      return true;
    }
    const route = routes.find(([re]) => re.test(url.pathname));
    if (route === undefined || req.method !== "GET") return false;
    const kind = route[1];
    if (kind === "clusterspiffeids" && !crdInstalled) return send(res, 404, status(404, "NotFound", "the server could not find the requested resource")), true;
    const watch = ["true", "1"].includes(url.searchParams.get("watch") ?? "");
    const from = url.searchParams.get("resourceVersion") ?? "";
    const timeoutSeconds = url.searchParams.get("timeoutSeconds");
    listWatchRequests.push({ path: url.pathname, watch, resourceVersion: from, ...(timeoutSeconds === null ? {} : { timeoutSeconds }) });
    if (!watch) {
      const [listKind, apiVersion] = LIST_KIND[kind];
      send(res, 200, { kind: listKind, apiVersion, metadata: { resourceVersion: String(rv) }, items: [...store[kind].values()] });
      return true;
    }
    res.writeHead(200, { "content-type": "application/json", "transfer-encoding": "chunked" });
    res.flushHeaders();
    const since = Number(from || "0");
    if (from !== "" && from !== "0" && since < compactedBelow) {
      res.end(`${JSON.stringify({ type: "ERROR", object: status(410, "Expired", `too old resource version: ${since} (${compactedBelow})`) })}\n`);
      return true;
    }
    if (from === "" || from === "0") for (const object of store[kind].values()) res.write(`${JSON.stringify({ type: "ADDED", object })}\n`);
    else for (const h of history) if (h.kind === kind && h.rv > since) res.write(`${JSON.stringify({ type: h.type, object: h.object })}\n`);
    const stream = { kind, res };
    streams.add(stream);
    res.on("close", () => streams.delete(stream));
    return true;
  };

  const feeds: Pick<FakeKubeApi, "putPod" | "deletePod" | "putNode" | "deleteNode"> = {
    putPod(pod) {
      pods.set(`${pod.namespace}/${pod.name}`, pod);
      put("pods", `${pod.namespace}/${pod.name}`, podJson(pod) as WatchObject);
    },
    deletePod(ns, name) {
      pods.delete(`${ns}/${name}`);
      remove("pods", `${ns}/${name}`);
    },
    putNode(node) {
      nodes.set(node.name, node);
      put("nodes", node.name, nodeJson(node) as WatchObject);
    },
    deleteNode(name) {
      nodes.delete(name);
      remove("nodes", name);
    },
  };
  const api: FakeKubeWatchables = {
    listWatchRequests,
    putNamespace: (ns) => {
      const old = store.namespaces.get(ns.name);
      const obj = namespaceJson(ns);
      put("namespaces", ns.name, old ? { ...obj, metadata: { ...obj.metadata, uid: old.metadata.uid } } : obj);
    },
    deleteNamespace: (name) => remove("namespaces", name),
    putClusterSpiffeId(obj) {
      const old = store.clusterspiffeids.get(obj.metadata.name);
      const generation = old === undefined ? 1 : Number(old.metadata.generation ?? 1) + 1;
      put("clusterspiffeids", obj.metadata.name, {
        apiVersion: "sigil.dev/v1alpha1",
        kind: "ClusterSPIFFEID",
        metadata: { name: obj.metadata.name, uid: (old?.metadata.uid as string | undefined) ?? randomUUID(), generation, creationTimestamp: "2026-01-01T00:00:00Z" },
        spec: obj.spec,
        ...(old?.status === undefined ? {} : { status: old.status }),
      });
    },
    deleteClusterSpiffeId: (name) => remove("clusterspiffeids", name),
    putEndpointSlice: (slice) => put("endpointslices", `${slice.namespace}/${slice.name}`, endpointSliceJson(slice)),
    deleteEndpointSlice: (namespace, name) => remove("endpointslices", `${namespace}/${name}`),
    clusterSpiffeId: (name) => store.clusterspiffeids.get(name),
    bookmark() {
      for (const s of streams) s.res.write(`${JSON.stringify({ type: "BOOKMARK", object: { kind: "Status", apiVersion: "v1", metadata: { resourceVersion: String(rv) } } })}\n`);
    },
    compactWatchHistory() {
      // As etcd compacting at a new revision: every resourceVersion a client holds is now too old; a fresh list is not.
      compactedBelow = ++rv;
      history.length = 0;
    },
    dropWatches() {
      for (const s of streams) s.res.end();
      streams.clear();
    },
    stallWatches() {
      streams.clear();
    },
    expireWatches() {
      for (const s of streams) s.res.write(`${JSON.stringify({ type: "ERROR", object: status(410, "Expired", "too old resource version") })}\n`);
    },
    openWatches: () => streams.size,
    setCrdInstalled: (installed) => void (crdInstalled = installed),
  };
  return { api, feeds, handle };
}
