#!/usr/bin/env node
// Entry point installed as `sigil-server`; runs the compiled CLI from dist/.
import { main } from "../dist/server/cli/main.js";
process.exitCode = await main(process.argv.slice(2));
