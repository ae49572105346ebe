// The live list of sessions. Cards are keyed by session id and updated in place, so a refresh
// every few seconds never steals keyboard focus or the screen reader's place.

import type { SessionRow } from "./renterApi.js";

/** How a session is shown: the three states a renter cares about, plus the one they hold. */
export type DisplayStatus = "available" | "in-use" | "away" | "yours";

/** Called when the renter presses Connect on a session. */
export type ConnectHandler = (sessionId: string, button: HTMLButtonElement) => void;

const STATUS_TEXT: Record<DisplayStatus, string> = {
  available: "Available",
  "in-use": "In use",
  away: "Provider away",
  yours: "Yours",
};

/** The status of one row as the page shows it. */
export function displayStatus(row: SessionRow, heldSessionId: string | undefined): DisplayStatus {
  if (row.sessionId === heldSessionId) return "yours";
  if (row.status !== "READY") return "in-use";
  // `available` is false for a READY session whose provider's tunnel or heartbeats are missing.
  return row.available === false ? "away" : "available";
}

/** `4096` MB → `4 GB`; `1536` → `1.5 GB`; small values stay in MB. */
export function formatMemory(memoryMb: number): string {
  if (memoryMb < 1024) return `${memoryMb} MB`;
  const gb = memoryMb / 1024;
  return `${Number.isInteger(gb) ? gb : gb.toFixed(1)} GB`;
}

function formatGpus(row: SessionRow): string {
  if (row.hardware.gpus.length === 0) return "None";
  return row.hardware.gpus.map((gpu) => `${gpu.name} (${formatMemory(gpu.vramMb)})`).join(", ");
}

function formatPrice(hourlyUsd: number): string {
  return hourlyUsd === 0 ? "Free" : `$${hourlyUsd.toFixed(2)} / hour`;
}

function shortId(sessionId: string): string {
  return sessionId.slice(0, 8);
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

interface Card {
  item: HTMLLIElement;
  status: HTMLSpanElement;
  cpus: HTMLElement;
  memory: HTMLElement;
  gpus: HTMLElement;
  price: HTMLElement;
  button: HTMLButtonElement;
}

function spec(list: HTMLDListElement, term: string): HTMLElement {
  const group = el("div", "spec");
  group.append(el("dt", undefined, term));
  const value = el("dd");
  group.append(value);
  list.append(group);
  return value;
}

function buildCard(row: SessionRow, onConnect: ConnectHandler): Card {
  const item = el("li", "session");
  item.dataset.sessionId = row.sessionId;
  const titleId = `session-${row.sessionId}-title`;
  const statusId = `session-${row.sessionId}-status`;
  const article = el("article");
  article.setAttribute("aria-labelledby", titleId);
  const header = el("div", "session-head");
  const title = el("h3", "session-title", `Session ${shortId(row.sessionId)}`);
  title.id = titleId;
  title.title = row.sessionId;
  const status = el("span", "status");
  status.id = statusId;
  header.append(title, status);
  const specs = el("dl", "specs");
  const cpus = spec(specs, "CPUs");
  const memory = spec(specs, "Memory");
  const gpus = spec(specs, "GPUs");
  const price = spec(specs, "Price");
  const button = el("button", "connect", "Connect");
  button.type = "button";
  button.setAttribute("aria-describedby", `${titleId} ${statusId}`);
  button.addEventListener("click", () => onConnect(row.sessionId, button));
  article.append(header, specs, button);
  item.append(article);
  return { item, status, cpus, memory, gpus, price, button };
}

function setText(node: HTMLElement, text: string): void {
  if (node.textContent !== text) node.textContent = text;
}

/** The rendered list; `update` reconciles it with the latest rows. */
export class SessionList {
  private readonly cards = new Map<string, Card>();

  constructor(
    private readonly list: HTMLUListElement,
    private readonly empty: HTMLElement,
    private readonly onConnect: ConnectHandler,
  ) {}

  /** Shows `rows` (oldest first), marking `heldSessionId` as the renter's own. */
  update(rows: SessionRow[], heldSessionId: string | undefined, busy: boolean): void {
    const visible = rows
      .filter((row) => row.status !== "ENDED")
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.sessionId.localeCompare(b.sessionId));
    const seen = new Set<string>();
    let previous: HTMLLIElement | undefined;
    for (const row of visible) {
      seen.add(row.sessionId);
      let card = this.cards.get(row.sessionId);
      if (!card) {
        card = buildCard(row, this.onConnect);
        this.cards.set(row.sessionId, card);
      }
      this.fill(card, row, heldSessionId, busy);
      const wanted = previous ? previous.nextSibling : this.list.firstChild;
      if (wanted !== card.item) this.list.insertBefore(card.item, wanted);
      previous = card.item;
    }
    for (const [id, card] of this.cards) {
      if (seen.has(id)) continue;
      card.item.remove();
      this.cards.delete(id);
    }
    this.empty.hidden = visible.length > 0;
  }

  private fill(card: Card, row: SessionRow, heldSessionId: string | undefined, busy: boolean): void {
    const shown = displayStatus(row, heldSessionId);
    setText(card.status, STATUS_TEXT[shown]);
    card.status.className = `status status-${shown}`;
    card.item.dataset.status = shown;
    setText(card.cpus, String(row.hardware.cpus));
    setText(card.memory, formatMemory(row.hardware.memoryMb));
    setText(card.gpus, formatGpus(row));
    setText(card.price, formatPrice(row.pricing.hourlyUsd));
    // Connect stays pressable on a session shown in use: the list may be a few seconds old, and
    // the server's answer ("Session already in use") is the one that counts.
    card.button.disabled = busy || heldSessionId !== undefined;
    setText(card.button, shown === "yours" ? "Connected" : "Connect");
  }
}
