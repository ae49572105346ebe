import { describe, expect, it } from "vitest";
import {
  ERROR_CODES,
  ERROR_MESSAGES,
  ERROR_STATUS,
  RegisterSessionRequestSchema,
  RunitError,
  maskSecret,
  parseOrThrow,
  toRunitError,
} from "@runit/protocol";

const validRegistration = {
  tunnel: { kind: "relay" },
  hardware: { cpus: 2, memoryMb: 4096, gpus: [] },
  pricing: { hourlyUsd: 0.5 },
};

describe("error table", () => {
  it("maps every code to a status and a message", () => {
    for (const code of ERROR_CODES) {
      expect(ERROR_STATUS[code]).toBeGreaterThanOrEqual(400);
      expect(ERROR_MESSAGES[code].length).toBeGreaterThan(0);
    }
  });

  it("keeps the contract's quoted messages", () => {
    expect(ERROR_MESSAGES.SESSION_ALREADY_LOCKED).toBe("Session already in use");
    expect(ERROR_MESSAGES.IP_MISMATCH).toBe("IP mismatch - access denied");
    expect(ERROR_MESSAGES.INVALID_ACCESS_TOKEN).toBe("Invalid or expired token");
  });

  it("hides the text of unknown errors", () => {
    const err = toRunitError(new Error("SQLITE_CORRUPT at /secret/path"));
    expect(err.toBody()).toEqual({ error: "Internal error", code: "INTERNAL" });
  });
});

describe("RegisterSessionRequestSchema", () => {
  it("accepts a relay registration", () => {
    expect(parseOrThrow(RegisterSessionRequestSchema, validRegistration)).toEqual(validRegistration);
  });

  it("names the field path of a wrong shape", () => {
    const bad = { ...validRegistration, hardware: { cpus: "two", memoryMb: 1, gpus: [] } };
    try {
      parseOrThrow(RegisterSessionRequestSchema, bad);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(RunitError);
      expect((err as RunitError).path).toBe("hardware.cpus");
      expect((err as RunitError).message).toMatch(/^hardware\.cpus: /);
      expect((err as RunitError).status).toBe(400);
    }
  });

  it("refuses unknown fields", () => {
    expect(RegisterSessionRequestSchema.safeParse({ ...validRegistration, admin: true }).success).toBe(false);
  });
});

describe("maskSecret", () => {
  it("shows at most an 8-character prefix", () => {
    expect(maskSecret("abcdefghijklmnopqrstuvwxyz")).toBe("abcdefgh…");
    expect(maskSecret("abcd")).toBe("ab…");
  });
});
