import { QuickTunnelMetricsSchema } from "@runit/protocol";

/** A quick-tunnel host: one DNS label under trycloudflare.com, never the API host. */
const QUICK_TUNNEL_HOST = /^(?!api\.)[a-z0-9]+(?:-[a-z0-9]+)*\.trycloudflare\.com$/;

/** True for `<label>.trycloudflare.com` hosts other than api.trycloudflare.com. */
export function isQuickTunnelHost(host: string): boolean {
  return QUICK_TUNNEL_HOST.test(host.toLowerCase());
}

/**
 * Finds the quick-tunnel URL in cloudflared's log: only inside the `|  https://… |` box it
 * prints, so error lines that mention https://api.trycloudflare.com are never taken for it.
 */
export function parseQuickTunnelUrl(log: string): string | undefined {
  for (const line of log.split("\n")) {
    const m = /\|\s+(https:\/\/([a-z0-9.-]+))\s+\|/i.exec(line);
    if (m?.[1] && m[2] && isQuickTunnelHost(m[2])) return m[1].toLowerCase();
  }
  return undefined;
}

/** Turns the `/quicktunnel` JSON reply (`{"hostname":"x.trycloudflare.com"}`) into a URL, if valid. */
export function quickTunnelUrlFromMetrics(body: unknown): string | undefined {
  const parsed = QuickTunnelMetricsSchema.safeParse(body);
  return parsed.success && isQuickTunnelHost(parsed.data.hostname) ? `https://${parsed.data.hostname.toLowerCase()}` : undefined;
}
