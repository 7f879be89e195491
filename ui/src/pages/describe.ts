// One capsule: its containers, volumes and events, reloaded on each change record of
// this capsule from the watch stream.

import { ApiError, Capsule, CapsuleEvent, Container, get, q } from "../api";
import { el, show } from "../dom";
import { Page, go, path } from "../router";
import { debounce, watch } from "../stream";
import { ago, deleteCapsule, errorLine, labels, link, liveBadge, status } from "../widgets";

const RELOAD_MS = 250;
const EVENTS_SHOWN = 100;

export function describePage(ident: string, signal: AbortSignal): Page {
  const error = errorLine();
  const live = liveBadge();
  const summary = el("div", { class: "summary" });
  const containers = el("tbody");
  const inits = el("tbody");
  const initSection = el("section", { hidden: true }, el("h2", {}, "Init containers"),
    containerTable(inits));
  const volumes = el("tbody");
  const events = el("tbody");

  async function load(): Promise<void> {
    try {
      const [c, ev] = await Promise.all([
        get<Capsule>(`/v1/capsules/${q(ident)}`, signal),
        get<{ events: CapsuleEvent[] }>(`/v1/capsules/${q(ident)}/events`, signal),
      ]);
      error.clear();
      render(c, ev.events);
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status === 404) {
        show(summary, el("p", { class: "gone" }, `Capsule ${ident} does not exist (any more).`));
        show(containers); show(inits); show(volumes);
        return;
      }
      error.set(err);
    }
  }

  function render(c: Capsule, evs: CapsuleEvent[]): void {
    show(summary, el("dl", {},
      el("dt", {}, "Status"), el("dd", {}, status(c.status),
        c.status_reason ? el("span", { class: "reason" }, ` ${c.status_reason}`) : null),
      el("dt", {}, "Ready"), el("dd", { class: "ready" }, c.ready),
      el("dt", {}, "Labels"), el("dd", {}, labels(c.labels)),
      el("dt", {}, "UUID"), el("dd", { class: "mono" }, c.uuid),
      el("dt", {}, "Revision"), el("dd", {}, String(c.revision)),
      el("dt", {}, "Age"), el("dd", { title: c.created_at ?? "" }, ago(c.created_at))));
    show(containers, c.containers.map((m) => containerRow(c, m, true)));
    initSection.hidden = c.init_containers.length === 0;
    show(inits, c.init_containers.map((m) => containerRow(c, m, false)));
    show(volumes, c.volumes.map((v) => el("tr", { "data-volume": v.name },
      el("td", {}, v.name), el("td", {}, v.type), el("td", {}, v.size === null ? "" : `${v.size} GiB`),
      el("td", { class: "mono" }, v.docker_volume ?? ""))));
    show(events, evs.slice(-EVENTS_SHOWN).reverse().map((e) => el("tr", { "data-event": e.reason },
      el("td", { title: e.last_seen ?? "" }, ago(e.last_seen)),
      el("td", { class: e.type === "Warning" ? "warn" : "" }, e.type),
      el("td", {}, e.reason),
      el("td", {}, e.container ?? ""),
      el("td", { class: "message" }, e.message ?? ""),
      el("td", {}, e.count > 1 ? `×${e.count}` : ""))));
  }

  function containerRow(c: Capsule, m: Container, app: boolean): HTMLElement {
    const running = m.status === "Running";
    return el("tr", { "data-container": m.name },
      el("td", {}, m.name),
      el("td", { class: "mono" }, m.image),
      el("td", {}, status(m.status),
        m.status_detail && m.status_detail !== m.status ? ` ${m.status_detail}` : null,
        m.status_reason ? el("span", { class: "reason" }, ` ${m.status_reason}`) : null),
      el("td", {}, app ? (m.ready ? "yes" : "no") : ""),
      el("td", {}, String(m.restart_count)),
      el("td", {}, m.exit_code === null ? "" : String(m.exit_code)),
      el("td", { class: "actions" },
        link(path("capsules", c.name, "logs", m.name), "Logs"),
        app && running ? [" ", link(path("capsules", c.name, "exec", m.name), "Terminal")] : null));
  }

  const reload = debounce(() => void load(), RELOAD_MS);
  void load();
  void watch({ capsule: ident }, signal, () => reload(), live.set);

  const node = el("section", { class: "page" },
    el("header", { class: "bar" },
      link(path(), "Capsules"), el("span", { class: "sep" }, "/"),
      el("h1", {}, ident), live.node, el("span", { class: "spacer" }),
      deleteCapsule(ident, () => go(path()), error.set)),
    error.node, summary,
    el("section", {}, el("h2", {}, "Containers"), containerTable(containers)),
    initSection,
    el("section", {}, el("h2", {}, "Volumes"), el("table", { class: "volumes" },
      el("thead", {}, el("tr", {}, ["Name", "Type", "Size", "Docker volume"].map((h) => el("th", {}, h)))),
      volumes)),
    el("section", {}, el("h2", {}, "Events"), el("table", { class: "events" },
      el("thead", {}, el("tr", {}, ["Last seen", "Type", "Reason", "Container", "Message", ""]
        .map((h) => el("th", {}, h)))),
      events)));
  return { title: ident, node };
}

function containerTable(body: HTMLElement): HTMLElement {
  return el("table", { class: "containers" },
    el("thead", {}, el("tr", {}, ["Name", "Image", "Status", "Ready", "Restarts", "Exit", ""]
      .map((h) => el("th", {}, h)))),
    body);
}
