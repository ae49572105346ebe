import { afterAll, describe, expect, it } from "vitest";
import { call, startTestServer, stopAll } from "./harness.js";

afterAll(stopAll);

describe("close() (what SIGTERM runs)", () => {
  it("lets an in-flight request finish, then refuses new connections and closes the store", async () => {
    let release: () => void = () => undefined;
    const server = await startTestServer({}, {
      relay: () => ({
        handleHttp: (_req, res) => {
          release = () => res.status(200).json({ finished: true });
        },
        handleUpgrade: () => false,
        close: async () => undefined,
      }),
    });
    const inFlight = call(server.url, "GET", "/s/slow/");
    await new Promise((r) => setTimeout(r, 100));
    const closing = server.close();
    let closed = false;
    void closing.then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 100));
    expect(closed).toBe(false);
    release();
    expect((await inFlight).json).toEqual({ finished: true });
    await closing;
    expect(server.store.db.open).toBe(false);
    await expect(call(server.url, "GET", "/healthz")).rejects.toThrow(/ECONNREFUSED/);
  });

  it("closes sockets still busy after shutdownDrainMs", async () => {
    const server = await startTestServer({ shutdownDrainMs: 200 }, {
      relay: () => ({ handleHttp: () => undefined, handleUpgrade: () => false, close: async () => undefined }),
    });
    const hung = call(server.url, "GET", "/s/never/").catch((err: Error) => err.message);
    await new Promise((r) => setTimeout(r, 100));
    const started = Date.now();
    await server.close();
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(await hung).toMatch(/socket hang up|ECONNRESET/);
  });
});
