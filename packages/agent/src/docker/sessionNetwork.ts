import type Docker from "dockerode";
import { LABELS } from "./hardenedSpec.js";

const ICC_OPTION = "com.docker.network.bridge.enable_icc";

/** Thrown when a network of the sessions' name exists but would let sessions reach each other. */
export class SessionNetworkError extends Error {
  override name = "SessionNetworkError";
}

/** Refuses an existing network that is not a bridge with inter-container traffic disabled. */
function assertIsolated(network: { Name: string; Driver?: string; Options?: Record<string, string> | null }): void {
  const icc = network.Options?.[ICC_OPTION];
  if (network.Driver === "bridge" && icc === "false") return;
  const what = network.Driver !== "bridge" ? `is a ${network.Driver ?? "?"} network, not a bridge` : `lets its containers talk to each other (${ICC_OPTION}=${icc ?? "unset, i.e. true"})`;
  throw new SessionNetworkError(
    `network ${network.Name} ${what}; sessions on it could reach each other: remove it (docker network rm ${network.Name}) so the agent creates it, or choose another --network`,
  );
}

/**
 * Makes sure the user-defined bridge for sessions exists, with inter-container traffic disabled,
 * so one session cannot reach another and none sits on the default docker0 bridge. An existing
 * network of that name is used only if it is such a bridge: one made by hand with ICC on would
 * otherwise put sessions side by side (the host firewall drops that traffic too, but not under
 * `--no-host-firewall`).
 */
export async function ensureSessionNetwork(docker: Docker, name: string): Promise<void> {
  const find = async () => (await docker.listNetworks({ filters: { name: [name] } })).find((n) => n.Name === name);
  const existing = await find();
  if (existing) return assertIsolated(existing);
  try {
    await docker.createNetwork({
      Name: name,
      Driver: "bridge",
      CheckDuplicate: true,
      Options: { [ICC_OPTION]: "false" },
      Labels: { [LABELS.managed]: "true" },
    });
  } catch (err) {
    // Another agent may have created it between our check and our create.
    const again = await find();
    if (!again) throw err;
    assertIsolated(again);
  }
}
