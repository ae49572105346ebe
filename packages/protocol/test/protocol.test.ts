import { describe, expect, it } from "vitest";
import {
  AgentSessionStateSchema,
  ERROR_CODES,
  ERROR_MESSAGES,
  ERROR_STATUS,
  JupyterKernelsSchema,
  JupyterStatusSchema,
  QuickTunnelMetricsSchema,
  ReceiveWindow,
  RegisterSessionRequestSchema,
  RunitError,
  SendCredit,
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

describe("credit", () => {
  it("lets a sender send at most its window until the receiver grants back what it consumed", () => {
    const credit = new SendCredit(1000);
    const window = new ReceiveWindow(1000);
    expect(credit.take(600)).toBe(600);
    expect(window.receive(600)).toBe(true);
    expect(credit.take(600)).toBe(400);
    expect(window.receive(400)).toBe(true);
    expect(credit.take(1)).toBe(0);
    // Grants go out per half window consumed.
    expect(window.consume(400)).toBe(0);
    const grant = window.consume(200);
    expect(grant).toBe(600);
    expect(credit.grant(grant)).toBe(true);
    expect(credit.bytes).toBe(600);
  });

  it("refuses a grant that would lift credit above the window, and a peer that sends past its credit", () => {
    const credit = new SendCredit(1000);
    expect(credit.grant(1)).toBe(false);
    expect(credit.bytes).toBe(1000);
    credit.take(300);
    expect(credit.grant(301)).toBe(false);
    expect(credit.grant(300)).toBe(true);
    const window = new ReceiveWindow(1000);
    expect(window.receive(1000)).toBe(true);
    expect(window.receive(1)).toBe(false);
  });
});

describe("what the agent reads on the provider's machine", () => {
  it("validates Jupyter's answers, cloudflared's metrics and the state file", () => {
    expect(JupyterStatusSchema.safeParse({ last_activity: "2026-12-02T00:00:00Z", connections: 1, kernels: 0, started: "x" }).success).toBe(true);
    expect(JupyterStatusSchema.safeParse({ last_activity: "x", connections: -1, kernels: 0 }).success).toBe(false);
    expect(JupyterKernelsSchema.safeParse([{ execution_state: "busy", connections: 1, id: "k" }]).success).toBe(true);
    expect(JupyterKernelsSchema.safeParse({ execution_state: "busy" }).success).toBe(false);
    expect(QuickTunnelMetricsSchema.safeParse({ hostname: "a-b.trycloudflare.com" }).success).toBe(true);
    expect(QuickTunnelMetricsSchema.safeParse({ hostname: 7 }).success).toBe(false);
    const state = { sessionId: "s", sessionSecret: "x", jupyterToken: "t", containerId: "c", jupyter: { kind: "socket", path: "/w/.jupyter-sockets/s.sock" }, basePath: "/", tunnel: "relay", workspaceDir: "/w" };
    expect(AgentSessionStateSchema.safeParse(state).success).toBe(true);
    expect(AgentSessionStateSchema.safeParse({ ...state, jupyter: { kind: "tcp", port: 49153 } }).success).toBe(true);
    expect(AgentSessionStateSchema.safeParse({ ...state, tunnel: "ssh" }).success).toBe(false);
    expect(AgentSessionStateSchema.safeParse({ ...state, jupyter: { kind: "tcp", port: 0 } }).success).toBe(false);
    expect(AgentSessionStateSchema.safeParse({ ...state, jupyter: { kind: "socket", path: "/x", port: 1 } }).success).toBe(false);
  });
});
