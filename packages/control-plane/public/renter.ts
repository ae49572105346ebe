// The renter page: a live list of sessions, Connect (opens Jupyter in a new tab and keeps the
// lock alive), Release, and a plain-words explanation of every failure.

import { ApiError, connect, listSessions, release, type SessionRow } from "./renterApi.js";
import { LockKeeper, lockMayStillStand } from "./lockKeeper.js";
import { SessionList } from "./sessionList.js";

/** How often the list is refreshed. */
const POLL_INTERVAL_MS = 3_000;
/** Where the lock survives a reload of this tab (never the URL: the token must not leak there). */
const STORAGE_KEY = "runit.renter.lock";

interface HeldLock {
  sessionId: string;
  accessToken: string;
  accessUrl: string;
}

function byId<T extends HTMLElement>(id: string, type: new () => T): T {
  const node = document.getElementById(id);
  if (!(node instanceof type)) throw new Error(`renter.html lacks #${id}`);
  return node;
}

/** The words for each failure: what happened and what the renter can do. */
export function explain(error: ApiError): string {
  switch (error.kind) {
    case "in-use":
      return "Session already in use: another renter connected to it first. Pick another session.";
    case "provider-gone":
      return "The provider went away: this session is no longer available. Pick another one; the list refreshes by itself.";
    case "ip-mismatch":
      return "IP mismatch - access denied: this session is locked to the network address you connected from. Use that network, or connect to a new session.";
    case "lock-lost":
      return "Your session has ended (Invalid or expired token): the lock was released. Connect again to start a fresh session.";
    case "rate-limited": {
      const wait = error.retryAfterSeconds;
      const at = wait === undefined ? "" : new Date(Date.now() + wait * 1000).toLocaleTimeString();
      const when = wait === undefined ? "in a little while" : `in ${wait} second${wait === 1 ? "" : "s"} (at ${at})`;
      return `Too many requests from your address. Please try again ${when}.`;
    }
    case "network":
      return error.message;
    default:
      return `Something went wrong: ${error.message}`;
  }
}

const PROVIDER_ENDED =
  "The provider went away: your session has ended. Pick another session; the list refreshes by itself.";

function asApiError(err: unknown): ApiError {
  return err instanceof ApiError ? err : new ApiError("other", 0, String(err));
}

function loadLock(): HeldLock | undefined {
  try {
    const parsed: unknown = JSON.parse(sessionStorage.getItem(STORAGE_KEY) ?? "null");
    if (typeof parsed !== "object" || parsed === null) return undefined;
    const { sessionId, accessToken, accessUrl } = parsed as Record<string, unknown>;
    if (typeof sessionId !== "string" || typeof accessToken !== "string" || typeof accessUrl !== "string") {
      return undefined;
    }
    return { sessionId, accessToken, accessUrl };
  } catch {
    return undefined;
  }
}

function saveLock(lock: HeldLock | undefined): void {
  try {
    if (lock) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(lock));
    else sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // Storage may be disabled; the lock then lives in memory only.
  }
}

class RenterPage {
  private readonly alert = byId("alert", HTMLDivElement);
  private readonly notice = byId("notice", HTMLDivElement);
  private readonly lockPanel = byId("lock-panel", HTMLElement);
  private readonly lockSummary = byId("lock-summary", HTMLParagraphElement);
  private readonly lockState = byId("lock-state", HTMLParagraphElement);
  private readonly openJupyter = byId("open-jupyter", HTMLAnchorElement);
  private readonly releaseButton = byId("release", HTMLButtonElement);
  private readonly refreshState = byId("refresh-state", HTMLParagraphElement);
  private readonly list = new SessionList(byId("sessions", HTMLUListElement), byId("empty", HTMLParagraphElement), (id) =>
    this.connectTo(id),
  );
  private rows: SessionRow[] = [];
  private held: HeldLock | undefined;
  private keeper: LockKeeper | undefined;
  private busy = false;
  private pollTimer: number | undefined;

  start(): void {
    this.releaseButton.addEventListener("click", () => void this.releaseHeld());
    const restored = loadLock();
    if (restored) this.hold(restored, 0, 0);
    void this.poll();
  }

  private async poll(): Promise<void> {
    window.clearTimeout(this.pollTimer);
    let next = POLL_INTERVAL_MS;
    try {
      this.rows = await listSessions();
      this.refreshState.textContent = `Updated ${new Date().toLocaleTimeString()} · refreshes every ${POLL_INTERVAL_MS / 1000} s`;
      if (this.alert.dataset.source === "poll" || this.inUseAlertIsStale()) this.showError(undefined);
      this.checkHeldStillListed();
      this.render();
    } catch (err) {
      const error = asApiError(err);
      if (error.retryAfterSeconds !== undefined) next = Math.max(next, error.retryAfterSeconds * 1000);
      this.refreshState.textContent = "Not updated: see the message above";
      this.showError(explain(error), "poll");
    }
    this.pollTimer = window.setTimeout(() => void this.poll(), next);
  }

