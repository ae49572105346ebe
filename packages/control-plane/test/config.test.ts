import type { IncomingMessage } from "node:http";
import { DEFAULT_LIMITS, DEFAULT_TIMERS } from "@runit/protocol";
import { describe, expect, it } from "vitest";
import { loadConfig, parseTrustProxy, resolveClientIp } from "../src/index.js";

function fakeReq(remoteAddress: string, xff?: string): IncomingMessage {
  return { socket: { remoteAddress }, headers: xff === undefined ? {} : { "x-forwarded-for": xff } } as unknown as IncomingMessage;
}

describe("loadConfig", () => {
  it("has the documented defaults", () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      port: 10000,
      host: undefined,
      dbPath: "./data/runit.db",
      adminToken: undefined,
      corsOrigins: [],
      trustProxy: { kind: "none" },
      tunnelHostSuffixes: ["trycloudflare.com"],
      providerStaleMs: DEFAULT_TIMERS.providerStaleMs,
      lockTimeoutMs: DEFAULT_TIMERS.lockTimeoutMs,
      sweepIntervalMs: DEFAULT_TIMERS.sweepIntervalMs,
      maxJsonBodyBytes: 65536,
      bandwidthCapBytes: DEFAULT_LIMITS.bandwidthCapBytes,
      relayResponseTimeoutMs: 120_000,
      rateLimits: { registration: { max: 10, windowMs: 300_000 } },
    });
  });

  it("reads every timer and limit from RUNIT_* variables", () => {
    const config = loadConfig({
      PORT: "0",
      RUNIT_DB: "/tmp/x.db",
      RUNIT_CORS_ORIGINS: "https://a.example, https://b.example/",
      RUNIT_TUNNEL_HOST_SUFFIXES: "tunnels.example.org,.trycloudflare.com",
      RUNIT_PROVIDER_STALE_MS: "1000",
      RUNIT_LOCK_TIMEOUT_MS: "2000",
      RUNIT_RATE_REGISTRATION_MAX: "3",
      RUNIT_RATE_RENTER_WINDOW_MS: "500",
      RUNIT_BANDWIDTH_CAP_BYTES: "1024",
      RUNIT_RELAY_RESPONSE_TIMEOUT_MS: "30000",
    });
    expect(config.relayResponseTimeoutMs).toBe(30_000);
    expect(config.port).toBe(0);
    expect(config.corsOrigins).toEqual(["https://a.example", "https://b.example"]);
    expect(config.tunnelHostSuffixes).toEqual(["tunnels.example.org", "trycloudflare.com"]);
    expect([config.providerStaleMs, config.lockTimeoutMs, config.bandwidthCapBytes]).toEqual([1000, 2000, 1024]);
    expect(config.rateLimits.registration.max).toBe(3);
    expect(config.rateLimits.renter.windowMs).toBe(500);
  });

  it("refuses unusable values, naming the variable", () => {
    expect(() => loadConfig({ RUNIT_LOCK_TIMEOUT_MS: "soon" })).toThrow(/RUNIT_LOCK_TIMEOUT_MS/);
    expect(() => loadConfig({ RUNIT_CORS_ORIGINS: "*" })).toThrow(/RUNIT_CORS_ORIGINS/);
    expect(() => loadConfig({ RUNIT_RELAY_RESPONSE_TIMEOUT_MS: "0" })).toThrow(/RUNIT_RELAY_RESPONSE_TIMEOUT_MS/);
    expect(() => loadConfig({ RUNIT_TUNNEL_HOST_SUFFIXES: "com" })).toThrow(/RUNIT_TUNNEL_HOST_SUFFIXES/);
    // ::ffff:0:0/96 is all of IPv4 written as IPv6, /80 reaches past the mapped space.
    for (const blanket of ["true", "*", "all", "0.0.0.0/0", "::/0", "::ffff:0:0/96", "::ffff:0:0/80", "nonsense"]) {
      expect(() => loadConfig({ RUNIT_TRUST_PROXY: blanket }), blanket).toThrow(/RUNIT_TRUST_PROXY/);
    }
  });
});

describe("client IP", () => {
  it("is the socket address by default, whatever X-Forwarded-For says; IPv4-mapped is normalised", () => {
    const none = parseTrustProxy(undefined);
    expect(resolveClientIp(fakeReq("::ffff:127.0.0.2", "1.2.3.4"), none)).toBe("127.0.0.2");
  });

  it("with a hop count, takes that many hops from the right", () => {
    const one = parseTrustProxy("1");
    expect(resolveClientIp(fakeReq("127.0.0.1", "6.6.6.6, 198.51.100.7"), one)).toBe("198.51.100.7");
    expect(resolveClientIp(fakeReq("127.0.0.1"), one)).toBe("127.0.0.1");
    const two = parseTrustProxy("2");
    expect(resolveClientIp(fakeReq("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.0.0.2"), two)).toBe("198.51.100.7");
  });

  it("with CIDRs, walks left only across trusted proxies", () => {
    const trust = parseTrustProxy("10.0.0.0/8,127.0.0.1");
    expect(resolveClientIp(fakeReq("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.2.3"), trust)).toBe("198.51.100.7");
    // An untrusted peer's header is ignored.
    expect(resolveClientIp(fakeReq("192.0.2.1", "6.6.6.6"), trust)).toBe("192.0.2.1");
  });

  it("matches an IPv4-mapped range as the IPv4 range it names", () => {
    const trust = parseTrustProxy("::ffff:10.0.0.0/104");
    expect(resolveClientIp(fakeReq("::ffff:10.1.2.3", "198.51.100.7"), trust)).toBe("198.51.100.7");
    expect(resolveClientIp(fakeReq("100.1.2.3", "6.6.6.6"), trust)).toBe("100.1.2.3");
    expect(resolveClientIp(fakeReq("11.0.0.1", "6.6.6.6"), trust)).toBe("11.0.0.1");
  });
});
