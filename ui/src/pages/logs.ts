// A container's log, followed: GET …/logs?follow=true as raw bytes, shown as text (never
// markup) and bounded: the oldest output is dropped past MAX_CHARS.

import { call, q } from "../api";
import { el, show } from "../dom";
import { Page, path } from "../router";
import { errorLine, link } from "../widgets";

const TAIL = 500;
const MAX_CHARS = 2_000_000;

export function logsPage(capsule: string, container: string, signal: AbortSignal): Page {
  const out = el("pre", { class: "log", "data-log": container });
  const error = errorLine();
  const state = el("span", { class: "live", "data-live": "connecting" }, "connecting…");
  const again = el("button", { hidden: true, onclick: () => void follow() }, "Follow again");
  let shown = 0;

  function add(text: string): void {
    const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.appendChild(document.createTextNode(text));
    shown += text.length;
    while (shown > MAX_CHARS && out.firstChild) {
      shown -= out.firstChild.textContent?.length ?? 0;
      out.removeChild(out.firstChild);
    }
    if (atBottom) out.scrollTop = out.scrollHeight;
  }

  function setState(live: string, text: string): void {
    state.dataset.live = live;
    show(state, text);
  }

  async function follow(): Promise<void> {
    again.hidden = true;
    error.clear();
    show(out);
    shown = 0;
    setState("connecting", "connecting…");
    try {
      const resp = await call("GET",
        `/v1/containers/${q(container)}/logs?capsule=${q(capsule)}&follow=true&tail=${TAIL}`,
        { accept: "application/octet-stream", signal });
      setState("live", "following");
      const reader = resp.body!.pipeThrough(new TextDecoderStream()).getReader();
      signal.addEventListener("abort", () => void reader.cancel().catch(() => undefined));
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        add(value);
      }
      setState("ended", "ended (the container stopped)");
    } catch (err) {
      if (signal.aborted) return;
      setState("ended", "stopped");
      error.set(err);
    }
    again.hidden = false;
  }

  void follow();
  const node = el("section", { class: "page" },
    el("header", { class: "bar" },
      link(path(), "Capsules"), el("span", { class: "sep" }, "/"),
      link(path("capsules", capsule), capsule), el("span", { class: "sep" }, "/"),
      el("h1", {}, `${container} logs`), state, el("span", { class: "spacer" }), again),
    error.node, out);
  return { title: `${container} logs`, node };
}
