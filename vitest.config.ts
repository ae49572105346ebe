import { fileURLToPath } from "node:url";
import { configDefaults, defineConfig } from "vitest/config";

const protocolSrc = fileURLToPath(new URL("./packages/protocol/src/index.ts", import.meta.url));
const relayLinkSrc = fileURLToPath(new URL("./packages/relay-link/src/index.ts", import.meta.url));

// The tests that drive Chromium. Chromium aborts its in-flight requests with
// net::ERR_NETWORK_CHANGED whenever a network interface appears or goes (every container another
// test starts or removes brings a veth), so they run after all the others, one file at a time.
const CHROMIUM_TESTS = ["e2e/browser.test.ts", "e2e/browser-messages.test.ts", "e2e/browser-session-origin.test.ts"];

// Tests import @runit/protocol and @runit/relay-link from source; tests that spawn the CLIs use the built dist/.
export default defineConfig({
  resolve: { alias: { "@runit/protocol": protocolSrc, "@runit/relay-link": relayLinkSrc } },
  test: {
    testTimeout: 30_000,
    hookTimeout: 120_000,
    // Two cores: Docker and browser tests compete for them.
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: {
          name: "main",
          include: ["packages/*/test/**/*.test.ts", "e2e/**/*.test.ts", "bench/**/*.test.ts"],
          exclude: [...configDefaults.exclude, ...CHROMIUM_TESTS],
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: { name: "chromium", include: CHROMIUM_TESTS, fileParallelism: false, sequence: { groupOrder: 1 } },
      },
    ],
  },
});
