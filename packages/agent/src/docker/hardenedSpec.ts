import { basename, dirname, join, resolve } from "node:path";
import type { ContainerCreateOptions } from "dockerode";
import { DEFAULT_CONTAINER_LIMITS } from "@runit/protocol";

/** Image repositories a session container may run; any tag of these. Not configurable on purpose. */
export const ALLOWED_IMAGE_REPOSITORIES = ["runit-jupyter"] as const;
/** The image the agent runs by default. */
export const DEFAULT_IMAGE = "runit-jupyter:latest";
/** The user-defined bridge every session container joins (inter-container traffic disabled). */
export const DEFAULT_SESSION_NETWORK = "runit-sessions";
/** Jupyter's port inside the container. */
export const JUPYTER_CONTAINER_PORT = 8888;
/** Home directory of jupyteruser in the image (a tmpfs at run time). */
export const SESSION_HOME = "/home/jupyteruser";
/** Where the session workspace is mounted. */
export const WORKSPACE_MOUNT = "/workspace";
/** Where a relay session's socket directory is mounted (Jupyter binds jupyter.sock in it). */
export const SOCKET_MOUNT = "/run/runit";
/** The directory beside the workspaces that holds every session's socket directory: `<root>/.jupyter-sockets/<sessionId>`. */
export const SOCKETS_DIR = ".jupyter-sockets";
/** A relay session's socket paths on the host. */
export interface SessionSocketPaths {
  /** Mounted at /run/runit in the container (owner 1000:1000, mode 0700). */
  dir: string;
  /** The agent's hard link to the socket Jupyter bound, in the agent-only directory. */
  link: string;
}

/** Where a session's socket directory and the agent's link live: `<root>/.jupyter-sockets/<id>` and `<id>.sock`. */
export function sessionSocketPaths(workspaceRoot: string, sessionId: string): SessionSocketPaths {
  const base = join(resolve(workspaceRoot), SOCKETS_DIR);
  return { dir: join(base, sessionId), link: join(base, `${sessionId}.sock`) };
}

/** uid:gid of jupyteruser in the image. */
export const SESSION_USER = "1000:1000";

/** Labels every managed container carries; recovery finds containers by them. */
export const LABELS = {
  managed: "runit.managed",
  session: "runit.session",
  agent: "runit.agent",
} as const;

/** Resource limits of one session container. */
export interface ContainerLimits {
  memoryMb: number;
  cpus: number;
  pids: number;
  /** Size of the /tmp tmpfs. */
  tmpMb?: number;
  /** Size of the home tmpfs (Jupyter's config, runtime and data dirs). */
  homeMb?: number;
}

/** Everything that varies between session containers; the rest of the spec is fixed. */
export interface HardenedSpecOptions {
  sessionId: string;
  agentName: string;
  /** Absolute host path of this session's fresh workspace directory. */
  workspaceDir: string;
  /**
   * Absolute host path of this session's socket directory (relay mode): mounted at /run/runit,
   * and no port is published. Without it Jupyter's port is published on 127.0.0.1 (cloudflared).
   */
  socketDir?: string;
  image?: string;
  network?: string;
  limits?: Partial<ContainerLimits>;
}

const MAX_PIDS = 4096;
const MIN_MEMORY_MB = 64;

