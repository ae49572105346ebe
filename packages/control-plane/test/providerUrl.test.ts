import { afterAll, describe, expect, it } from "vitest";
import { validateProviderUrl } from "../src/providerUrl.js";
import { call, registrationBody, rememberSecret, startTestServer, stopAll } from "./harness.js";

afterAll(stopAll);

const SUFFIXES = ["trycloudflare.com"];

/** Every spelling the issue names, with the reason we expect it to be refused for. */
const REFUSED: Array<[string, string]> = [
  ["http://abc.trycloudflare.com", "not-https"],
  ["ftp://abc.trycloudflare.com", "not-https"],
  ["javascript:alert(1)", "not-https"],
  ["https://user:pass@abc.trycloudflare.com", "userinfo"],
  ["https://user@abc.trycloudflare.com", "userinfo"],
  ["https://@abc.trycloudflare.com", "userinfo"],
  ["https://abc.trycloudflare.com:8443", "port"],
  ["https://abc.trycloudflare.com:80", "port"],
  ["https://127.0.0.1", "ip-literal"],
  ["https://2130706433", "ip-literal"],
  ["https://0177.0.0.1", "ip-literal"],
  ["https://0x7f.1", "ip-literal"],
  ["https://0x7f000001", "ip-literal"],
  ["https://127.1", "ip-literal"],
  ["https://10.0.0.1", "ip-literal"],
  ["https://169.254.169.254", "ip-literal"],
  ["https://[::1]", "ip-literal"],
  ["https://[::ffff:127.0.0.1]", "ip-literal"],
  ["https://[::ffff:7f00:1]", "ip-literal"],
  ["https://[0:0:0:0:0:ffff:127.0.0.1]", "ip-literal"],
  ["https://[fe80::1]", "ip-literal"],
  ["https://x.trycloudflare.com.evil.example", "suffix"],
  ["https://trycloudflare.com.evil.example", "suffix"],
  ["https://eviltrycloudflare.com", "suffix"],
  ["https://trycloudflare.com", "suffix"],
  ["https://example.com/x.trycloudflare.com", "suffix"],
  ["https://example.com?x=.trycloudflare.com", "suffix"],
  ["https://example.com#.trycloudflare.com", "suffix"],
  ["https://abc.trycloudflare.com.", "trailing-dot"],
  ["https://trycloudflare.com.", "trailing-dot"],
  ["https://api.trycloudflare.com", "api-host"],
  ["https://API.TryCloudflare.com", "api-host"],
  ["https://abc.trycloudflare.com/path", "path-query-or-fragment"],
  ["https://abc.trycloudflare.com/?q=1", "path-query-or-fragment"],
  ["https://abc.trycloudflare.com/#frag", "path-query-or-fragment"],
  ["https://abc_def.trycloudflare.com", "bad-label"],
  ["https://-abc.trycloudflare.com", "bad-label"],
  ["https://a..trycloudflare.com", "bad-label"],
  ["https://evil.com\\@abc.trycloudflare.com", "whitespace-or-backslash"],
  [" https://abc.trycloudflare.com", "whitespace-or-backslash"],
  ["https://abc.trycloudflare.com\n", "whitespace-or-backslash"],
  ["https://ab\tc.trycloudflare.com", "whitespace-or-backslash"],
  ["not a url", "whitespace-or-backslash"],
  ["https://", "unparseable"],
  ["abc.trycloudflare.com", "unparseable"],
];

const ACCEPTED: Array<[string, string]> = [
  ["https://abc-def-123.trycloudflare.com", "https://abc-def-123.trycloudflare.com"],
  ["https://abc-def-123.trycloudflare.com/", "https://abc-def-123.trycloudflare.com"],
  ["https://ABC-def.TryCloudflare.COM:443/", "https://abc-def.trycloudflare.com"],
  ["https://a.b.trycloudflare.com", "https://a.b.trycloudflare.com"],
];

describe("validateProviderUrl", () => {
  it.each(REFUSED)("refuses %s (%s)", (url, reason) => {
    expect(validateProviderUrl(url, SUFFIXES)).toEqual({ ok: false, reason });
  });

  it.each(ACCEPTED)("accepts %s as %s", (url, canonical) => {
    expect(validateProviderUrl(url, SUFFIXES)).toMatchObject({ ok: true, url: canonical });
  });

  it("uses the configured suffixes, label-wise", () => {
    expect(validateProviderUrl("https://a.tunnel.example.org", ["tunnel.example.org"])).toMatchObject({ ok: true });
    expect(validateProviderUrl("https://a.trycloudflare.com", ["tunnel.example.org"])).toEqual({ ok: false, reason: "suffix" });
    expect(validateProviderUrl("https://atunnel.example.org", ["tunnel.example.org"])).toEqual({ ok: false, reason: "suffix" });
  });
});

describe("POST /provider/session with a cloudflared URL", () => {
  it("answers 400 INVALID_PROVIDER_URL and logs INVALID_PROVIDER_URL for every refused spelling", async () => {
    const server = await startTestServer({ rateLimits: {
      registration: { max: 1000, windowMs: 60_000 },
      provider: { max: 1000, windowMs: 60_000 },
      renter: { max: 1000, windowMs: 60_000 },
    } });
    const key = server.createKey();
    const jupyterToken = "jupyter_token_0123456789abcdef";
    rememberSecret(jupyterToken);
    // Spellings the body schema itself refuses (e.g. empty) never reach the URL check.
    const reachable = REFUSED.filter(([url]) => url.length > 0);
    for (const [url, reason] of reachable) {
      const reply = await call(server.url, "POST", "/provider/session", {
        body: registrationBody({ tunnel: { kind: "cloudflared", publicUrl: url }, jupyterToken }),
        headers: { authorization: `Bearer ${key}` },
      });
      expect(reply.status, url).toBe(400);
      expect(reply.json, url).toEqual({ error: `Invalid provider URL (${reason})`, code: "INVALID_PROVIDER_URL" });
    }
    // Credentials, paths and queries of refused URLs stay out of the log (afterAll also checks
    // that the remembered token appears nowhere).
    const leaky = [`https://abc.trycloudflare.com/?token=${jupyterToken}`, `https://${jupyterToken}@abc.trycloudflare.com`];
    for (const url of leaky) {
      const reply = await call(server.url, "POST", "/provider/session", {
        body: registrationBody({ tunnel: { kind: "cloudflared", publicUrl: url }, jupyterToken }),
        headers: { authorization: `Bearer ${key}` },
      });
      expect(reply.status, url).toBe(400);
    }
    const events = server.events("INVALID_PROVIDER_URL");
    expect(events.slice(-2).map((e) => e.url)).toEqual(["https://abc.trycloudflare.com/…", "https://abc.trycloudflare.com/…"]);
    expect(events.slice(0, -2).map((e) => e.reason)).toEqual(reachable.map(([, reason]) => reason));
    expect(events.find((e) => e.reason === "userinfo")?.url).toBe("https://abc.trycloudflare.com/…");
    expect(events.every((e) => e.ip === "127.0.0.1")).toBe(true);
    const ok = await call(server.url, "POST", "/provider/session", {
      body: registrationBody({ tunnel: { kind: "cloudflared", publicUrl: ACCEPTED[0]?.[0] }, jupyterToken }),
      headers: { authorization: `Bearer ${key}` },
    });
    expect(ok.status).toBe(201);
    rememberSecret((ok.json as { sessionSecret: string }).sessionSecret);
  });
});
