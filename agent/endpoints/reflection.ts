/**
 * gRPC Server Reflection for the Workload Endpoint (WEP-21): tools such as
 * `grpcurl -plaintext -unix <socket> list` discover the services on the
 * socket (`SpiffeWorkloadAPI`, health, and whatever else is registered) and
 * their message types without the .proto files.
 *
 * Served as `grpc.reflection.v1.ServerReflection` and, for grpcurl and other
 * older clients, as `grpc.reflection.v1alpha.ServerReflection`. The two
 * protocols differ only in the package name; their messages are identical
 * field for field, so one handler with the v1 codecs answers both paths.
 *
 * Descriptors come from the protobuf-es generated files (`file.proto` is the
 * `FileDescriptorProto` the generator embedded). A file is always sent with
 * all of its transitive dependencies, so a client can build it on its own
 * without asking again; the reflection protocol lets clients receive a file
 * more than once.
 */
import { create, toBinary, type DescEnum, type DescFile, type DescMessage, type DescService, type MessageInitShape } from "@bufbuild/protobuf";
import type { GenService } from "@bufbuild/protobuf/codegenv2";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { status as grpcStatus, type Server, type ServiceDefinition, type UntypedServiceImplementation } from "@grpc/grpc-js";
import { ServerReflection, ServerReflectionResponseSchema, type ServerReflectionRequest } from "../../proto/gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../../proto/gen/grpc/reflection/v1alpha/reflection_pb.js";
import { grpcMethodPath, grpcServiceDefinition, type GrpcServiceImplementation } from "../../spiffe/grpc/service.js";

/** The protobuf-es method map of `grpc.reflection.v1.ServerReflection`. */
type ReflectionMethods = typeof ServerReflection extends GenService<infer S> ? S : never;

/** The answer part of a response. */
type Answer = NonNullable<MessageInitShape<typeof ServerReflectionResponseSchema>["messageResponse"]>;

/** One grpc-js service of the reflection protocol (v1 or v1alpha). */
export interface ReflectionGrpcService {
  readonly definition: ServiceDefinition;
  readonly implementation: UntypedServiceImplementation;
}

/** Server reflection over a fixed set of services; add it to a grpc-js server with {@link addReflectionService}. */
export interface ReflectionService {
  /** `grpc.reflection.v1.ServerReflection` and `grpc.reflection.v1alpha.ServerReflection`. */
  readonly services: readonly ReflectionGrpcService[];
  /** The fully-qualified service names that list_services answers, sorted. */
  readonly serviceNames: readonly string[];
}

/** Everything the answers need, indexed once at creation. */
interface Index {
  readonly byFilename: Map<string, DescFile>;
  readonly bySymbol: Map<string, DescFile>;
  /** `<containing type>#<number>` → the file declaring that extension. */
  readonly byExtension: Map<string, DescFile>;
  /** Message type name → the extension numbers declared for it. */
  readonly extensionNumbers: Map<string, number[]>;
}

function indexMessage(m: DescMessage, file: DescFile, index: Index): void {
  index.bySymbol.set(m.typeName, file);
  if (!index.extensionNumbers.has(m.typeName)) index.extensionNumbers.set(m.typeName, []);
  for (const f of m.fields) index.bySymbol.set(`${m.typeName}.${f.name}`, file);
  for (const o of m.oneofs) index.bySymbol.set(`${m.typeName}.${o.name}`, file);
  for (const n of m.nestedMessages) indexMessage(n, file, index);
  for (const e of m.nestedEnums) indexEnum(e, file, index);
  for (const x of m.nestedExtensions) index.bySymbol.set(x.typeName, file);
}

function indexEnum(e: DescEnum, file: DescFile, index: Index): void {
  index.bySymbol.set(e.typeName, file);
  // Enum values are scoped like their enum's siblings (C++ scoping rules).
  const scope = e.typeName.includes(".") ? e.typeName.slice(0, e.typeName.lastIndexOf(".") + 1) : "";
  for (const v of e.values) index.bySymbol.set(`${scope}${v.name}`, file);
}

function indexService(s: DescService, file: DescFile, index: Index): void {
  index.bySymbol.set(s.typeName, file);
  for (const m of s.methods) index.bySymbol.set(`${s.typeName}.${m.name}`, file);
}

function extensionsOf(file: DescFile): DescFile["extensions"] {
  const out = [...file.extensions];
  const walk = (m: DescMessage): void => {
    out.push(...m.nestedExtensions);
    m.nestedMessages.forEach(walk);
  };
  file.messages.forEach(walk);
  return out;
}

/** The file followed by its transitive dependencies, each once. */
function withDependencies(file: DescFile): DescFile[] {
  const seen = new Set<DescFile>();
  const visit = (f: DescFile): void => {
    if (seen.has(f)) return;
    seen.add(f);
    f.dependencies.forEach(visit);
  };
  visit(file);
  return [...seen];
}

