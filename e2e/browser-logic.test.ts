// The renter page's pure decisions, without a browser: how long to wait after 429, how the lock
// keeper paces itself, and how a listed session is shown.
import { describe, expect, it } from "vitest";
import { nextHeartbeatDelay, retryDelay } from "../packages/control-plane/public/lockKeeper.js";
import { RENTER_HEARTBEAT_INTERVAL_MS, retryAfterSeconds, type SessionRow } from "../packages/control-plane/public/renterApi.js";
import { displayStatus, formatMemory } from "../packages/control-plane/public/sessionList.js";

describe("retryAfterSeconds", () => {
  it("reads Retry-After in seconds first", () => {
    expect(retryAfterSeconds(new Headers({ "retry-after": "42", "ratelimit-reset": "7" }), undefined)).toBe(42);
  });
  it("reads Retry-After as an HTTP date", () => {
    const inTen = new Date(Date.now() + 10_000).toUTCString();
    const seconds = retryAfterSeconds(new Headers({ "retry-after": inTen }), undefined);
    expect(seconds).toBeGreaterThanOrEqual(9);
    expect(seconds).toBeLessThanOrEqual(11);
  });
  it("falls back to the combined RateLimit header, then RateLimit-Reset, then the body", () => {
    expect(retryAfterSeconds(new Headers({ ratelimit: "limit=120, remaining=0, reset=33" }), undefined)).toBe(33);
    expect(retryAfterSeconds(new Headers({ ratelimit: '"renter";r=0;t=21' }), undefined)).toBe(21);
    expect(retryAfterSeconds(new Headers({ "ratelimit-reset": "12" }), undefined)).toBe(12);
    expect(retryAfterSeconds(new Headers(), { retryAfterSeconds: 4.2 })).toBe(5);
    expect(retryAfterSeconds(new Headers(), { error: "x" })).toBeUndefined();
  });
});

describe("nextHeartbeatDelay", () => {
  it("beats at a third of the time left, at most the protocol's interval, at least 500 ms", () => {
    expect(nextHeartbeatDelay(60_000, 0)).toBe(RENTER_HEARTBEAT_INTERVAL_MS);
    expect(nextHeartbeatDelay(8_000, 0)).toBe(2_666);
    expect(nextHeartbeatDelay(1_000, 0)).toBe(500);
    expect(nextHeartbeatDelay(0, 5_000)).toBe(500);
  });
});

describe("retryDelay", () => {
  it("retries soon, or after Retry-After, but never later than 3 s before the lock lapses", () => {
    expect(retryDelay(60_000, 0, 0)).toBe(2_000);
    expect(retryDelay(60_000, 0, 10_000)).toBe(10_000);
    // A 429 with Retry-After 60 s against a lock that lapses in 60 s: the last chance, 57 s.
    expect(retryDelay(60_000, 0, 60_000)).toBe(57_000);
    expect(retryDelay(60_000, 50_000, 60_000)).toBe(7_000);
    expect(retryDelay(60_000, 58_000, 60_000)).toBe(500);
  });
});

describe("how a session is shown", () => {
  const row = (status: SessionRow["status"], available?: boolean): SessionRow => ({
    sessionId: "0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f",
    status,
    hardware: { cpus: 2, memoryMb: 4096, gpus: [] },
    pricing: { hourlyUsd: 0.5 },
    createdAt: "2026-01-01T00:00:00.000Z",
    ...(available === undefined ? {} : { available }),
  });

  it("READY is available unless its provider is away; LOCKED is in use even though unavailable", () => {
    expect(displayStatus(row("READY", true), undefined)).toBe("available");
    expect(displayStatus(row("READY"), undefined)).toBe("available");
    expect(displayStatus(row("READY", false), undefined)).toBe("away");
    expect(displayStatus(row("LOCKED", false), undefined)).toBe("in-use");
    expect(displayStatus(row("LOCKED", false), "0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f")).toBe("yours");
  });

  it("formats memory in GB from 1024 MB up", () => {
    expect([512, 1024, 1536, 4096, 24576].map(formatMemory)).toEqual(["512 MB", "1 GB", "1.5 GB", "4 GB", "24 GB"]);
  });
});
