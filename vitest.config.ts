import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts", "spiffe/**/*.test.ts", "server/**/*.test.ts", "agent/**/*.test.ts", "plugins/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Integration tests start Sigil's programs from dist/ (test/support/programs.ts); this rebuilds it when stale.
    globalSetup: ["test/support/global-setup.ts"],
  },
});
