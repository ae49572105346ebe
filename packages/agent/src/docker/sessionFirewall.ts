import { execFile } from "node:child_process";
import type Docker from "dockerode";

// Why this module exists: the session network is a user-defined bridge with inter-container
// traffic off, so sessions cannot reach each other through Docker's FORWARD rules. But the host
// itself owns an address on that bridge (the gateway), and packets a container sends to ANY
// address of the host (the gateway, the LAN address, docker0's address) go through the host's
// INPUT chain, which Docker leaves open: a renter's notebook could talk to every service the
// provider runs on 0.0.0.0 (databases, admin panels, the Docker API on TCP...). These rules close
// that: from the session bridge, the host accepts only packets of connections the HOST opened
// (the agent and docker-proxy reaching Jupyter), and refuses every new one. A second rule in
// DOCKER-USER drops bridge-to-same-bridge forwarding, so isolation holds even when the network
// was created by someone else with inter-container traffic on.
//
// Forwarded traffic (to anything that is not the host) is Docker's `-i <bridge> ! -o <bridge>
// -j ACCEPT`: the Internet, but also cloud metadata (169.254.169.254 hands out the instance's
// credentials) and the provider's whole LAN. So a third jump, in DOCKER-USER (FORWARD jumps there
// before any Docker rule), sends the bridge's traffic through RUNIT-SESSIONS-EGRESS, which drops
// new connections to link-local, private and reserved destinations. Internet egress still works,
// even through a gateway with a private address: forwarded packets carry the public destination.
// DNS (port 53) is let through: Docker's embedded resolver (127.0.0.11) dials non-loopback
// upstream servers from INSIDE the container's network namespace, so its queries leave through
// this bridge, and those servers are usually private (the LAN router, a VPC resolver; on GCP it
// is 169.254.169.254, on Azure 168.63.129.16). The price: a renter can reach port 53 of private
// hosts. Published Jupyter ports are unaffected: docker-proxy connects host→container, and the
// replies go back through INPUT (RELATED,ESTABLISHED), not FORWARD.

/** Chain that the INPUT jump of each session bridge leads to. */
export const SESSION_INPUT_CHAIN = "RUNIT-SESSIONS-INPUT";

/** Chain that the DOCKER-USER jump of each session bridge leads to (forwarded traffic). */
export const SESSION_EGRESS_CHAIN = "RUNIT-SESSIONS-EGRESS";

type Tool = "iptables" | "ip6tables";

// Destinations a session must not open connections to. Link-local: cloud metadata and the
// instance's own link. RFC 1918 and CGNAT: the provider's LAN, other Docker networks, VPNs
// (Tailscale uses 100.64/10) and Alibaba Cloud's metadata (100.100.100.200). The rest are never
// a public Internet destination: "this network", benchmarking (some VPNs and proxies hand it out
// locally), multicast, reserved/broadcast. 168.63.129.16 is public but only answers inside Azure:
// the WireServer, which serves VM agent and extension configuration. Loopback and the host's own
// addresses are absent on purpose: they are local, so they go through INPUT, not FORWARD.
const BLOCKED_V4 = [
  "0.0.0.0/8",
  "10.0.0.0/8",
  "100.64.0.0/10",
  "168.63.129.16/32",
  "169.254.0.0/16",
  "172.16.0.0/12",
  "192.168.0.0/16",
  "198.18.0.0/15",
  "224.0.0.0/4",
  "240.0.0.0/4",
];
// Unique local (incl. AWS metadata fd00:ec2::254), link-local, multicast.
const BLOCKED_V6 = ["fc00::/7", "fe80::/10", "ff00::/8"];

/** Result of one command: exit code and output. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program without a shell; injected so tests and `doctor` can observe the commands. */
export type CommandRunner = (file: string, args: readonly string[]) => Promise<CommandResult>;

/** The real runner: execFile, never a shell, bounded in time. */
export const execFileRunner: CommandRunner = (file, args) =>
  new Promise((resolve) => {
    execFile(file, [...args], { timeout: 15_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 127) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr || (err && !stdout ? err.message : "")) });
    });
  });

