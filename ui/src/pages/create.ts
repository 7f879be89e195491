// Create a capsule from a pasted template (YAML or JSON), sent as is: the server parses
// and validates it, and each of its 400 problems is shown next to the line of the field
// its path names.

import { ApiError, Capsule, json } from "../api";
import { el, show } from "../dom";
import { Page, go, path } from "../router";
import { Problem, placeProblems } from "../problems";
import { errorLine, link } from "../widgets";

const EXAMPLE = `kind: capsule
metadata:
  name: web
  labels:
    app: web
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "echo started; sleep 3600"]
`;

export function createPage(signal: AbortSignal): Page {
  const editor = el("textarea", {
    class: "editor", name: "template", rows: 24, wrap: "off", spellcheck: "false",
    "aria-label": "Template", placeholder: EXAMPLE,
  });
  const gutter = el("div", { class: "gutter", "aria-hidden": "true" });
  const list = el("ul", { class: "problems" });
  const error = errorLine();
  let problems: Problem[] = [];

  function renderGutter(): void {
    const count = editor.value.split("\n").length;
    const byLine = new Map<number, Problem[]>();
    for (const p of problems) if (p.line !== null) byLine.set(p.line, [...(byLine.get(p.line) ?? []), p]);
    const rows = [];
    for (let n = 1; n <= count; n++) {
      const here = byLine.get(n);
      rows.push(el("div", here ? { class: "problem-line", "data-line": n,
        title: here.map((p) => `${p.path}: ${p.message}`).join("\n") } : {}, here ? `! ${n}` : String(n)));
    }
    show(gutter, rows);
    gutter.scrollTop = editor.scrollTop;
  }

  function select(line: number): void {
    const starts = [0];
    for (let i = 0; i < editor.value.length; i++) if (editor.value[i] === "\n") starts.push(i + 1);
    const from = starts[line - 1] ?? 0;
    const to = (starts[line] ?? editor.value.length + 1) - 1;
    editor.focus();
    editor.setSelectionRange(from, to);
  }

  function renderProblems(): void {
    show(list, problems.map((p) => el("li", { class: "problem", "data-path": p.path },
      p.line !== null
        ? el("button", { type: "button", class: "at-line", onclick: () => select(p.line!) }, `line ${p.line}`)
        : el("span", { class: "at-line" }, "—"),
      p.path ? el("code", { class: "path" }, p.path) : null,
      el("span", { class: "message" }, p.message))));
    renderGutter();
  }

  async function submit(ev: Event): Promise<void> {
    ev.preventDefault();
    error.clear();
    problems = [];
    renderProblems();
    try {
      const made = await json<Capsule>("POST", "/v1/capsules", { body: { template: editor.value }, signal });
      go(path("capsules", made.name));
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status === 400 && err.problems.length > 0) {
        problems = placeProblems(editor.value, err.problems);
        renderProblems();
      } else {
        error.set(err);
      }
    }
  }

  editor.addEventListener("input", renderGutter);
  editor.addEventListener("scroll", () => { gutter.scrollTop = editor.scrollTop; });
  renderGutter();

  const node = el("section", { class: "page" },
    el("header", { class: "bar" }, link(path(), "Capsules"), el("span", { class: "sep" }, "/"),
      el("h1", {}, "New capsule")),
    el("form", { class: "create", method: "post", onsubmit: submit },
      el("p", { class: "hint" }, "Paste a capsule template, YAML or JSON (as `capsule create -f` takes)."),
      el("div", { class: "editor-box" }, gutter, editor),
      el("div", { class: "buttons" }, el("button", { type: "submit" }, "Create")),
      error.node, list));
  return { title: "New capsule", node };
}