/** Builds the ONE container spec every session uses, then checks it with assertHardened(). */
export function hardenedContainerSpec(opts: HardenedSpecOptions): ContainerCreateOptions {
  const limits = { ...DEFAULT_CONTAINER_LIMITS, tmpMb: 256, homeMb: 512, ...opts.limits };
  const memoryBytes = Math.round(limits.memoryMb * 1024 * 1024);
  const spec: ContainerCreateOptions = {
    name: `runit-session-${opts.sessionId}`,
    Image: opts.image ?? DEFAULT_IMAGE,
    User: SESSION_USER,
    WorkingDir: WORKSPACE_MOUNT,
    Labels: {
      [LABELS.managed]: "true",
      [LABELS.session]: opts.sessionId,
      [LABELS.agent]: opts.agentName,
    },
    // The session config (token) arrives on stdin, once: see sessionContainer.ts.
    AttachStdin: true,
    AttachStdout: true,
    AttachStderr: true,
    OpenStdin: true,
    StdinOnce: true,
    Tty: false,
    ...(opts.socketDir ? {} : { ExposedPorts: { [`${JUPYTER_CONTAINER_PORT}/tcp`]: {} } }),
    HostConfig: {
      Privileged: false,
      Init: true,
      ReadonlyRootfs: true,
      CapDrop: ["ALL"],
      CapAdd: [],
      SecurityOpt: ["no-new-privileges:true"],
      Memory: memoryBytes,
      MemorySwap: memoryBytes,
      NanoCpus: Math.round(limits.cpus * 1e9),
      PidsLimit: limits.pids,
      Tmpfs: {
        "/tmp": `rw,nosuid,nodev,noexec,size=${limits.tmpMb}m`,
        [SESSION_HOME]: `rw,nosuid,nodev,noexec,size=${limits.homeMb}m,uid=1000,gid=1000,mode=0700`,
      },
      Binds: [`${opts.workspaceDir}:${WORKSPACE_MOUNT}:rw`, ...(opts.socketDir ? [`${opts.socketDir}:${SOCKET_MOUNT}:rw`] : [])],
      ...(opts.socketDir ? {} : { PortBindings: { [`${JUPYTER_CONTAINER_PORT}/tcp`]: [{ HostIp: "127.0.0.1", HostPort: "" }] } }),
      NetworkMode: opts.network ?? DEFAULT_SESSION_NETWORK,
      IpcMode: "private",
      RestartPolicy: { Name: "no", MaximumRetryCount: 0 },
      AutoRemove: false,
      LogConfig: { Type: "json-file", Config: { "max-size": "10m", "max-file": "2" } },
    },
  };
  assertHardened(spec, { workspaceDir: opts.workspaceDir, socketDir: opts.socketDir });
  return spec;
}

/** Thrown when a container spec is weaker than the hardened one. */
export class UnhardenedSpecError extends Error {
  constructor(readonly check: string) {
    super(`refusing to create a container weaker than the hardened spec: ${check}`);
    this.name = "UnhardenedSpecError";
  }
}

function imageRepository(image: string): string {
  const withoutDigest = image.split("@")[0] ?? "";
  const lastSlash = withoutDigest.lastIndexOf("/");
  const colon = withoutDigest.lastIndexOf(":");
  return colon > lastSlash ? withoutDigest.slice(0, colon) : withoutDigest;
}

const SENSITIVE_HOST_PATHS = ["/", "/etc", "/proc", "/sys", "/dev", "/boot", "/root", "/run", "/var/run", "/var/lib/docker", "/usr", "/bin", "/sbin", "/lib"];

/** A mounted host path must be absolute, normalised, and neither a system directory nor inside one. */
function isSafeWorkspacePath(dir: string): boolean {
  if (!dir.startsWith("/") || dir.includes("/../") || dir.endsWith("/..") || dir.includes("//") || dir.includes(":")) return false;
  if (dir.includes("docker.sock")) return false;
  return !SENSITIVE_HOST_PATHS.some((p) => dir === p || (p !== "/" && dir.startsWith(`${p}/`)));
}

const SAFE_NETWORK_MODES = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const FORBIDDEN_NETWORK_MODES = new Set(["host", "bridge", "default", "none"]);

/**
 * Refuses (throws UnhardenedSpecError) any spec that is weaker than hardenedContainerSpec()'s,
 * whatever produced it. Called on every spec right before `createContainer`.
 */