/** The host firewall could not be set up; the agent must not offer sessions without it. */
export class SessionFirewallError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SessionFirewallError";
  }
}

/** What `isolateSessionNetwork` did. */
export interface SessionFirewallResult {
  /** The host-side interface of the session bridge, e.g. `br-0123456789ab`. */
  bridge: string;
  /** Rules that were missing and were added (empty when everything was already in place). */
  added: string[];
  /**
   * Some IPv6 rules are absent: ip6tables could not be used, or there is no IPv6 DOCKER-USER chain
   * (Docker's ip6tables off), so no IPv6 egress chain. Containers get no IPv6 by default.
   */
  ipv6Skipped: boolean;
}

/** The host-side interface name of a Docker bridge network. */
export async function bridgeInterfaceOf(docker: Docker, network: string): Promise<string> {
  const info = (await docker.getNetwork(network).inspect()) as {
    Id: string;
    Driver?: string;
    Options?: Record<string, string>;
  };
  if (info.Driver !== undefined && info.Driver !== "bridge") {
    throw new SessionFirewallError(`network ${network} uses driver ${info.Driver}, not bridge`);
  }
  const named = info.Options?.["com.docker.network.bridge.name"];
  const bridge = named && named.length > 0 ? named : `br-${info.Id.slice(0, 12)}`;
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(bridge)) throw new SessionFirewallError(`unexpected bridge name "${bridge}"`);
  return bridge;
}

/** The rules of the session input chain, in order, as `iptables -S` prints them. */
function inputRules(): string[][] {
  return [
    ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"],
    ["-j", "REJECT"],
  ];
}

/**
 * The rules of the session egress chain, in order, as `iptables -S` prints them. Packets of
 * established connections return at once (replies to a LAN client of a published port stay
 * possible); everything else to a blocked destination (new connections, and invalid packets
 * that Docker's ACCEPT would forward too) is dropped, except DNS (see the header).
 */
function egressRules(tool: Tool): string[][] {
  const blocked = tool === "iptables" ? BLOCKED_V4 : BLOCKED_V6;
  return [
    ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"],
    ["-p", "udp", "-m", "udp", "--dport", "53", "-j", "RETURN"],
    ["-p", "tcp", "-m", "tcp", "--dport", "53", "-j", "RETURN"],
    ...blocked.map((cidr) => ["-d", cidr, "-j", "DROP"]),
  ];
}

/** Creates `chain`, or flushes and refills it when its rules are not exactly `expected`. */
async function ensureChain(run: CommandRunner, tool: Tool, chain: string, expected: string[][], added: string[]): Promise<void> {
  const listed = await run(tool, ["-w", "-S", chain]);
  const wanted = expected.map((rule) => `-A ${chain} ${rule.join(" ")}`);
  const current = listed.stdout.split("\n").filter((line) => line.startsWith(`-A ${chain} `));
  // iptables -S prints REJECT with its default reply spelled out.
  const normalised = current.map((line) => line.replace(" --reject-with icmp-port-unreachable", "").replace(" --reject-with icmp6-port-unreachable", ""));
  if (listed.code === 0 && normalised.join("\n") === wanted.join("\n")) return;
  if (listed.code !== 0) await must(run, tool, ["-w", "-N", chain]);
  else await must(run, tool, ["-w", "-F", chain]);
  for (const rule of expected) {
    await must(run, tool, ["-w", "-A", chain, ...rule]);
    added.push(`${tool} -A ${chain} ${rule.join(" ")}`);
  }
}

/** The per-bridge jumps, as `[chain, rule]`, shared by install and release. */
function inputJump(bridge: string): [string, string[]] {
  return ["INPUT", ["-i", bridge, "-j", SESSION_INPUT_CHAIN]];
}
function sameBridgeDrop(bridge: string): [string, string[]] {
  return ["DOCKER-USER", ["-i", bridge, "-o", bridge, "-j", "DROP"]];
}
function egressJump(bridge: string): [string, string[]] {
  return ["DOCKER-USER", ["-i", bridge, "-j", SESSION_EGRESS_CHAIN]];
}

