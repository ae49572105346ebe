import type { IncomingMessage } from "node:http";
import ipaddr from "ipaddr.js";
import { ConfigError } from "./config.js";

/**
 * Which proxies may tell us the client's address through X-Forwarded-For: none (the default: the
 * socket address is the client), a fixed number of hops, or proxies inside a CIDR list.
 */
export type TrustProxy =
  | { kind: "none" }
  | { kind: "hops"; hops: number }
  | { kind: "cidrs"; ranges: Array<[ipaddr.IPv4 | ipaddr.IPv6, number]>; spec: string };

function configError(message: string): ConfigError {
  return new ConfigError(`RUNIT_TRUST_PROXY: ${message}`);
}

/** Parses RUNIT_TRUST_PROXY: unset/"false"/"0" → none, an integer → hops, else a CIDR list. */
export function parseTrustProxy(raw: string | undefined): TrustProxy {
  const value = raw?.trim() ?? "";
  if (value === "" || value === "false" || value === "0") return { kind: "none" };
  if (["true", "*", "all", "yes"].includes(value.toLowerCase())) {
    throw configError(`"${value}" would trust every client's X-Forwarded-For; give a hop count or CIDRs`);
  }
  if (/^\d+$/.test(value)) {
    const hops = Number(value);
    if (hops > 32) throw configError("hop count above 32 is not plausible");
    return { kind: "hops", hops };
  }
  const ranges = value.split(",").map((part) => parseRange(part.trim()));
  return { kind: "cidrs", ranges, spec: value };
}

function parseRange(cidr: string): [ipaddr.IPv4 | ipaddr.IPv6, number] {
  try {
    const [addr, bits] = cidr.includes("/") ? ipaddr.parseCIDR(cidr) : ipaddr.parseCIDR(`${cidr}/${ipaddr.parse(cidr).kind() === "ipv4" ? 32 : 128}`);
    if (bits === 0) throw new Error("prefix 0");
    const mapped = addr.kind() === "ipv6" && (addr as ipaddr.IPv6).isIPv4MappedAddress();
    // An IPv4-mapped range is matched as IPv4 (addresses are normalized); `::ffff:0:0/96` is
    // IPv4's /0, and anything shorter reaches past the mapped space: both trust everyone.
    if (mapped && bits <= 96) throw new Error("mapped prefix 0");
    return mapped ? [normalizeAddr(addr), bits - 96] : [addr, bits];
  } catch {
    throw configError(`"${cidr}" is not a CIDR (or is /0, which trusts everyone)`);
  }
}

function normalizeAddr(addr: ipaddr.IPv4 | ipaddr.IPv6): ipaddr.IPv4 | ipaddr.IPv6 {
  if (addr.kind() === "ipv6" && (addr as ipaddr.IPv6).isIPv4MappedAddress()) {
    return (addr as ipaddr.IPv6).toIPv4Address();
  }
  return addr;
}

// normalizeIp runs on every request (the relay checks the locking IP each time); parsing is the
// costly part and a pure function of the text, so results are remembered (bounded).
const normalized = new Map<string, string>();
const MAX_REMEMBERED = 4096;

/** Canonical text of an address (`::ffff:127.0.0.1` → `127.0.0.1`); non-addresses come back as-is. */
export function normalizeIp(ip: string | undefined): string {
  if (!ip) return "unknown";
  let canonical = normalized.get(ip);
  if (canonical !== undefined) return canonical;
  try {
    canonical = normalizeAddr(ipaddr.parse(ip)).toString();
  } catch {
    canonical = ip;
  }
  if (normalized.size >= MAX_REMEMBERED) normalized.clear();
  normalized.set(ip, canonical);
  return canonical;
}

function isTrusted(trust: TrustProxy & { kind: "cidrs" }, ip: string): boolean {
  let addr: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    addr = normalizeAddr(ipaddr.parse(ip));
  } catch {
    return false;
  }
  return trust.ranges.some(([range, bits]) => range.kind() === addr.kind() && addr.match(range, bits));
}

function forwardedChain(req: IncomingMessage): string[] {
  const header = req.headers["x-forwarded-for"];
  const joined = Array.isArray(header) ? header.join(",") : (header ?? "");
  return joined
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .reverse();
}

/**
 * The client address of `req` under `trust`. Walks X-Forwarded-For from the right only across
 * trusted hops, so a client cannot choose its own address by sending the header.
 */
export function resolveClientIp(req: IncomingMessage, trust: TrustProxy): string {
  const socketIp = normalizeIp(req.socket.remoteAddress);
  if (trust.kind === "none") return socketIp;
  const chain = [socketIp, ...forwardedChain(req).map(normalizeIp)];
  if (trust.kind === "hops") return chain[Math.min(trust.hops, chain.length - 1)] ?? socketIp;
  let index = 0;
  while (index < chain.length - 1 && isTrusted(trust, chain[index] ?? "")) index += 1;
  return chain[index] ?? socketIp;
}

/** True when the request reached us over TLS, or a trusted proxy says it did. */
export function isHttpsRequest(req: IncomingMessage, trust: TrustProxy): boolean {
  if ((req.socket as { encrypted?: boolean }).encrypted) return true;
  if (trust.kind === "none") return false;
  const peer = normalizeIp(req.socket.remoteAddress);
  if (trust.kind === "cidrs" && !isTrusted(trust, peer)) return false;
  const proto = req.headers["x-forwarded-proto"];
  const first = (Array.isArray(proto) ? proto[0] : proto)?.split(",")[0]?.trim().toLowerCase();
  return first === "https";
}
