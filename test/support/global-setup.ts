/** Vitest global setup: the programs tests start run from dist/, so build it if a source is newer. */
import { ensureFreshBuild } from "./programs.js";

export default function setup(): void {
  ensureFreshBuild();
}
