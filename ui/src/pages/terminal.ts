// An exec terminal in the browser: POST …/execute with interactive=true gives a one-time
// websocket URL (the same session `capsule container exec -it` joins); xterm.js shows the
// raw terminal bytes and sends the keys back. Its size follows the page.

import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";

import { json, q } from "../api";
import { el, show } from "../dom";
import { Page, path } from "../router";
import { debounce } from "../stream";
import { errorLine, link } from "../widgets";

interface Started {
  exec_id: string | null;
  proxy_url: string | null;
}

const encoder = new TextEncoder();

export function terminalPage(capsule: string, container: string, signal: AbortSignal): Page {
  const error = errorLine();
  const state = el("span", { class: "live", "data-live": "connecting" }, "connecting…");
  const command = el("input", { name: "command", value: "sh", spellcheck: "false", "aria-label": "Command" });
  const screen = el("div", { class: "terminal", "data-terminal": container });
  let session: AbortController | null = null;

  function setState(live: string, text: string): void {
    state.dataset.live = live;
    show(state, text);
  }

  async function open(ev?: Event): Promise<void> {
    ev?.preventDefault();
    session?.abort();
    const mine = new AbortController();
    session = mine;
    signal.addEventListener("abort", () => mine.abort(), { once: true });
    error.clear();
    show(screen);
    setState("connecting", "connecting…");
    try {
      const started = await json<Started>("POST", `/v1/containers/${q(container)}/execute`, {
        body: { command: command.value, interactive: true, capsule }, signal: mine.signal,
      });
      if (!started.proxy_url) throw new Error("the server started no terminal session");
      attach(started, mine.signal);
    } catch (err) {
      if (!mine.signal.aborted) { error.set(err); setState("ended", "not connected"); }
    }
  }

  function attach(started: Started, sig: AbortSignal): void {
    const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 5000 });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(screen);
    // The URL's path and one-time token, on this page's own origin (what the browser
    // reached, whatever host name the server believes it has).
    const given = new URL(started.proxy_url!);
    const uuid = given.pathname.split("/")[3] ?? container;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}${given.pathname}${given.search}`, ["binary"]);
    ws.binaryType = "arraybuffer";
    const resize = debounce(() => {
      if (!started.exec_id || ws.readyState !== WebSocket.OPEN) return;
      void json("POST", `/v1/containers/${q(uuid)}/execute_resize`, {
        body: { exec_id: started.exec_id, w: term.cols, h: term.rows },
      }).catch(() => undefined); // the next resize tries again
    }, 150);
    const refit = (): void => { fit.fit(); resize(); };
    ws.onopen = () => { setState("live", "connected"); refit(); term.focus(); };
    ws.onmessage = (m: MessageEvent<ArrayBuffer | string>) =>
      term.write(typeof m.data === "string" ? m.data : new Uint8Array(m.data));
    ws.onclose = () => {
      setState("ended", "session ended");
      term.write("\r\n\x1b[2m[session ended]\x1b[0m\r\n");
    };
    term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(d)); });
    term.onBinary((d) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(Uint8Array.from(d, (ch) => ch.charCodeAt(0) & 0xff));
    });
    window.addEventListener("resize", refit);
    sig.addEventListener("abort", () => {
      window.removeEventListener("resize", refit);
      ws.onclose = null; // the terminal goes with it: nothing more to write
      ws.close();
      term.dispose();
    }, { once: true });
  }

  void open();
  const node = el("section", { class: "page terminal-page" },
    el("header", { class: "bar" },
      link(path(), "Capsules"), el("span", { class: "sep" }, "/"),
      link(path("capsules", capsule), capsule), el("span", { class: "sep" }, "/"),
      el("h1", {}, `${container} terminal`), state, el("span", { class: "spacer" }),
      el("form", { class: "inline", method: "post", onsubmit: open }, command, el("button", { type: "submit" }, "Run"))),
    error.node, screen);
  return { title: `${container} terminal`, node };
}
