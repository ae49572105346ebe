import type { IncomingMessage, ServerResponse } from "node:http";
import { RunitError, SESSION_ID_PATTERN } from "@runit/protocol";
import { writeJsonError } from "./httpErrors.js";

// Per-session origins (RUNIT_SESSION_ORIGIN, off by default). The API puts a relayed session at
// `/s/<id>/`; on the control plane's own host every session's pages would share one origin with
// the renter page and with each other, and a browser does not separate paths. With a template
// such as `https://{id}.sessions.example.com` each session is served on a host of its own
// (wildcard DNS and certificate to that host), so a hostile provider's page is cross-origin to
// the renter page and to every other session. The control plane tells the hosts apart by `Host`.

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Where sessions are served: `<scheme>://<session id>.<suffix>[:<port>]`. */
export interface SessionOrigin {
  scheme: "http" | "https";
  /** The DNS suffix below which each session has its host, e.g. `sessions.example.com`. */
  suffix: string;
  /** The port in the origin, or "" for the scheme's default. */
  port: string;
}

/** Parses a template `http(s)://{id}.<suffix>[:port]`; returns the reason when it is unusable. */
export function parseSessionOrigin(template: string): SessionOrigin | string {
  const match = /^(https?):\/\/\{id\}\.([^/:?#]+)(?::(\d{1,5}))?\/?$/.exec(template.trim());
  if (!match) return "expected http(s)://{id}.<dns suffix>[:port], with {id} as the first label and nothing after the origin";
  const suffix = (match[2] as string).toLowerCase();
  if (!suffix.split(".").every((label) => LABEL.test(label))) return `"${suffix}" is not a DNS suffix`;
  const port = match[3] ?? "";
  if (port !== "" && (Number(port) < 1 || Number(port) > 65535)) return `port ${port} is out of range`;
  return { scheme: match[1] as "http" | "https", suffix, port };
}

/** The origin of one session, e.g. `https://<id>.sessions.example.com`. */
export function sessionOriginOf(origin: SessionOrigin, sessionId: string): string {
  return `${origin.scheme}://${sessionId}.${origin.suffix}${origin.port ? `:${origin.port}` : ""}`;
}

/** The session whose host a request was sent to, or undefined for any other host. */
export function sessionHostOf(origin: SessionOrigin, req: IncomingMessage): string | undefined {
  const host = (req.headers.host ?? "").toLowerCase();
  const colon = host.lastIndexOf(":");
  const name = colon >= 0 && !host.endsWith("]") ? host.slice(0, colon) : host;
  const tail = `.${origin.suffix}`;
  if (!name.endsWith(tail)) return undefined;
  const id = name.slice(0, -tail.length);
  return SESSION_ID_PATTERN.test(id) ? id : undefined;
}

/** What a request on a session host may reach: its own session's relay and the hand-in. */
export function allowedOnSessionHost(sessionId: string, method: string, url: string): boolean {
  if (url === `/s/${sessionId}` || url.startsWith(`/s/${sessionId}/`) || url.startsWith(`/s/${sessionId}?`)) return true;
  return (method === "GET" || method === "HEAD") && /^\/access\/[^/?#]+(\?.*)?$/.test(url);
}

/** The session id a `/s/<id>...` URL names on the main host, when it looks like one. */
export function sessionOfRelayPath(url: string): string | undefined {
  const id = /^\/s\/([^/?]*)/.exec(url)?.[1];
  return id !== undefined && SESSION_ID_PATTERN.test(id) ? id : undefined;
}

/** The host split, consulted before anything else sees a request. */
export interface SessionHostGate {
  /** Answers and returns true for what the host split refuses or redirects; false passes it on. */
  request(req: IncomingMessage, res: ServerResponse): boolean;
  /** Whether an upgrade may go on to the relay (the server refuses the others with its 404). */
  allowsUpgrade(req: IncomingMessage): boolean;
}

/**
 * The host split of per-session origins. A session host serves its own session's `/s/<id>/` and
 * the hand-in (`/access/<token>`), nothing else: not the API, the renter page or another session.
 * The control plane's own host no longer relays: a `/s/<id>/...` request there is redirected
 * (308) to the session's host, where the cookie lives; a relayed upgrade there is refused.
 */
export function sessionHostGate(origin: SessionOrigin): SessionHostGate {
  const notFound = (res: ServerResponse): true => {
    writeJsonError(res, new RunitError("NOT_FOUND"));
    return true;
  };
  return {
    request(req, res) {
      const url = req.url ?? "/";
      const host = sessionHostOf(origin, req);
      if (host !== undefined) return allowedOnSessionHost(host, req.method ?? "GET", url) ? false : notFound(res);
      if (!url.startsWith("/s/")) return false;
      const sessionId = sessionOfRelayPath(url);
      if (!sessionId) return notFound(res);
      res.writeHead(308, { Location: `${sessionOriginOf(origin, sessionId)}${url}` }).end();
      return true;
    },
    allowsUpgrade(req) {
      const url = req.url ?? "/";
      const host = sessionHostOf(origin, req);
      return host !== undefined ? url.startsWith(`/s/${host}/`) : !url.startsWith("/s/");
    },
  };
}