  private checkHeldStillListed(): void {
    if (!this.held) return;
    const row = this.rows.find((r) => r.sessionId === this.held?.sessionId);
    // Gone from the list: ask the server at once rather than at the next paced heartbeat.
    if (!row || row.status === "ENDED") this.keeper?.beatNow();
  }

  /** "Session already in use" about a session that has since ended or become free again. */
  private inUseAlertIsStale(): boolean {
    const id = this.alert.dataset.sessionId;
    if (!id) return false;
    const row = this.rows.find((r) => r.sessionId === id);
    return !row || row.status === "READY";
  }

  private render(): void {
    this.list.update(this.rows, this.held?.sessionId, this.busy);
    this.lockPanel.hidden = this.held === undefined;
    if (!this.held) return;
    const row = this.rows.find((r) => r.sessionId === this.held?.sessionId);
    const hardware = row ? ` · ${row.hardware.cpus} CPU${row.hardware.cpus === 1 ? "" : "s"}` : "";
    this.lockSummary.textContent = `Session ${this.held.sessionId.slice(0, 8)}${hardware}`;
    this.openJupyter.href = this.held.accessUrl;
    this.releaseButton.disabled = this.busy;
  }

  private connectTo(sessionId: string): void {
    if (this.busy || this.held) return;
    // Opened synchronously inside the click, so pop-up blockers allow it; pointed at Jupyter once
    // the lock is ours.
    const tab = window.open("", "_blank");
    if (tab) tab.document.title = "Connecting to RUNIT…";
    this.busy = true;
    this.showError(undefined);
    this.showNotice("Connecting…");
    this.render();
    connect(sessionId)
      .then((reply) => {
        const accessUrl = new URL(reply.accessUrl, window.location.href).href;
        this.hold({ sessionId, accessToken: reply.accessToken, accessUrl }, Date.parse(reply.expiresAt), 1_000);
        if (tab) {
          tab.opener = null;
          tab.location.replace(accessUrl);
          this.showNotice("Connected: Jupyter opened in a new tab.");
        } else {
          this.showNotice("Connected. Your browser blocked the new tab: use Open Jupyter.");
        }
      })
      .catch((err: unknown) => {
        tab?.close();
        this.showNotice("");
        const error = asApiError(err);
        this.showError(explain(error));
        if (error.kind === "in-use") this.alert.dataset.sessionId = sessionId;
      })
      .finally(() => {
        this.busy = false;
        this.render();
        void this.poll();
      });
  }

  private hold(lock: HeldLock, lockExpiresAt: number, firstBeatMs: number): void {
    this.held = lock;
    saveLock(lock);
    this.keeper?.stop();
    this.keeper = new LockKeeper(
      lock.accessToken,
      {
        onAlive: (until) => {
          this.lockState.textContent = `Lock kept alive (until ${new Date(until).toLocaleTimeString()} unless renewed).`;
          if (this.alert.dataset.source === "heartbeat") this.showError(undefined);
        },
        onTrouble: (error) => this.showError(`Could not renew your lock: ${explain(error)}`, "heartbeat"),
        onLost: (error, lockExpiresAt) => {
          this.drop();
          // The server forgot a token whose lock had not lapsed yet: the session was ended for
          // us — its provider went away (or stopped it).
          const ended = error.kind === "lock-lost" && Date.now() < lockExpiresAt - 500;
          this.showError(ended ? PROVIDER_ENDED : explain(error));
          this.render();
        },
      },
      Number.isNaN(lockExpiresAt) ? Date.now() + 5_000 : lockExpiresAt,
    );
    this.keeper.start(firstBeatMs);
    this.lockState.textContent = "Lock held.";
    this.render();
  }

  private drop(): void {
    this.showNotice("");
    this.keeper?.stop();
    this.keeper = undefined;
    this.held = undefined;
    saveLock(undefined);
  }

  private async releaseHeld(): Promise<void> {
    const lock = this.held;
    if (!lock || this.busy) return;
    this.busy = true;
    this.render();
    this.keeper?.stop();
    try {
      await release(lock.accessToken);
      this.drop();
      this.showError(undefined);
      this.showNotice("Session released. The provider is preparing a fresh session.");
    } catch (err) {
      const error = asApiError(err);
      if (lockMayStillStand(error)) {
        this.hold(lock, Date.now() + 5_000, 0);
      } else {
        this.drop();
      }
      this.showError(explain(error));
    } finally {
      this.busy = false;
      this.render();
      document.getElementById("sessions-heading")?.focus();
      void this.poll();
    }
  }

  /** Shows (or, with undefined, clears) the error; `source` lets a later success clear it. */
  private showError(text: string | undefined, source = "action"): void {
    this.alert.hidden = text === undefined;
    this.alert.textContent = text ?? "";
    this.alert.dataset.source = text === undefined ? "" : source;
    delete this.alert.dataset.sessionId;
  }

  private showNotice(text: string): void {
    this.notice.textContent = text;
  }
}

new RenterPage().start();
