import { describe, expect, it } from "vitest";
import { foreignRelayRequest, originPolicy, sameHost } from "../src/originPolicy.js";

const HOST = "a.sessions.example.com";
const policy = originPolicy(["https://app.example.com"]);
const check = (method: string, headers: Record<string, string>, upgrade = false) =>
  foreignRelayRequest(method, { host: HOST, ...headers }, upgrade, policy);

describe("sameHost", () => {
  it("compares an Origin with a Host header, default ports included", () => {
    expect(sameHost("https://a.sessions.example.com", HOST)).toBe(true);
    expect(sameHost("https://a.sessions.example.com", "a.sessions.example.com:443")).toBe(true);
    expect(sameHost("http://127.0.0.1:10000", "127.0.0.1:10000")).toBe(true);
    expect(sameHost("http://127.0.0.1:10001", "127.0.0.1:10000")).toBe(false);
    expect(sameHost("https://b.sessions.example.com", HOST)).toBe(false);
    expect(sameHost("null", HOST)).toBe(false);
    expect(sameHost("https://a.sessions.example.com", undefined)).toBe(false);
  });
});

describe("foreignRelayRequest", () => {
  it("passes the session's own requests and clients that are no browser", () => {
    expect(check("GET", {})).toBeUndefined();
    expect(check("POST", { "sec-fetch-site": "same-origin", origin: `https://${HOST}` })).toBeUndefined();
    expect(check("GET", { "sec-fetch-site": "none", "sec-fetch-mode": "navigate" })).toBeUndefined();
    expect(check("GET", { "sec-fetch-site": "same-origin", origin: `https://${HOST}` }, true)).toBeUndefined();
    expect(check("POST", { origin: "https://app.example.com" })).toBeUndefined();
  });

  it("passes a top-level GET or HEAD navigation from the same site (a link)", () => {
    expect(check("GET", { "sec-fetch-site": "same-site", "sec-fetch-mode": "navigate" })).toBeUndefined();
    expect(check("HEAD", { "sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate" })).toBeUndefined();
  });

  it("refuses another site's fetches, form posts and upgrades, and any foreign Origin", () => {
    expect(check("POST", { "sec-fetch-site": "same-site", "sec-fetch-mode": "no-cors" })).toBe("Sec-Fetch-Site: same-site");
    expect(check("GET", { "sec-fetch-site": "same-site", "sec-fetch-mode": "cors" })).toBe("Sec-Fetch-Site: same-site");
    expect(check("POST", { "sec-fetch-site": "same-site", "sec-fetch-mode": "navigate" })).toBe("Sec-Fetch-Site: same-site");
    expect(check("GET", { "sec-fetch-site": "cross-site", "sec-fetch-mode": "websocket" }, true)).toBe("Sec-Fetch-Site: cross-site");
    expect(check("GET", { "sec-fetch-site": "same-site", "sec-fetch-mode": "navigate" }, true)).toBe("Sec-Fetch-Site: same-site");
    // Browsers without Sec-Fetch-*: the Origin of every upgrade and unsafe request.
    expect(check("GET", { origin: "https://b.sessions.example.com" }, true)).toBe("Origin");
    expect(check("POST", { origin: "https://b.sessions.example.com" })).toBe("Origin");
    expect(check("POST", { origin: "null" })).toBe("Origin");
  });
});
