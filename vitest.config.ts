import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts", "spiffe/**/*.test.ts", "server/**/*.test.ts", "agent/**/*.test.ts", "plugins/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Two test files at a time on the 2-core CI machine: integration tests mostly wait on their
    // server and agent processes, and one file at a time took the suite past 25 minutes.
    maxWorkers: 2,
  },
});
