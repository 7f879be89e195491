// The dashboard's entry: who is logged in, the routes, and the page frame.

import "./style.css";

import { Whoami, get, whenUnauthenticated } from "./api";
import { nonceStyles } from "./csp";
import { el, show } from "./dom";
import { describePage } from "./pages/describe";
import { listPage } from "./pages/list";
import { loginPage } from "./pages/login";
import { logsPage } from "./pages/logs";
import { Build, Page, go, path, route, start } from "./router";
import { forget, token } from "./session";

nonceStyles();

const who = el("span", { class: "who" });
const main = el("main");
const app = document.getElementById("app")!;
show(app,
  el("nav", { class: "top" },
    el("a", { href: path(), "data-route": true, class: "brand" }, "Capsuled"),
    el("span", { class: "spacer" }), who),
  main);

let known: string | null = null; // the token `who` describes

async function showWho(): Promise<void> {
  const t = token();
  if (t === known) return;
  known = t;
  show(who);
  if (t === null) return;
  try {
    const me = await get<Whoami>("/v1/whoami");
    show(who,
      el("span", { class: "identity", "data-user": me.user_id, "data-project": me.project_id },
        `${me.user_id} in ${me.project_id}`),
      el("span", { class: "roles" }, ` (${me.roles.join(", ")})`), " ",
      el("button", { class: "link", "data-action": "logout", onclick: logout }, "Log out"));
  } catch {
    known = null;
  }
}

function logout(): void {
  forget();
  go(path("login"));
}

/** Pages that need a token send the browser to the login page without one. */
function authed(build: Build): Build {
  return (params, signal) => {
    if (token() === null) {
      queueMicrotask(() => go(path("login"), true));
      return { title: "Log in", node: el("section") };
    }
    return build(params, signal);
  };
}

/** A page whose module (the terminal's xterm.js, the template parser) loads on first use. */
function later<T>(title: string, load: () => Promise<T>,
                  build: (f: T, params: string[], signal: AbortSignal) => Page): Build {
  return (params, signal) => {
    const holder = el("section", { class: "page" }, el("p", { class: "hint" }, "Loading…"));
    load().then((f) => {
      if (signal.aborted) return;
      const page = build(f, params, signal);
      document.title = `${page.title} · Capsuled`;
      holder.replaceWith(page.node);
    }).catch((err: unknown) => show(holder, el("p", { class: "error" }, `Could not load the page: ${String(err)}`)));
    return { title, node: holder };
  };
}

// A token the server no longer knows (expired, revoked) sends every page but the login
// page, which shows its own error, to log in again.
whenUnauthenticated(() => {
  if (location.pathname !== path("login")) go(path("login"), true);
});
route(/^\/login$/, () => loginPage());
route(/^\/$/, authed((_, s) => listPage(s)));
route(/^\/new$/, authed(later("New capsule",
  async () => (await import("./pages/create")).createPage, (build, _, s) => build(s))));
route(/^\/capsules\/([^/]+)$/, authed(([c], s) => describePage(c, s)));
route(/^\/capsules\/([^/]+)\/logs\/([^/]+)$/, authed(([c, m], s) => logsPage(c, m, s)));
route(/^\/capsules\/([^/]+)\/exec\/([^/]+)$/, authed(later("Terminal",
  async () => (await import("./pages/terminal")).terminalPage, (build, [c, m], s) => build(c, m, s))));

start((page: Page) => {
  document.title = `${page.title} · Capsuled`;
  show(main, page.node);
  void showWho();
});
