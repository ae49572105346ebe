import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["**/dist/**", "**/node_modules/**", "test-artifacts/**", "bench/results/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ["**/*.ts"],
    rules: {
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
    },
  },
  {
    // Packages log through their logger; the security log has its own writer.
    files: ["packages/*/src/**/*.ts"],
    rules: { "no-console": "error" },
  },
  {
    // Layering (architecture.md): agent and control plane depend on protocol, never on each other.
    files: ["packages/agent/**/*.ts"],
    rules: { "no-restricted-imports": ["error", { patterns: ["@runit/control-plane", "**/control-plane/**"] }] },
  },
  {
    files: ["packages/control-plane/**/*.ts"],
    rules: { "no-restricted-imports": ["error", { patterns: ["@runit/agent", "**/packages/agent/**"] }] },
  },
  {
    files: ["packages/relay-link/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", { patterns: ["@runit/agent", "@runit/control-plane", "**/packages/agent/**", "**/control-plane/**"] }],
    },
  },
  {
    files: ["packages/protocol/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        { patterns: ["@runit/agent", "@runit/control-plane", "node:*"] },
      ],
    },
  },
);
