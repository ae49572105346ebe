import type { HeaderList } from "@runit/protocol";
import { HOP_BY_HOP_HEADERS } from "@runit/relay-link";

// The renter's credentials for the control plane (the runit_access cookie, any Authorization)
// must never reach Jupyter: the agent authenticates to Jupyter with its own token.
const RENTER_CREDENTIALS = new Set(["authorization", "cookie"]);

function pairs(raw: string[]): HeaderList {
  const list: HeaderList = [];
  for (let i = 0; i + 1 < raw.length; i += 2) list.push([raw[i] as string, raw[i + 1] as string]);
  return list;
}

/** The renter's request headers as sent to the agent; an upgrade keeps Upgrade/Connection. */
export function requestHeadersForTunnel(rawHeaders: string[], upgrade: boolean): HeaderList {
  const kept = pairs(rawHeaders).filter(([name]) => {
    const lower = name.toLowerCase();
    return !RENTER_CREDENTIALS.has(lower) && !HOP_BY_HOP_HEADERS.has(lower);
  });
  if (upgrade) kept.push(["Connection", "Upgrade"], ["Upgrade", "websocket"]);
  return kept;
}

/** Jupyter's response headers as sent to the renter; a 101 keeps Upgrade/Connection. */
export function responseHeadersForRenter(headers: HeaderList, status: number): HeaderList {
  return headers.filter(([name]) => {
    const lower = name.toLowerCase();
    if (status === 101 && (lower === "upgrade" || lower === "connection")) return true;
    return !HOP_BY_HOP_HEADERS.has(lower);
  });
}

/** The value of one cookie in a Cookie header, or undefined. */
export function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() !== name) continue;
    const value = part.slice(eq + 1).trim();
    try {
      return decodeURIComponent(value);
    } catch {
      return value;
    }
  }
  return undefined;
}
