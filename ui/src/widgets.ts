// Small pieces every page uses: links, status badges, label chips, error lines, the
// live indicator and the delete-with-confirm control.

import { describeError, json, q } from "./api";
import { Child, el, show } from "./dom";
import { LiveState } from "./stream";

export function link(href: string, ...children: Child[]): HTMLAnchorElement {
  return el("a", { href, "data-route": true }, ...children);
}

const STATUS_CLASS: Record<string, string> = {
  Running: "ok", Created: "wait", Creating: "wait", Updating: "wait", Restarting: "wait",
  Stopped: "off", Deleting: "off", Paused: "off", Error: "bad", Unknown: "bad",
};

export function status(value: string): HTMLElement {
  return el("span", { class: `status ${STATUS_CLASS[value] ?? "off"}`, "data-status": value }, value);
}

export function labels(map: Record<string, string>): HTMLElement {
  const keys = Object.keys(map).sort();
  return el("span", { class: "labels" },
    keys.map((k) => el("span", { class: "label", "data-label": k }, `${k}=${map[k]}`)));
}

/** A line that shows the last failure (or nothing). */
export function errorLine(): { node: HTMLElement; set: (err: unknown) => void; clear: () => void } {
  const node = el("p", { class: "error", role: "alert", hidden: true });
  return {
    node,
    set: (err) => { node.hidden = false; show(node, describeError(err)); },
    clear: () => { node.hidden = true; show(node); },
  };
}

export function liveBadge(): { node: HTMLElement; set: (s: LiveState) => void } {
  const node = el("span", { class: "live", "data-live": "connecting" }, "connecting…");
  return {
    node,
    set: (s) => {
      node.dataset.live = s;
      show(node, s === "live" ? "live" : "reconnecting…");
    },
  };
}

/** A Delete button that asks first, inline (no window.confirm: it blocks the page's
 * streams and cannot be styled), then DELETEs the capsule. */
export function deleteCapsule(name: string, onDeleted: () => void, onError: (e: unknown) => void): HTMLElement {
  const box = el("span", { class: "delete" });
  const ask = (): void => show(box,
    el("span", { class: "confirm-text" }, `Delete capsule ${name}?`), " ",
    el("button", { class: "danger", "data-action": "confirm-delete", onclick: remove }, "Delete"), " ",
    el("button", { "data-action": "cancel-delete", onclick: idle }, "Cancel"));
  const idle = (): void => show(box,
    el("button", { class: "danger-outline", "data-action": "delete", onclick: ask }, "Delete"));
  async function remove(): Promise<void> {
    show(box, el("span", { class: "confirm-text" }, "Deleting…"));
    try {
      await json("DELETE", `/v1/capsules/${q(name)}`);
      onDeleted();
    } catch (err) {
      idle();
      onError(err);
    }
  }
  idle();
  return box;
}

export function ago(ts: string | null): string {
  if (!ts) return "";
  const when = Date.parse(ts.replace(" ", "T") + (/[zZ]|[+-]\d\d:?\d\d$/.test(ts) ? "" : "Z"));
  if (Number.isNaN(when)) return ts;
  const s = Math.max(0, Math.round((Date.now() - when) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}
