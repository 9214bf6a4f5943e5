// Generates TypeScript from proto/ into proto/gen/ with buf + protoc-gen-es.
// Run by `npm install` (prepare) and `npm run gen`; proto/gen/ is never edited by hand.
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const protoDir = path.join(root, "proto");
const buf = path.join(root, "node_modules", ".bin", "buf");
rmSync(path.join(protoDir, "gen"), { recursive: true, force: true });
execFileSync(buf, ["generate"], { cwd: protoDir, stdio: "inherit" });
console.log("proto: generated TypeScript in proto/gen/");
