import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const protocolSrc = fileURLToPath(new URL("./packages/protocol/src/index.ts", import.meta.url));
const relayLinkSrc = fileURLToPath(new URL("./packages/relay-link/src/index.ts", import.meta.url));

// Tests import @runit/protocol and @runit/relay-link from source; tests that spawn the CLIs use the built dist/.
export default defineConfig({
  resolve: { alias: { "@runit/protocol": protocolSrc, "@runit/relay-link": relayLinkSrc } },
  test: {
    include: ["packages/*/test/**/*.test.ts", "e2e/**/*.test.ts", "bench/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 120_000,
    // Two cores: Docker and browser tests compete for them.
    maxWorkers: 2,
  },
});
