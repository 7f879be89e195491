// Log in: a token (the standalone server's or Keystone's), checked with GET /v1/whoami
// before it is kept for this tab.

import { Whoami, get } from "../api";
import { el } from "../dom";
import { Page, go, path } from "../router";
import { forget, keep } from "../session";
import { errorLine } from "../widgets";

export function loginPage(): Page {
  const input = el("input", {
    type: "password", name: "token", id: "token", autocomplete: "off", spellcheck: "false",
    required: true, placeholder: "X-Auth-Token",
  });
  const error = errorLine();
  async function submit(ev: Event): Promise<void> {
    ev.preventDefault();
    error.clear();
    keep(input.value.trim());
    try {
      await get<Whoami>("/v1/whoami");
      input.value = "";
      go(path());
    } catch (err) {
      forget();
      error.set(err);
    }
  }
  // POST, never GET: without the script a submit must not put the token in a URL.
  const form = el("form", { class: "login", method: "post", onsubmit: submit },
    el("label", { for: "token" }, "Token"),
    input,
    el("button", { type: "submit" }, "Log in"),
    error.node,
    el("p", { class: "hint" },
      "A token from `capsuled` (its admin-token file, or `capsule token create`) or from Keystone. ",
      "It is kept in this tab only."));
  return { title: "Log in", node: el("section", { class: "page login-page" }, el("h1", {}, "Capsuled"), form) };
}
