/**
 * Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are never relayed; both ends
 * of the relay strip them (the renter's connection on the control plane, Jupyter's on the agent).
 */
export const HOP_BY_HOP_HEADERS: ReadonlySet<string> = new Set([
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
