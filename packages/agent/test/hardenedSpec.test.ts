import type { ContainerCreateOptions } from "dockerode";
import { describe, expect, it } from "vitest";
import { DEFAULT_CONTAINER_LIMITS } from "@runit/protocol";
import { UnhardenedSpecError, assertHardened, hardenedContainerSpec } from "../src/docker/hardenedSpec.js";

const WS = "/srv/runit/workspace/0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f";
const base = (): ContainerCreateOptions =>
  hardenedContainerSpec({ sessionId: "0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f", agentName: "unit", workspaceDir: WS });

/** Applies a change to a fresh hardened spec and expects assertHardened to refuse it. */
function refused(change: (s: ContainerCreateOptions & { HostConfig: NonNullable<ContainerCreateOptions["HostConfig"]> }) => void): string {
  const spec = base() as ContainerCreateOptions & { HostConfig: NonNullable<ContainerCreateOptions["HostConfig"]> };
  change(spec);
  try {
    assertHardened(spec, { workspaceDir: WS });
  } catch (err) {
    expect(err).toBeInstanceOf(UnhardenedSpecError);
    return (err as UnhardenedSpecError).check;
  }
  throw new Error("assertHardened accepted a weakened spec");
}

describe("hardenedContainerSpec", () => {
  it("builds the checklist's defaults: 4g, 2 CPUs, 100 PIDs, read-only, no caps, loopback port", () => {
    const s = base();
    const hc = s.HostConfig!;
    expect(hc.Memory).toBe(DEFAULT_CONTAINER_LIMITS.memoryMb * 1024 * 1024);
    expect(hc.MemorySwap).toBe(hc.Memory);
    expect(hc.NanoCpus).toBe(2e9);
    expect(hc.PidsLimit).toBe(100);
    expect(hc.ReadonlyRootfs).toBe(true);
    expect(hc.Privileged).toBe(false);
    expect(hc.CapDrop).toEqual(["ALL"]);
    expect(hc.CapAdd).toEqual([]);
    expect(hc.SecurityOpt).toEqual(["no-new-privileges:true"]);
    expect(hc.Init).toBe(true);
    expect(hc.RestartPolicy).toEqual({ Name: "no", MaximumRetryCount: 0 });
    expect(hc.Binds).toEqual([`${WS}:/workspace:rw`]);
    expect(hc.PortBindings).toEqual({ "8888/tcp": [{ HostIp: "127.0.0.1", HostPort: "" }] });
    expect(hc.NetworkMode).toBe("runit-sessions");
    expect(hc.Tmpfs).toEqual({
      "/tmp": "rw,nosuid,nodev,noexec,size=256m",
      "/home/jupyteruser": "rw,nosuid,nodev,noexec,size=512m,uid=1000,gid=1000,mode=0700",
    });
    expect(s.User).toBe("1000:1000");
    expect(s.Env).toBeUndefined();
    expect(s.Labels).toEqual({ "runit.managed": "true", "runit.session": "0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f", "runit.agent": "unit" });
  });

  it("takes limits from the options", () => {
    const hc = hardenedContainerSpec({ sessionId: "0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f", agentName: "u", workspaceDir: WS, limits: { memoryMb: 512, cpus: 0.5, pids: 64 } }).HostConfig!;
    expect([hc.Memory, hc.NanoCpus, hc.PidsLimit]).toEqual([512 * 1024 * 1024, 5e8, 64]);
  });

  it("refuses options that would weaken it: another image, a system path as workspace, the host network", () => {
    const o = { sessionId: "0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f", agentName: "u", workspaceDir: WS };
    expect(() => hardenedContainerSpec({ ...o, image: "ubuntu:latest" })).toThrow("image ubuntu:latest is not allowlisted");
    expect(() => hardenedContainerSpec({ ...o, image: "evil/runit-jupyter" })).toThrow("not allowlisted");
    expect(() => hardenedContainerSpec({ ...o, workspaceDir: "/var/run" })).toThrow("not a safe host path");
    expect(() => hardenedContainerSpec({ ...o, workspaceDir: "/etc/x" })).toThrow("not a safe host path");
    expect(() => hardenedContainerSpec({ ...o, workspaceDir: "/" })).toThrow("not a safe host path");
    expect(() => hardenedContainerSpec({ ...o, workspaceDir: "relative/dir" })).toThrow("not a safe host path");
    expect(() => hardenedContainerSpec({ ...o, network: "host" })).toThrow("not a user-defined network");
    expect(() => hardenedContainerSpec({ ...o, network: "bridge" })).toThrow("not a user-defined network");
    expect(() => hardenedContainerSpec({ ...o, limits: { pids: 100_000 } })).toThrow("PIDs limit");
    expect(() => hardenedContainerSpec({ ...o, limits: { memoryMb: 1 } })).toThrow("memory limit");
    expect(hardenedContainerSpec({ ...o, image: "runit-jupyter:dev" }).Image).toBe("runit-jupyter:dev");
  });
});