function buildIndex(files: readonly DescFile[]): Index {
  const index: Index = { byFilename: new Map(), bySymbol: new Map(), byExtension: new Map(), extensionNumbers: new Map() };
  for (const file of files.flatMap(withDependencies)) {
    if (index.byFilename.has(file.proto.name)) continue;
    index.byFilename.set(file.proto.name, file);
    file.messages.forEach((m) => indexMessage(m, file, index));
    file.enums.forEach((e) => indexEnum(e, file, index));
    file.services.forEach((s) => indexService(s, file, index));
    for (const x of file.extensions) index.bySymbol.set(x.typeName, file);
  }
  // Extensions are recorded after every message is known, whatever the file order.
  for (const file of index.byFilename.values()) {
    for (const x of extensionsOf(file)) {
      index.byExtension.set(`${x.extendee.typeName}#${x.number}`, file);
      const numbers = index.extensionNumbers.get(x.extendee.typeName);
      if (numbers !== undefined && !numbers.includes(x.number)) numbers.push(x.number);
    }
  }
  return index;
}

/**
 * Creates server reflection for the given services, the ones registered on
 * the server. list_services names exactly those plus the two reflection
 * services; the file questions resolve any symbol of the files declaring
 * them, of their dependencies and of the reflection protocol itself.
 *
 * @example
 * ```ts
 * const reflection = createReflectionService([SpiffeWorkloadAPI, Health]);
 * addReflectionService(server, reflection);
 * ```
 */
export function createReflectionService(services: readonly DescService[]): ReflectionService {
  const own = [ServerReflection, ServerReflectionV1alpha];
  const index = buildIndex([...services, ...own].map((s) => s.file));
  const serviceNames = [...new Set([...services, ...own].map((s) => s.typeName))].sort();
  const serialized = new Map<DescFile, Uint8Array>();
  const bytesOf = (f: DescFile): Uint8Array => {
    let b = serialized.get(f);
    if (b === undefined) serialized.set(f, (b = toBinary(FileDescriptorProtoSchema, f.proto)));
    return b;
  };

  const notFound = (what: string): Answer => ({ case: "errorResponse", value: { errorCode: grpcStatus.NOT_FOUND, errorMessage: `reflection: ${what} not found` } });
  const fileAnswer = (file: DescFile | undefined, what: string): Answer =>
    file === undefined ? notFound(what) : { case: "fileDescriptorResponse", value: { fileDescriptorProto: withDependencies(file).map(bytesOf) } };

  const answer = (request: ServerReflectionRequest): Answer => {
    const r = request.messageRequest;
    switch (r.case) {
      case "listServices":
        return { case: "listServicesResponse", value: { service: serviceNames.map((name) => ({ name })) } };
      case "fileByFilename":
        return fileAnswer(index.byFilename.get(r.value), `file ${JSON.stringify(r.value)}`);
      case "fileContainingSymbol":
        return fileAnswer(index.bySymbol.get(r.value), `symbol ${JSON.stringify(r.value)}`);
      case "fileContainingExtension":
        return fileAnswer(
          index.byExtension.get(`${r.value.containingType}#${r.value.extensionNumber}`),
          `extension ${r.value.extensionNumber} of ${JSON.stringify(r.value.containingType)}`,
        );
      case "allExtensionNumbersOfType": {
        const numbers = index.extensionNumbers.get(r.value);
        if (numbers === undefined) return notFound(`type ${JSON.stringify(r.value)}`);
        return { case: "allExtensionNumbersResponse", value: { baseTypeName: r.value, extensionNumber: [...numbers] } };
      }
      default:
        return { case: "errorResponse", value: { errorCode: grpcStatus.INVALID_ARGUMENT, errorMessage: "reflection: the request asks nothing" } };
    }
  };

  const implementation: GrpcServiceImplementation<ReflectionMethods> = {
    serverReflectionInfo(call) {
      call.on("data", (request: ServerReflectionRequest) => {
        if (call.cancelled) return;
        call.write(create(ServerReflectionResponseSchema, { validHost: request.host, originalRequest: request, messageResponse: answer(request) }));
      });
      call.on("end", () => call.end());
    },
  };

  const v1 = grpcServiceDefinition(ServerReflection);
  // Same messages on the wire: only the path names the v1alpha service.
  const v1alphaMethod = ServerReflectionV1alpha.method.serverReflectionInfo;
  const v1alpha: ServiceDefinition = {
    serverReflectionInfo: { ...v1.serverReflectionInfo, path: grpcMethodPath(ServerReflectionV1alpha.typeName, v1alphaMethod.name) },
  };
  return {
    services: [
      { definition: v1, implementation: implementation as UntypedServiceImplementation },
      { definition: v1alpha, implementation: implementation as UntypedServiceImplementation },
    ],
    serviceNames,
  };
}

/** Registers both reflection services on a grpc-js server. */
export function addReflectionService(server: Server, reflection: ReflectionService): void {
  for (const s of reflection.services) server.addService(s.definition, s.implementation);
}