async function ensureRule(run: CommandRunner, tool: Tool, [chain, rule]: [string, string[]], added: string[]): Promise<void> {
  const check = await run(tool, ["-w", "-C", chain, ...rule]);
  if (check.code === 0) return;
  await must(run, tool, ["-w", "-I", chain, "1", ...rule]);
  added.push(`${tool} -I ${chain} 1 ${rule.join(" ")}`);
}

async function must(run: CommandRunner, tool: string, args: string[]): Promise<void> {
  const result = await run(tool, args);
  if (result.code !== 0) {
    const why = result.stderr.trim().split("\n")[0] ?? "";
    throw new SessionFirewallError(`${tool} ${args.join(" ")} failed (${result.code}): ${why}`);
  }
}

/**
 * Installs, idempotently, the host rules that stop containers on `network` from opening
 * connections to the provider host, to each other, and to private or link-local destinations
 * (cloud metadata, the provider's LAN). Needs root or CAP_NET_ADMIN; throws
 * SessionFirewallError (with the failing command) when the IPv4 rules cannot be installed.
 */
export async function isolateSessionNetwork(
  docker: Docker,
  network: string,
  run: CommandRunner = execFileRunner,
): Promise<SessionFirewallResult> {
  const bridge = await bridgeInterfaceOf(docker, network);
  const added: string[] = [];
  try {
    await ensureChain(run, "iptables", SESSION_INPUT_CHAIN, inputRules(), added);
    await ensureRule(run, "iptables", inputJump(bridge), added);
    const dockerUser = await run("iptables", ["-w", "-S", "DOCKER-USER"]);
    if (dockerUser.code !== 0) {
      throw new SessionFirewallError("iptables chain DOCKER-USER is missing: is Docker managing iptables (iptables=false)?");
    }
    await ensureRule(run, "iptables", sameBridgeDrop(bridge), added);
    await ensureChain(run, "iptables", SESSION_EGRESS_CHAIN, egressRules("iptables"), added);
    await ensureRule(run, "iptables", egressJump(bridge), added);
  } catch (err) {
    if (err instanceof SessionFirewallError) throw err;
    throw new SessionFirewallError(`iptables could not be run: ${String(err)}`);
  }
  let ipv6Skipped = false;
  try {
    await ensureChain(run, "ip6tables", SESSION_INPUT_CHAIN, inputRules(), added);
    await ensureRule(run, "ip6tables", inputJump(bridge), added);
    // Without an IPv6 DOCKER-USER chain Docker does not manage IPv6 forwarding (ip6tables off).
    if ((await run("ip6tables", ["-w", "-S", "DOCKER-USER"])).code !== 0) throw new SessionFirewallError("no IPv6 DOCKER-USER");
    await ensureChain(run, "ip6tables", SESSION_EGRESS_CHAIN, egressRules("ip6tables"), added);
    await ensureRule(run, "ip6tables", egressJump(bridge), added);
  } catch {
    ipv6Skipped = true;
  }
  return { bridge, added, ipv6Skipped };
}

/**
 * Removes the per-bridge rules `isolateSessionNetwork` added for `network` (the shared chains stay).
 * For tests and operators that delete a session network; missing rules are fine.
 */
export async function releaseSessionNetwork(docker: Docker, network: string, run: CommandRunner = execFileRunner): Promise<void> {
  const bridge = await bridgeInterfaceOf(docker, network);
  const rules: Array<[Tool, [string, string[]]]> = [
    ["iptables", inputJump(bridge)],
    ["iptables", sameBridgeDrop(bridge)],
    ["iptables", egressJump(bridge)],
    ["ip6tables", inputJump(bridge)],
    ["ip6tables", egressJump(bridge)],
  ];
  for (const [tool, [chain, rule]] of rules) {
    for (let i = 0; i < 10 && (await run(tool, ["-w", "-C", chain, ...rule])).code === 0; i++) {
      await run(tool, ["-w", "-D", chain, ...rule]);
    }
  }
}
