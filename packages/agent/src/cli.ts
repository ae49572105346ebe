import { Command, InvalidArgumentError } from "commander";
import Docker from "dockerode";
import { DEFAULT_CONTAINER_LIMITS } from "@runit/protocol";
import { runAgent, type AgentHandle } from "./agent.js";
import { tuneGcForRelay } from "@runit/relay-link";
import { DEFAULT_MIN_FREE_DISK_MB } from "./diskGuard.js";
import { runDoctor } from "./doctor.js";
import { DEFAULT_IMAGE } from "./docker/hardenedSpec.js";
import { createLogger } from "./logger.js";
import { defaultAgentName, defaultStateDir } from "./options.js";
import { readPidFile, runningAgentPid } from "./stateFile.js";

const logger = createLogger(process.stdout, process.stderr);

/** Prints one line for the provider and sets a failing exit code: never a stack trace. */
function failWith(err: unknown): void {
  const message = err instanceof Error ? err.message : String(err);
  logger.error(`[agent] error: ${message.split("\n")[0]}`);
  process.exitCode = 1;
}

function positive(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError("expected a positive number");
  return n;
}

/** `4g`, `512m` or a number of MB. */
function memoryMb(value: string): number {
  const m = /^(\d+(?:\.\d+)?)([gGmM]?)$/.exec(value.trim());
  if (!m?.[1]) throw new InvalidArgumentError("expected e.g. 4g, 512m or a number of MB");
  const n = Number(m[1]) * (m[2]?.toLowerCase() === "g" ? 1024 : 1);
  if (n < 64) throw new InvalidArgumentError("at least 64 MB");
  return Math.round(n);
}

async function start(opts: Record<string, string | number | boolean | undefined>): Promise<void> {
  const running: { handle?: AgentHandle } = {};
  let stopping = false;
  const onSignal = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info(`[agent] ${sig} received: deregistering and removing the session container...`);
    void (running.handle?.stop() ?? Promise.resolve()).then(() => {
      logger.info("[agent] stopped");
      process.exitCode = 0;
    });
  };
  process.on("SIGINT", () => onSignal("SIGINT"));
  process.on("SIGTERM", () => onSignal("SIGTERM"));
  const idleMs = opts.idleTimeoutMs !== undefined ? Number(opts.idleTimeoutMs) : opts.idleTimeout !== undefined ? Number(opts.idleTimeout) * 1000 : undefined;
  tuneGcForRelay();
  const handle = await runAgent({
    serverUrl: String(opts.server ?? process.env.RUNIT_SERVER ?? ""),
    providerKey: String(opts.key ?? process.env.RUNIT_PROVIDER_KEY ?? ""),
    agentName: opts.name as string | undefined,
    image: opts.image as string | undefined,
    workspaceRoot: opts.workspaceRoot as string | undefined,
    workspaceRetentionMs: opts.workspaceRetentionHours !== undefined ? Number(opts.workspaceRetentionHours) * 3600_000 : undefined,
    minFreeDiskMb: opts.minFreeDiskMb as number | undefined,
    stateDir: opts.stateDir as string | undefined,
    network: opts.network as string | undefined,
    limits: {
      memoryMb: opts.memory as number | undefined ?? DEFAULT_CONTAINER_LIMITS.memoryMb,
      cpus: opts.cpus as number | undefined ?? DEFAULT_CONTAINER_LIMITS.cpus,
      pids: opts.pids as number | undefined ?? DEFAULT_CONTAINER_LIMITS.pids,
    },
    idleTimeoutMs: idleMs,
    heartbeatIntervalMs: opts.heartbeatIntervalMs as number | undefined,
    tunnel: opts.tunnel as "relay" | "cloudflared",
    cloudflaredBin: opts.cloudflaredBin as string | undefined,
    hourlyUsd: opts.price as number | undefined,
    providerId: opts.providerId as string | undefined,
    writePidFile: true,
    hostFirewall: opts.hostFirewall !== false,
  });
  running.handle = handle;
  if (stopping) await handle.stop();
  await handle.done;
}

const program = new Command("runit-agent").description("RUNIT provider agent: offers hardened Jupyter sessions").showHelpAfterError();

