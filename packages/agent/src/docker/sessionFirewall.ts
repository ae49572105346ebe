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

/** Chain that the INPUT jump of each session bridge leads to. */
export const SESSION_INPUT_CHAIN = "RUNIT-SESSIONS-INPUT";

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
  /** ip6tables could not be used (IPv6 rules absent; containers get no IPv6 by default). */
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
function chainRules(): string[][] {
  return [
    ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"],
    ["-j", "REJECT"],
  ];
}

async function ensureChain(run: CommandRunner, tool: string, added: string[]): Promise<void> {
  const listed = await run(tool, ["-w", "-S", SESSION_INPUT_CHAIN]);
  const expected = chainRules();
  const wanted = expected.map((rule) => `-A ${SESSION_INPUT_CHAIN} ${rule.join(" ")}`);
  const current = listed.stdout.split("\n").filter((line) => line.startsWith(`-A ${SESSION_INPUT_CHAIN} `));
  // iptables -S prints REJECT with its default reply spelled out.
  const normalised = current.map((line) => line.replace(" --reject-with icmp-port-unreachable", "").replace(" --reject-with icmp6-port-unreachable", ""));
  if (listed.code === 0 && normalised.join("\n") === wanted.join("\n")) return;
  if (listed.code !== 0) await must(run, tool, ["-w", "-N", SESSION_INPUT_CHAIN]);
  else await must(run, tool, ["-w", "-F", SESSION_INPUT_CHAIN]);
  for (const rule of expected) {
    await must(run, tool, ["-w", "-A", SESSION_INPUT_CHAIN, ...rule]);
    added.push(`${tool} -A ${SESSION_INPUT_CHAIN} ${rule.join(" ")}`);
  }
}

async function ensureRule(run: CommandRunner, tool: string, chain: string, rule: string[], added: string[]): Promise<void> {
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
 * connections to the provider host or to each other. Needs root or CAP_NET_ADMIN; throws
 * SessionFirewallError (with the failing command) when the rules cannot be installed.
 */
export async function isolateSessionNetwork(
  docker: Docker,
  network: string,
  run: CommandRunner = execFileRunner,
): Promise<SessionFirewallResult> {
  const bridge = await bridgeInterfaceOf(docker, network);
  const added: string[] = [];
  try {
    await ensureChain(run, "iptables", added);
    await ensureRule(run, "iptables", "INPUT", ["-i", bridge, "-j", SESSION_INPUT_CHAIN], added);
    const dockerUser = await run("iptables", ["-w", "-S", "DOCKER-USER"]);
    if (dockerUser.code !== 0) {
      throw new SessionFirewallError("iptables chain DOCKER-USER is missing: is Docker managing iptables (iptables=false)?");
    }
    await ensureRule(run, "iptables", "DOCKER-USER", ["-i", bridge, "-o", bridge, "-j", "DROP"], added);
  } catch (err) {
    if (err instanceof SessionFirewallError) throw err;
    throw new SessionFirewallError(`iptables could not be run: ${String(err)}`);
  }
  let ipv6Skipped = false;
  try {
    await ensureChain(run, "ip6tables", added);
    await ensureRule(run, "ip6tables", "INPUT", ["-i", bridge, "-j", SESSION_INPUT_CHAIN], added);
  } catch {
    ipv6Skipped = true;
  }
  return { bridge, added, ipv6Skipped };
}

/**
 * Removes the per-bridge rules `isolateSessionNetwork` added for `network` (the shared chain stays).
 * For tests and operators that delete a session network; missing rules are fine.
 */
export async function releaseSessionNetwork(docker: Docker, network: string, run: CommandRunner = execFileRunner): Promise<void> {
  const bridge = await bridgeInterfaceOf(docker, network);
  const rules: Array<[string, string, string[]]> = [
    ["iptables", "INPUT", ["-i", bridge, "-j", SESSION_INPUT_CHAIN]],
    ["iptables", "DOCKER-USER", ["-i", bridge, "-o", bridge, "-j", "DROP"]],
    ["ip6tables", "INPUT", ["-i", bridge, "-j", SESSION_INPUT_CHAIN]],
  ];
  for (const [tool, chain, rule] of rules) {
    for (let i = 0; i < 10 && (await run(tool, ["-w", "-C", chain, ...rule])).code === 0; i++) {
      await run(tool, ["-w", "-D", chain, ...rule]);
    }
  }
}
