#!/usr/bin/env node
// Entry point installed as `sigil-agent`; runs the compiled CLI from dist/.
import { main } from "../dist/agent/cli/main.js";
process.exitCode = await main(process.argv.slice(2));