describe("assertHardened refuses every weakening", () => {
  const cases: Array<[string, Parameters<typeof refused>[0], string]> = [
    ["privileged", (s) => (s.HostConfig.Privileged = true), "Privileged must be false"],
    ["privileged unset", (s) => delete s.HostConfig.Privileged, "Privileged must be false"],
    ["an added capability", (s) => (s.HostConfig.CapAdd = ["NET_ADMIN"]), "CapAdd must be empty"],
    ["capabilities kept", (s) => (s.HostConfig.CapDrop = ["NET_RAW"]), "CapDrop must include ALL"],
    ["no no-new-privileges", (s) => (s.HostConfig.SecurityOpt = []), "no-new-privileges missing"],
    ["unconfined seccomp", (s) => s.HostConfig.SecurityOpt!.push("seccomp=unconfined"), "unconfined"],
    ["writable rootfs", (s) => (s.HostConfig.ReadonlyRootfs = false), "read-only"],
    ["no memory limit", (s) => (s.HostConfig.Memory = 0), "memory limit"],
    ["unlimited swap", (s) => (s.HostConfig.MemorySwap = -1), "MemorySwap"],
    ["no CPU limit", (s) => delete s.HostConfig.NanoCpus, "CPU limit"],
    ["no PIDs limit", (s) => (s.HostConfig.PidsLimit = -1), "PIDs limit"],
    ["host network", (s) => (s.HostConfig.NetworkMode = "host"), "not a user-defined network"],
    ["default bridge", (s) => (s.HostConfig.NetworkMode = "default"), "not a user-defined network"],
    ["network of another container", (s) => (s.HostConfig.NetworkMode = "container:abc"), "not a user-defined network"],
    ["host PID namespace", (s) => (s.HostConfig.PidMode = "host"), "host PID namespace"],
    ["host IPC namespace", (s) => (s.HostConfig.IpcMode = "host"), "IPC mode host"],
    ["host UTS namespace", (s) => (s.HostConfig.UTSMode = "host"), "host namespace"],
    ["host user namespace", (s) => (s.HostConfig.UsernsMode = "host"), "host namespace"],
    ["a device", (s) => (s.HostConfig.Devices = [{ PathOnHost: "/dev/kvm", PathInContainer: "/dev/kvm", CgroupPermissions: "rwm" }]), "host devices"],
    ["the docker socket", (s) => s.HostConfig.Binds!.push("/var/run/docker.sock:/var/run/docker.sock"), "binds must be exactly the session workspace"],
    ["a host path", (s) => (s.HostConfig.Binds = ["/etc:/workspace:rw"]), "binds must be exactly the session workspace"],
    ["another workspace", (s) => (s.HostConfig.Binds = ["/srv/runit/workspace/other:/workspace:rw"]), "binds must be exactly"],
    ["a mount", (s) => (s.HostConfig.Mounts = [{ Type: "bind", Source: "/", Target: "/host" }]), "mounts other than the workspace"],
    ["volumes from another container", (s) => (s.HostConfig.VolumesFrom = ["other"]), "mounts other than the workspace"],
    ["port on every interface", (s) => (s.HostConfig.PortBindings = { "8888/tcp": [{ HostIp: "0.0.0.0", HostPort: "" }] }), "published on 0.0.0.0"],
    ["port without address", (s) => (s.HostConfig.PortBindings = { "8888/tcp": [{ HostPort: "8888" }] }), "every interface"],
    ["publish all", (s) => (s.HostConfig.PublishAllPorts = true), "PublishAllPorts"],
    ["non-allowlisted image", (s) => (s.Image = "alpine"), "not allowlisted"],
    ["root user", (s) => (s.User = "root"), "is root"],
    ["uid 0", (s) => (s.User = "0:0"), "is root"],
    ["gid 0", (s) => (s.User = "1000:0"), "is root"],
    ["the image's default user", (s) => delete s.User, "is root"],
    ["a restart policy", (s) => (s.HostConfig.RestartPolicy = { Name: "always" }), "restart policy always"],
    ["tmpfs without nosuid", (s) => (s.HostConfig.Tmpfs = { "/tmp": "rw,size=64m", "/home/jupyteruser": "rw,nosuid,nodev,size=64m" }), "needs nosuid"],
    ["tmpfs without size", (s) => (s.HostConfig.Tmpfs = { "/tmp": "rw,nosuid,nodev", "/home/jupyteruser": "rw,nosuid,nodev,size=64m" }), "and a size"],
    ["no tmpfs home", (s) => (s.HostConfig.Tmpfs = { "/tmp": "rw,nosuid,nodev,size=1m" }), "tmpfs for /tmp and the home"],
    ["a token in the environment", (s) => (s.Env = ["JUPYTER_TOKEN=abc"]), "a secret in the environment"],
    ["labels missing", (s) => (s.Labels = {}), "label runit.managed missing"],
  ];
  for (const [name, change, message] of cases) {
    it(`refuses ${name}`, () => {
      expect(refused(change)).toContain(message);
    });
  }
  it("accepts the hardened spec itself", () => {
    expect(() => assertHardened(base(), { workspaceDir: WS })).not.toThrow();
  });
});

