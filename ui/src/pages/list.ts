// The project's capsules: name, status, ready n/m and labels, reloaded whenever the
// watch stream reports a change to one of them (the list is the truth, the stream the cue).

import { Capsule, get } from "../api";
import { el, show } from "../dom";
import { Page, path } from "../router";
import { debounce, watch } from "../stream";
import { ago, deleteCapsule, errorLine, labels, link, liveBadge, status } from "../widgets";

const RELOAD_MS = 250;

export function listPage(signal: AbortSignal): Page {
  const body = el("tbody");
  const error = errorLine();
  const live = liveBadge();
  const empty = el("p", { class: "empty", hidden: true }, "No capsules in this project yet.");

  async function load(): Promise<void> {
    try {
      const page = await get<{ capsules: Capsule[] }>("/v1/capsules?sort_key=name", signal);
      error.clear();
      show(body, page.capsules.map(row));
      empty.hidden = page.capsules.length > 0;
    } catch (err) {
      if (!signal.aborted) error.set(err);
    }
  }

  function row(c: Capsule): HTMLElement {
    return el("tr", { "data-capsule": c.name },
      el("td", { class: "name" }, link(path("capsules", c.name), c.name)),
      el("td", {}, status(c.status)),
      el("td", { class: "ready" }, c.ready),
      el("td", {}, labels(c.labels)),
      el("td", { class: "age", title: c.created_at ?? "" }, ago(c.created_at)),
      el("td", { class: "actions" }, deleteCapsule(c.name, () => void load(), error.set)));
  }

  const reload = debounce(() => void load(), RELOAD_MS);
  void load();
  void watch({}, signal, (change) => {
    if (change === null || change.kind === "capsule") reload();
  }, live.set);

  const node = el("section", { class: "page" },
    el("header", { class: "bar" },
      el("h1", {}, "Capsules"), live.node,
      el("span", { class: "spacer" }),
      link(path("new"), el("span", { class: "button" }, "New capsule"))),
    error.node,
    el("table", { class: "capsules" },
      el("thead", {}, el("tr", {},
        ["Name", "Status", "Ready", "Labels", "Age", ""].map((h) => el("th", {}, h)))),
      body),
    empty);
  return { title: "Capsules", node };
}
