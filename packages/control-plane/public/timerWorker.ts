// A dedicated worker that only keeps time for heartbeatTimer.ts: it answers `{id, delayMs}` by
// posting `id` back after `delayMs`, and `{id, cancel: true}` by forgetting the pending one.
// Typed through a narrow view of its global scope, so the page's lib DOM build compiles it.

interface WorkerScope {
  onmessage: ((event: MessageEvent<unknown>) => void) | null;
  postMessage(message: unknown): void;
}

const scope = self as unknown as WorkerScope;
let pending: ReturnType<typeof setTimeout> | undefined;

scope.onmessage = (event) => {
  const data = event.data as { id?: unknown; delayMs?: unknown };
  if (pending !== undefined) clearTimeout(pending);
  pending = undefined;
  if (typeof data.id !== "number" || typeof data.delayMs !== "number") return;
  const id = data.id;
  pending = setTimeout(() => {
    pending = undefined;
    scope.postMessage(id);
  }, data.delayMs);
};
