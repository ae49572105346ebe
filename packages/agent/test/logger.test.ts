import { describe, expect, it } from "vitest";
import { MaskedSecrets, createLogger } from "../src/logger.js";

describe("agent logger", () => {
  it("masks every secret it is given wherever it appears in a line", () => {
    const lines: string[] = [];
    const secrets = new MaskedSecrets(["rk_provider_key_0123456789"]);
    secrets.add("session-secret-abcdefgh");
    const logger = createLogger({ write: (s: string) => lines.push(s) }, undefined, () => secrets.list());
    logger.info("key rk_provider_key_0123456789 secret session-secret-abcdefgh twice session-secret-abcdefgh");
    expect(lines).toHaveLength(1);
    expect(lines[0]).not.toContain("rk_provider_key_0123456789");
    expect(lines[0]).not.toContain("session-secret-abcdefgh");
    expect(lines[0]?.startsWith("key ")).toBe(true);
  });

  it("keeps the provider key and only the latest session secrets: the set does not grow with every session", () => {
    const secrets = new MaskedSecrets(["rk_provider_key_0123456789"], 4);
    for (let i = 0; i < 100; i++) secrets.add(`secret-of-session-${i}`);
    secrets.add("secret-of-session-99"); // again: not counted twice
    secrets.add("rk_provider_key_0123456789");
    expect(secrets.list()).toEqual(["rk_provider_key_0123456789", "secret-of-session-96", "secret-of-session-97", "secret-of-session-98", "secret-of-session-99"]);
  });
});