export function assertHardened(spec: ContainerCreateOptions, ctx: { workspaceDir: string; socketDir?: string | undefined }): void {
  const hc = spec.HostConfig;
  const fail = (check: string): never => {
    throw new UnhardenedSpecError(check);
  };
  if (!hc) return fail("HostConfig missing");
  const repo = imageRepository(spec.Image ?? "");
  if (!(ALLOWED_IMAGE_REPOSITORIES as readonly string[]).includes(repo)) fail(`image ${spec.Image ?? "(none)"} is not allowlisted`);
  const user = spec.User ?? "";
  if (user === "" || /^(0|root)(:|$)/.test(user) || /:(0|root)$/.test(user)) fail(`user ${user || "(image default)"} is root`);
  if (hc.Privileged !== false) fail("Privileged must be false");
  if ((hc.CapAdd ?? []).length > 0) fail(`CapAdd must be empty (got ${hc.CapAdd?.join(",")})`);
  if (!(hc.CapDrop ?? []).includes("ALL")) fail("CapDrop must include ALL");
  const securityOpt: string[] = hc.SecurityOpt ?? [];
  if (!securityOpt.some((o) => /^no-new-privileges(:true|=true)?$/.test(o))) fail("no-new-privileges missing");
  if (securityOpt.some((o) => /unconfined/.test(o))) fail("an unconfined security profile");
  if (hc.ReadonlyRootfs !== true) fail("root filesystem must be read-only");
  if (!hc.Memory || hc.Memory < MIN_MEMORY_MB * 1024 * 1024) fail("memory limit missing or below 64 MB");
  if (hc.MemorySwap !== hc.Memory) fail("MemorySwap must equal Memory (no extra swap)");
  if (!hc.NanoCpus || hc.NanoCpus <= 0) fail("CPU limit missing");
  if (!hc.PidsLimit || hc.PidsLimit <= 0 || hc.PidsLimit > MAX_PIDS) fail(`PIDs limit missing or above ${MAX_PIDS}`);
  const mode = hc.NetworkMode ?? "";
  if (!SAFE_NETWORK_MODES.test(mode) || FORBIDDEN_NETWORK_MODES.has(mode)) fail(`network ${mode || "(default bridge)"} is not a user-defined network`);
  if (hc.PidMode && hc.PidMode !== "") fail("host PID namespace");
  if (hc.IpcMode && !["private", "none"].includes(hc.IpcMode)) fail(`IPC mode ${hc.IpcMode}`);
  if (hc.UTSMode || hc.UsernsMode === "host" || (hc as { CgroupnsMode?: string }).CgroupnsMode === "host") fail("host namespace requested");
  if ((hc.Devices ?? []).length > 0 || (hc.DeviceRequests ?? []).length > 0) fail("host devices requested");
  if ((hc.Mounts ?? []).length > 0 || (hc.VolumesFrom ?? []).length > 0 || spec.Volumes) fail("mounts other than the workspace");
  if (!isSafeWorkspacePath(ctx.workspaceDir)) fail(`workspace ${ctx.workspaceDir} is not a safe host path`);
  const binds = hc.Binds ?? [];
  const expectedBind = `${ctx.workspaceDir}:${WORKSPACE_MOUNT}:rw`;
  if (ctx.socketDir === undefined) {
    if (binds.length !== 1 || binds[0] !== expectedBind) fail(`binds must be exactly the session workspace (${expectedBind})`);
  } else {
    if (!isSafeWorkspacePath(ctx.socketDir)) fail(`socket directory ${ctx.socketDir} is not a safe host path`);
    // Exactly the session's own socket directory beside its workspace: never the workspace, the
    // root, a path inside a workspace (the renter's), or anywhere else a caller might name.
    const expectedDir = sessionSocketPaths(dirname(ctx.workspaceDir), basename(ctx.workspaceDir)).dir;
    if (ctx.socketDir !== expectedDir) fail(`socket directory ${ctx.socketDir} is not the session's own (${expectedDir})`);
    const socketBind = `${ctx.socketDir}:${SOCKET_MOUNT}:rw`;
    if (binds.length !== 2 || binds[0] !== expectedBind || binds[1] !== socketBind) fail(`binds must be exactly the session workspace and its socket directory (${expectedBind}, ${socketBind})`);
    if (Object.keys(hc.PortBindings ?? {}).length > 0) fail("a port published beside Jupyter's socket");
  }
  if (binds.some((b) => b.includes("docker.sock"))) fail("the Docker socket");
  const restart = hc.RestartPolicy?.Name ?? "";
  if (restart !== "" && restart !== "no") fail(`restart policy ${restart}`);
  if (hc.PublishAllPorts) fail("PublishAllPorts");
  for (const [port, bindings] of Object.entries(hc.PortBindings ?? {})) {
    const list = (bindings ?? []) as Array<{ HostIp?: string }>;
    for (const b of list) if (b.HostIp !== "127.0.0.1") fail(`port ${port} published on ${b.HostIp || "every interface"}`);
  }
  for (const [path, options] of Object.entries(hc.Tmpfs ?? {})) {
    const o = options.split(",");
    if (!o.includes("nosuid") || !o.includes("nodev") || !o.some((x) => x.startsWith("size="))) fail(`tmpfs ${path} needs nosuid,nodev and a size`);
  }
  if (!hc.Tmpfs?.["/tmp"] || !hc.Tmpfs[SESSION_HOME]) fail("tmpfs for /tmp and the home directory");
  for (const key of ["runit.managed", "runit.session", "runit.agent"]) if (!spec.Labels?.[key]) fail(`label ${key} missing`);
  if ((spec.Env ?? []).some((e) => /token|secret|key/i.test(e.split("=")[0] ?? ""))) fail("a secret in the environment");
}
