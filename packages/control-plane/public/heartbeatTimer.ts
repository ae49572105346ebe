// The lock keeper's one-shot timer. Chrome throttles chained timers of a page hidden for five
// minutes to once a minute, which would let a 60 s lock lapse while the renter works in the
// Jupyter tab; a dedicated worker's timers are not throttled that way, so time is kept there.
// Without workers (or if the worker fails to load) it falls back to the page's own timers.

/** A one-shot timer: `set` replaces any pending callback, `clear` drops it, `close` ends it. */
export interface HeartbeatTimer {
  set(delayMs: number, callback: () => void): void;
  clear(): void;
  close(): void;
}

/** A timer kept by `timerWorker.js` when possible. */
export function createHeartbeatTimer(): HeartbeatTimer {
  let worker: Worker | undefined;
  let pending: { id: number; delayMs: number; callback: () => void } | undefined;
  let fallback: number | undefined;
  let nextId = 0;

  const runWithPageTimer = (): void => {
    if (!pending) return;
    const { id, delayMs } = pending;
    fallback = window.setTimeout(() => fire(id), delayMs);
  };
  const fire = (id: number): void => {
    if (!pending || pending.id !== id) return;
    const { callback } = pending;
    pending = undefined;
    callback();
  };

  try {
    worker = new Worker(new URL("./timerWorker.js", import.meta.url), { type: "module", name: "runit-heartbeat-timer" });
    worker.onmessage = (event: MessageEvent<unknown>) => {
      if (typeof event.data === "number") fire(event.data);
    };
    worker.onerror = () => {
      worker?.terminate();
      worker = undefined;
      runWithPageTimer();
    };
  } catch {
    worker = undefined;
  }

  return {
    set(delayMs, callback) {
      window.clearTimeout(fallback);
      pending = { id: ++nextId, delayMs, callback };
      if (worker) worker.postMessage({ id: pending.id, delayMs });
      else runWithPageTimer();
    },
    clear() {
      pending = undefined;
      window.clearTimeout(fallback);
      worker?.postMessage({ cancel: true });
    },
    close() {
      this.clear();
      worker?.terminate();
      worker = undefined;
    },
  };
}
