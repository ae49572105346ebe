// startSessionContainer's failure paths against a fake Docker whose attach stream is demuxed by
// docker-modem's real demuxStream (which never ends its output): start() failing, a container
// that exits before its "Running as" line, and an attach socket that fails (daemon restart).
import { randomUUID } from "node:crypto";
import { Duplex } from "node:stream";
import Docker from "dockerode";
import { afterEach, describe, expect, it } from "vitest";
import { asSecret } from "@runit/protocol";
import { hardenedContainerSpec } from "../src/docker/hardenedSpec.js";
import { startSessionContainer } from "../src/docker/sessionContainer.js";

const sessionId = randomUUID();
const workspaceDir = `/tmp/runit-fake-workspace/${sessionId}`;
const spec = hardenedContainerSpec({ sessionId, agentName: "fake", workspaceDir, network: "runit-fake", limits: { memoryMb: 256, cpus: 1, pids: 100 } });
const config = { token: asSecret("t".repeat(32)), baseUrl: "/", allowOrigin: "" };
const logger = { info: () => undefined, error: () => undefined };

/** One frame of Docker's multiplexed attach stream (1 = stdout, 2 = stderr). */
function dockerFrame(kind: 1 | 2, text: string): Buffer {
  const payload = Buffer.from(text);
  const header = Buffer.alloc(8);
  header.writeUInt8(kind, 0);
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
}

interface FakeDocker {
  docker: Docker;
  /** The hijacked attach socket: push() is the container's output, writes land in `stdin`. */
  socket: Duplex;
  stdin: string[];
  removed: string[];
}

function fakeDocker(onStart: (f: FakeDocker) => void | Promise<void>): FakeDocker {
  const stdin: string[] = [];
  const socket = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      stdin.push(chunk.toString());
      cb();
    },
  });
  const f: FakeDocker = { docker: undefined as unknown as Docker, socket, stdin, removed: [] };
  const container = {
    id: "c0ffee",
    modem: new Docker({ socketPath: "/nonexistent.sock" }).modem,
    attach: async () => socket,
    start: async () => onStart(f),
    inspect: async () => ({ NetworkSettings: { Ports: { "8888/tcp": [{ HostIp: "127.0.0.1", HostPort: "49153" }] } } }),
  };
  f.docker = {
    createContainer: async () => container,
    getContainer: (id: string) => ({ remove: async () => void f.removed.push(id) }),
  } as unknown as Docker;
  return f;
}

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
process.on("unhandledRejection", onUnhandled);
afterEach(() => {
  unhandled.length = 0;
});

describe("startSessionContainer failure paths", () => {
  it("start() failing rethrows, removes the container and leaves no rejection behind", async () => {
    const f = fakeDocker(() => {
      throw new Error("OCI runtime create failed");
    });
    await expect(startSessionContainer(f.docker, spec, { workspaceDir }, config, logger, 200)).rejects.toThrow("OCI runtime create failed");
    expect(f.removed).toEqual(["c0ffee"]);
    await new Promise((r) => setTimeout(r, 400)); // past the 200 ms 'Running as' timeout
    expect(unhandled).toEqual([]);
  });

  it("a container that exits before its 'Running as' line fails at once with its last output", async () => {
    const f = fakeDocker((fd) => {
      fd.socket.push(dockerFrame(2, "python3: can't open file 'entrypoint.py'\n"));
      fd.socket.push(null); // the daemon ends the attach stream when the container exits
    });
    const startedAt = Date.now();
    await expect(startSessionContainer(f.docker, spec, { workspaceDir }, config, logger)).rejects.toThrow(
      "the session container exited early: python3: can't open file 'entrypoint.py'",
    );
    expect(Date.now() - startedAt).toBeLessThan(2000); // not the 30 s timeout
    expect(f.removed).toEqual(["c0ffee"]);
  });

  it("an attach socket that fails before 'Running as' (daemon restart) fails at once", async () => {
    const early = fakeDocker((fd) => void setImmediate(() => fd.socket.destroy(Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" }))));
    const startedAt = Date.now();
    await expect(startSessionContainer(early.docker, spec, { workspaceDir }, config, logger)).rejects.toThrow("the session container exited early: ");
    expect(Date.now() - startedAt).toBeLessThan(2000);
    expect(early.removed).toEqual(["c0ffee"]);
  });

  it("an attach socket that fails after the start is harmless", async () => {
    const late = fakeDocker((fd) => void fd.socket.push(dockerFrame(1, "Running as: jupyteruser\n")));
    const lines: string[] = [];
    const running = await startSessionContainer(late.docker, spec, { workspaceDir }, config, { info: (l) => lines.push(l), error: (l) => lines.push(l) });
    expect(running).toEqual({ id: "c0ffee", hostPort: 49153 });
    expect(lines).toEqual(["[docker] Running as: jupyteruser"]);
    expect(JSON.parse(late.stdin.join(""))).toEqual(config);
    // An 'error' with no listener would throw here (in the agent: an uncaught exception).
    expect(() => late.socket.emit("error", Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" }))).not.toThrow();
    expect(late.removed).toEqual([]);
  });
});