program
  .command("start")
  .description("run sessions and offer them to the control plane")
  .option("--server <url>", "control-plane URL (or RUNIT_SERVER)")
  .option("--key <key>", "provider key (or RUNIT_PROVIDER_KEY, which keeps it out of ps)")
  .option("--name <name>", "name of this agent instance (container label, state file)")
  .option("--image <image>", "session image (runit-jupyter only)", DEFAULT_IMAGE)
  .option("--workspace-root <dir>", "where per-session workspaces are created", "workspace")
  .option("--workspace-retention-hours <h>", "keep ended sessions' workspaces this long", positive, 24)
  .option("--min-free-disk-mb <mb>", "end a session when the workspace disk has less free (MiB)", Number, DEFAULT_MIN_FREE_DISK_MB)
  .option("--state-dir <dir>", "live-session and pid files", defaultStateDir())
  .option("--network <name>", "user-defined bridge for sessions", "runit-sessions")
  .option("--memory <size>", "memory per session (4g, 512m, MB)", memoryMb, DEFAULT_CONTAINER_LIMITS.memoryMb)
  .option("--cpus <n>", "CPUs per session", positive, DEFAULT_CONTAINER_LIMITS.cpus)
  .option("--pids <n>", "process limit per session", positive, DEFAULT_CONTAINER_LIMITS.pids)
  .option("--idle-timeout <seconds>", "replace a READY session idle this long (default 600)", positive)
  .option("--idle-timeout-ms <ms>", "the same in milliseconds (tests)", positive)
  .option("--heartbeat-interval-ms <ms>", "override the server's heartbeat interval (tests)", positive)
  .option("--tunnel <kind>", "relay (default) or cloudflared", "relay")
  .option("--cloudflared-bin <path>", "cloudflared binary", "cloudflared")
  .option("--price <usd>", "hourly price in USD", Number, 0.5)
  .option("--provider-id <id>", "provider id shown to the control plane")
  .option("--no-host-firewall", "do not install the iptables rules that keep sessions off this host (not recommended)")
  .action(async (opts: Record<string, string | number | boolean | undefined>) => {
    if (opts.tunnel !== "relay" && opts.tunnel !== "cloudflared") return failWith(new Error("--tunnel must be relay or cloudflared"));
    await start(opts).catch(failWith);
  });

program
  .command("doctor")
  .description("say in plain words what is missing")
  .option("--server <url>", "control-plane URL (or RUNIT_SERVER)")
  .option("--key <key>", "provider key (or RUNIT_PROVIDER_KEY)")
  .option("--image <image>", "session image", DEFAULT_IMAGE)
  .option("--workspace-root <dir>", "workspace root", "workspace")
  .action(async (opts: { server?: string; key?: string; image: string; workspaceRoot: string }) => {
    const checks = await runDoctor(
      {
        docker: new Docker(),
        image: opts.image,
        workspaceRoot: opts.workspaceRoot,
        serverUrl: opts.server ?? process.env.RUNIT_SERVER,
        providerKey: opts.key ?? process.env.RUNIT_PROVIDER_KEY,
      },
      logger,
    ).catch((err: unknown) => (failWith(err), []));
    if (checks.some((c) => !c.ok)) process.exitCode = 1;
  });

program
  .command("stop")
  .description("stop a running agent (SIGTERM through its pid file)")
  .option("--name <name>", "agent instance name", defaultAgentName())
  .option("--state-dir <dir>", "state dir", defaultStateDir())
  .action(async (opts: { name: string; stateDir: string }) => {
    const recorded = await readPidFile(opts.stateDir, opts.name);
    if (!recorded) return failWith(new Error(`no running agent named ${opts.name} (no pid file in ${opts.stateDir})`));
    // A stale pid file (after a reboot the pid may be any process's) must not get a SIGTERM.
    const pid = await runningAgentPid(opts.stateDir, opts.name);
    if (pid !== recorded) return failWith(new Error(`agent ${opts.name} (pid ${recorded}) is not running`));
    try {
      process.kill(pid, "SIGTERM");
    } catch {
      return failWith(new Error(`agent ${opts.name} (pid ${pid}) is not running`));
    }
    for (let i = 0; i < 150; i++) {
      await new Promise((r) => setTimeout(r, 200));
      try {
        process.kill(pid, 0);
      } catch {
        logger.info(`[agent] agent ${opts.name} (pid ${pid}) stopped`);
        return;
      }
    }
    failWith(new Error(`agent ${opts.name} (pid ${pid}) did not stop within 30 s`));
  });

process.on("unhandledRejection", (err) => failWith(err));
await program.parseAsync(process.argv).catch(failWith);
