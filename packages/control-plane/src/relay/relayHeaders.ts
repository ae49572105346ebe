/**
 * Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are never relayed: not from
 * the renter's connection to Jupyter's, nor back.
 */
const HOP_BY_HOP_HEADERS: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

// The renter's credentials for the control plane (the runit_access cookie, any Authorization)
// must never reach Jupyter: the relay authenticates to Jupyter with the session's own token.
const RENTER_CREDENTIALS: ReadonlySet<string> = new Set(["authorization", "cookie"]);
// Answered by the control plane's own HTTP server already (100 Continue).
const ANSWERED_HERE: ReadonlySet<string> = new Set(["expect"]);

/** Where a session's Jupyter listens on its provider host, and its token (from the agent's hello). */
export interface JupyterUpstream {
  port: number;
  token: string;
}

/** A request for Jupyter: its head, ready to write, and how its body (if any) is framed. */
export interface UpstreamRequest {
  head: string;
  body: "none" | "length" | "chunked";
}

// What Node's HTTP server already refuses in a request line or header; checked again because the
// head is written by hand, so that nothing a renter sends can end a line early.
const UNSAFE_IN_HEAD = /[\0\r\n]/;

/**
 * The request sent to Jupyter: the renter's method and path, the renter's headers minus its
 * credentials, hop-by-hop headers and Host; Host (and Origin, when present) set to Jupyter's own
 * address so its same-origin and DNS-rebinding checks pass; Jupyter's token added. Cross-site
 * requests never get this far: the relay cookie is SameSite=Strict and bound to the locking IP.
 * A request with a body that came without Content-Length is sent chunked, so its framing towards
 * Jupyter is always explicit. Undefined when a value could not be written safely.
 */
export function upstreamRequest(method: string, url: string, rawHeaders: string[], upstream: JupyterUpstream, upgrade: boolean): UpstreamRequest | undefined {
  const host = `127.0.0.1:${upstream.port}`;
  let head = `${method} ${url} HTTP/1.1\r\nHost: ${host}\r\nAuthorization: token ${upstream.token}\r\n`;
  let unsafe = UNSAFE_IN_HEAD.test(method) || UNSAFE_IN_HEAD.test(url);
  let chunked = false;
  let length: string | undefined;
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    const lower = name.toLowerCase();
    if (lower === "transfer-encoding") chunked = true;
    if (lower === "content-length") length = rawHeaders[i + 1];
    if (lower === "host" || RENTER_CREDENTIALS.has(lower) || HOP_BY_HOP_HEADERS.has(lower) || ANSWERED_HERE.has(lower)) continue;
    const value = lower === "origin" ? `http://${host}` : (rawHeaders[i + 1] as string);
    if (UNSAFE_IN_HEAD.test(name) || UNSAFE_IN_HEAD.test(value)) unsafe = true;
    head += `${name}: ${value}\r\n`;
  }
  if (unsafe) return undefined;
  const body = upgrade ? "none" : chunked ? "chunked" : length !== undefined && length !== "0" ? "length" : "none";
  if (upgrade) head += "Connection: Upgrade\r\nUpgrade: websocket\r\n";
  else if (body === "chunked") head += "Transfer-Encoding: chunked\r\n";
  return { head: `${head}\r\n`, body };
}

// Response headers that act on a whole origin (host), never on one page or path. A session's pages
// share the control plane's origin, so from Jupyter these would reach the renter page and every
// other session: Set-Cookie (Jupyter sets `_xsrf` at Path=/, so two sessions overwrite each
// other's, and a hostile provider could flood the origin with cookies until every request to the
// control plane is refused), Clear-Site-Data (wipes the origin's cookies and storage), a service
// worker's widened scope, HSTS and Alt-Svc (how the browser reaches the host), NEL/Report-To
// (reports on the origin's traffic sent to an endpoint of the provider's choosing). Jupyter
// loses nothing: the relay never sends it a cookie (it authenticates with the token, which
// also skips Jupyter's XSRF check).
const ORIGIN_WIDE_HEADERS: ReadonlySet<string> = new Set([
  "set-cookie",
  "clear-site-data",
  "service-worker-allowed",
  "strict-transport-security",
  "alt-svc",
  "nel",
  "report-to",
]);

/**
 * Jupyter's response headers as sent to the renter (flat list): without hop-by-hop headers (a 101
 * keeps Upgrade/Connection) and without the origin-wide ones above.
 */
export function responseHeadersForRenter(rawHeaders: string[], status: number): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    const lower = name.toLowerCase();
    if (ORIGIN_WIDE_HEADERS.has(lower)) continue;
    if (HOP_BY_HOP_HEADERS.has(lower) && !(status === 101 && (lower === "upgrade" || lower === "connection"))) continue;
    out.push(name, rawHeaders[i + 1] as string);
  }
  return out;
}

/** A flat name/value header list without the headers named `lowerName`. */
export function withoutHeader(headers: string[], lowerName: string): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < headers.length; i += 2) {
    if ((headers[i] as string).toLowerCase() !== lowerName) out.push(headers[i] as string, headers[i + 1] as string);
  }
  return out;
}

/** How many cookies of one name are looked at (a browser sends one per path and domain). */
const MAX_SAME_NAME_COOKIES = 4;

/**
 * The values of the cookies named `name` in a Cookie header, in the order sent (at most four).
 * All of them, not the first: a page on another path of the control plane's origin, or on
 * another host of the same site, can set a cookie of the same name with a longer path, which the
 * browser then sends first; taking only the first would let it lock the renter out.
 */
export function readCookies(header: string | undefined, name: string): string[] {
  const values: string[] = [];
  if (!header) return values;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0 || part.slice(0, eq).trim() !== name) continue;
    const value = part.slice(eq + 1).trim();
    try {
      values.push(decodeURIComponent(value));
    } catch {
      values.push(value);
    }
    if (values.length === MAX_SAME_NAME_COOKIES) break;
  }
  return values;
}
