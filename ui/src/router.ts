// History routing under /ui: each route builds a page; leaving it aborts the page's
// signal, which ends its streams, terminals and pending calls.

export interface Page {
  title: string;
  node: HTMLElement;
}

export type Build = (params: string[], signal: AbortSignal) => Page;

const BASE = "/ui";
const routes: [RegExp, Build][] = [];
let current: AbortController | null = null;
let mount: (page: Page) => void = () => undefined;

export function route(pattern: RegExp, build: Build): void {
  routes.push([pattern, build]);
}

/** A path under /ui for `parts`, each one encoded (names may hold any character). */
export function path(...parts: string[]): string {
  return [BASE, ...parts.map(encodeURIComponent)].join("/");
}

export function go(to: string, replace = false): void {
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  render();
}

export function render(): void {
  current?.abort();
  current = new AbortController();
  const local = location.pathname.replace(/^\/ui/, "").replace(/\/+$/, "") || "/";
  for (const [pattern, build] of routes) {
    const m = pattern.exec(local);
    if (m) {
      let params: string[];
      try {
        params = m.slice(1).map((p) => decodeURIComponent(p));
      } catch {
        break; // a malformed %-escape: no page of ours
      }
      mount(build(params, current.signal));
      return;
    }
  }
  go(path(), true);
}

export function start(onPage: (page: Page) => void): void {
  mount = onPage;
  window.addEventListener("popstate", render);
  // Links inside the app change the route without a page load.
  document.addEventListener("click", (ev) => {
    const a = (ev.target as Element | null)?.closest?.("a[data-route]");
    if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey) return;
    ev.preventDefault();
    go(a.getAttribute("href") ?? path());
  });
  render();
}
