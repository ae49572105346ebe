import ipaddr from "ipaddr.js";
import { maskSecret } from "@runit/protocol";

/** Why a provider URL was refused (logged with INVALID_PROVIDER_URL; safe to show). */
export type ProviderUrlRefusal =
  | "unparseable"
  | "whitespace-or-backslash"
  | "not-https"
  | "userinfo"
  | "port"
  | "ip-literal"
  | "trailing-dot"
  | "bad-label"
  | "suffix"
  | "api-host"
  | "path-query-or-fragment";

/** The outcome of `validateProviderUrl`: the canonical URL, or the reason it was refused. */
export type ProviderUrlCheck = { ok: true; url: string; host: string } | { ok: false; reason: ProviderUrlRefusal };

const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

function looksLikeIp(host: string): boolean {
  const bare = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  // WHATWG URL parsing already turned decimal, octal, hex and short IPv4 forms into dotted quads;
  // ipaddr.js catches those and every IPv6 spelling, including IPv4-mapped ones.
  return ipaddr.isValid(bare) || bare.includes(":");
}

/**
 * Checks a cloudflared public URL: https, no userinfo, port 443 only, a DNS name (never an IP
 * literal in any spelling) strictly under one of `suffixes`, not the suffix's own `api.` host, and
 * nothing after the origin but `/`. The seed's `includes("trycloudflare.com")` let
 * `x.trycloudflare.com.evil.example` through; a label-wise suffix match does not.
 */
export function validateProviderUrl(raw: string, suffixes: readonly string[]): ProviderUrlCheck {
  if (/[\s\\]/.test(raw) || raw !== raw.trim()) return { ok: false, reason: "whitespace-or-backslash" };
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return { ok: false, reason: "unparseable" };
  }
  if (url.protocol !== "https:") return { ok: false, reason: "not-https" };
  if (url.username !== "" || url.password !== "" || /^https:\/\/[^/?#]*@/i.test(raw)) {
    return { ok: false, reason: "userinfo" };
  }
  if (url.port !== "") return { ok: false, reason: "port" };
  const host = url.hostname.toLowerCase();
  if (looksLikeIp(host)) return { ok: false, reason: "ip-literal" };
  if (host.endsWith(".")) return { ok: false, reason: "trailing-dot" };
  const labels = host.split(".");
  if (!labels.every((label) => LABEL.test(label))) return { ok: false, reason: "bad-label" };
  const suffix = suffixes.find((s) => host.endsWith(`.${s}`) && host.length > s.length + 1);
  if (!suffix) return { ok: false, reason: "suffix" };
  if (host === `api.${suffix}`) return { ok: false, reason: "api-host" };
  if ((url.pathname !== "/" && url.pathname !== "") || url.search !== "" || url.hash !== "" || raw.includes("#") || raw.includes("?")) {
    return { ok: false, reason: "path-query-or-fragment" };
  }
  return { ok: true, url: `https://${host}`, host };
}

/**
 * What the security log keeps of a refused provider URL: its scheme and host, never its
 * credentials, path, query or fragment (a URL like `https://x.trycloudflare.com/?token=…` would
 * otherwise put a Jupyter token whole in the log and the audit table). Text that does not parse
 * as a URL is masked like a secret.
 */
export function loggableProviderUrl(raw: string): string {
  try {
    const url = new URL(raw);
    const elided = url.username !== "" || url.password !== "" || raw.length > `${url.protocol}//${url.host}/`.length;
    return `${url.protocol}//${url.host}${elided ? "/…" : ""}`.slice(0, 200);
  } catch {
    return maskSecret(raw);
  }
}
