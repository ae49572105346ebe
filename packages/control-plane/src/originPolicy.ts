import type { IncomingHttpHeaders } from "node:http";

/**
 * Which origins may act on the control plane: the host a request was sent to, and the origins an
 * operator listed in RUNIT_CORS_ORIGINS (behind a proxy that rewrites `Host`, the public origin).
 * The API refuses a state-changing request from any other origin; the relay refuses every request
 * and upgrade from another site or origin (see `foreignRelayRequest`).
 */
export type OriginAllowed = (origin: string, host: string | undefined) => boolean;

/** The policy for the listed origins. */
export function originPolicy(listed: readonly string[]): OriginAllowed {
  const allowed = new Set(listed);
  return (origin, host) => allowed.has(origin) || sameHost(origin, host);
}

/** Whether `origin` (an `Origin` header) names `host` (a `Host` header; default ports compare equal). */
export function sameHost(origin: string, host: string | undefined): boolean {
  if (host === undefined) return false;
  try {
    const from = new URL(origin);
    return from.host !== "" && new URL(`${from.protocol}//${host}`).host === from.host;
  } catch {
    return false;
  }
}

/**
 * Why a relayed request (`/s/<id>/...`) comes from another site or origin, or undefined when it
 * does not. A session's pages are reached only from themselves: the relay authenticates to Jupyter
 * with its token, which exempts Jupyter's POSTs from its XSRF check, and it rewrites `Origin` for
 * Jupyter's own WebSocket check, so the relay makes that check instead. The cookie is
 * `SameSite=Strict`, which keeps it from other sites, but not from the same site: with
 * per-session origins, `<a>.sessions.example.com` and `<b>.sessions.example.com` are one site, and
 * without this a page of session A could POST to session B, or open its kernel's WebSocket.
 *
 * Refused: `Sec-Fetch-Site: same-site | cross-site` (sent by every current browser), except a
 * top-level GET or HEAD navigation (a link; what it shows stays out of the linking page's reach),
 * and an `Origin` the policy does not allow (sent with every upgrade, POST, PUT, PATCH and DELETE,
 * also by browsers without `Sec-Fetch-Site`). Clients that send neither (curl, the agent's tests)
 * are not browsers and carry the cookie themselves.
 */
export function foreignRelayRequest(
  method: string,
  headers: IncomingHttpHeaders,
  upgrade: boolean,
  originAllowed: OriginAllowed,
): string | undefined {
  const site = headers["sec-fetch-site"];
  if (site === "same-site" || site === "cross-site") {
    const navigation = !upgrade && headers["sec-fetch-mode"] === "navigate" && (method === "GET" || method === "HEAD");
    if (!navigation) return `Sec-Fetch-Site: ${site}`;
  }
  const origin = headers.origin;
  if (origin !== undefined && !originAllowed(origin, headers.host)) return "Origin";
  return undefined;
}