describe("hardenedContainerSpec in relay mode (Jupyter on its Unix socket)", () => {
  const SOCK = "/srv/runit/workspace/.jupyter-sockets/0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f";
  const relay = (): ContainerCreateOptions & { HostConfig: NonNullable<ContainerCreateOptions["HostConfig"]> } =>
    hardenedContainerSpec({ sessionId: "0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f", agentName: "unit", workspaceDir: WS, socketDir: SOCK }) as ContainerCreateOptions & {
      HostConfig: NonNullable<ContainerCreateOptions["HostConfig"]>;
    };
  const check = (s: ContainerCreateOptions): string => {
    try {
      assertHardened(s, { workspaceDir: WS, socketDir: SOCK });
    } catch (err) {
      expect(err).toBeInstanceOf(UnhardenedSpecError);
      return (err as UnhardenedSpecError).check;
    }
    return "accepted";
  };

  it("mounts the workspace and the socket directory at /run/runit, and publishes no port", () => {
    const s = relay();
    expect(s.HostConfig.Binds).toEqual([`${WS}:/workspace:rw`, `${SOCK}:/run/runit:rw`]);
    expect(s.HostConfig.PortBindings).toBeUndefined();
    expect(s.ExposedPorts).toBeUndefined();
    expect(check(s)).toBe("accepted");
  });

  it("refuses a port beside the socket, a third mount, another socket directory, a system path", () => {
    const withPort = relay();
    withPort.HostConfig.PortBindings = { "8888/tcp": [{ HostIp: "127.0.0.1", HostPort: "" }] };
    expect(check(withPort)).toBe("a port published beside Jupyter's socket");
    const third = relay();
    third.HostConfig.Binds!.push("/srv/other:/data:rw");
    expect(check(third)).toContain("binds must be exactly the session workspace and its socket directory");
    const other = relay();
    other.HostConfig.Binds = [`${WS}:/workspace:rw`, "/srv/runit/workspace/.jupyter-sockets/other:/run/runit:rw"];
    expect(check(other)).toContain("binds must be exactly the session workspace and its socket directory");
    expect(() => hardenedContainerSpec({ sessionId: "0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f", agentName: "u", workspaceDir: WS, socketDir: "/var/run" })).toThrow(
      "socket directory /var/run is not a safe host path",
    );
    // Only the session's own socket directory, beside its workspace: not the workspace, nor inside it, nor the root.
    const o = { sessionId: "0b3f6c1e-2d4a-4c6b-8e9f-1a2b3c4d5e6f", agentName: "u", workspaceDir: WS };
    for (const socketDir of [WS, `${WS}/run`, "/srv/runit/workspace", "/srv/runit/workspace/.jupyter-sockets/another-session", "/home/alice/.ssh"]) {
      expect(() => hardenedContainerSpec({ ...o, socketDir })).toThrow(`socket directory ${socketDir} is not the session's own (${SOCK})`);
    }
    // A relay spec checked as if it had no socket directory: the second mount is refused.
    expect(() => assertHardened(relay(), { workspaceDir: WS })).toThrow("binds must be exactly the session workspace");
  });
});
