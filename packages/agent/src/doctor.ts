import { access, constants, mkdir } from "node:fs/promises";
import type Docker from "dockerode";
import type { AgentLogger } from "./logger.js";

/** One doctor check: a name, whether it passed, and a plain-words detail. */
export interface DoctorCheck {
  name: string;
  ok: boolean;
  detail: string;
}

/** What `runit-agent doctor` looks at. */
export interface DoctorOptions {
  docker: Docker;
  image: string;
  workspaceRoot: string;
  serverUrl?: string;
  providerKey?: string;
  fetch?: typeof fetch;
}

async function checkEngine(docker: Docker): Promise<DoctorCheck[]> {
  const where = process.env.DOCKER_HOST ?? "/var/run/docker.sock";
  try {
    await docker.ping();
    const v = await docker.version();
    return [
      { name: "docker engine", ok: true, detail: `Docker ${v.Version} answers at ${where}` },
      { name: "docker socket permission", ok: true, detail: "this user may use the Docker API" },
    ];
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EACCES") {
      return [
        { name: "docker engine", ok: true, detail: `a Docker socket exists at ${where}` },
        { name: "docker socket permission", ok: false, detail: `no permission on ${where}: add this user to the docker group or run as root` },
      ];
    }
    return [{ name: "docker engine", ok: false, detail: `no Docker engine answers at ${where} (${code ?? (err as Error).message}); start Docker or set DOCKER_HOST` }];
  }
}

async function checkImage(docker: Docker, image: string): Promise<DoctorCheck> {
  try {
    await docker.getImage(image).inspect();
    return { name: "session image", ok: true, detail: `${image} is present` };
  } catch {
    return { name: "session image", ok: false, detail: `${image} is absent: run ./scripts/build-image.sh` };
  }
}

async function checkWorkspace(root: string): Promise<DoctorCheck> {
  try {
    await mkdir(root, { recursive: true, mode: 0o700 });
    await access(root, constants.W_OK);
    const owner = process.getuid?.() === 0 || process.getuid?.() === 1000;
    return owner
      ? { name: "workspace", ok: true, detail: `${root} is writable` }
      : { name: "workspace", ok: false, detail: `${root} is writable, but workspaces must belong to uid 1000: run the agent as root or as uid 1000` };
  } catch (err) {
    return { name: "workspace", ok: false, detail: `cannot write ${root}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
  }
}

async function checkServer(fetchFn: typeof fetch, serverUrl: string, key: string | undefined): Promise<DoctorCheck[]> {
  const base = serverUrl.replace(/\/+$/, "");
  try {
    const res = await fetchFn(`${base}/healthz`, { signal: AbortSignal.timeout(5000) });
    if (!res.ok) return [{ name: "control plane", ok: false, detail: `${base}/healthz answered ${res.status}` }];
  } catch (err) {
    return [{ name: "control plane", ok: false, detail: `${base} is unreachable (${(err as Error).message})` }];
  }
  const reachable: DoctorCheck = { name: "control plane", ok: true, detail: `${base} answers` };
  if (!key) return [reachable, { name: "provider key", ok: false, detail: "no --key given" }];
  // No read-only authenticated route exists for providers: an empty registration body is
  // authenticated first (401 = key refused) and then rejected as invalid (400) without creating anything.
  try {
    const res = await fetchFn(`${base}/provider/session`, {
      method: "POST",
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
      body: "{}",
      signal: AbortSignal.timeout(5000),
    });
    if (res.status === 401) return [reachable, { name: "provider key", ok: false, detail: "the control plane refused the key" }];
    if (res.status === 400) return [reachable, { name: "provider key", ok: true, detail: "the control plane accepted the key" }];
    return [reachable, { name: "provider key", ok: false, detail: `could not tell (the control plane answered ${res.status})` }];
  } catch (err) {
    return [reachable, { name: "provider key", ok: false, detail: `could not check (${(err as Error).message})` }];
  }
}

/** Runs every check and prints one plain line each; returns the checks (all ok → exit 0). */
export async function runDoctor(opts: DoctorOptions, logger: AgentLogger): Promise<DoctorCheck[]> {
  const checks = await checkEngine(opts.docker);
  if (checks.every((c) => c.ok)) checks.push(await checkImage(opts.docker, opts.image));
  checks.push(await checkWorkspace(opts.workspaceRoot));
  if (opts.serverUrl) checks.push(...(await checkServer(opts.fetch ?? fetch, opts.serverUrl, opts.providerKey)));
  else checks.push({ name: "control plane", ok: false, detail: "no --server given" });
  for (const c of checks) logger.info(`[doctor] ${c.ok ? "ok  " : "FAIL"} ${c.name}: ${c.detail}`);
  return checks;
}
