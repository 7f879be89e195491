// The server's 400 problems ("path: message", one a line) placed on the lines of the
// pasted template that their paths name, so that each message shows next to its field.

import { LineCounter, isMap, isScalar, isSeq, parseDocument } from "yaml";

export interface Problem {
  path: string;
  message: string;
  line: number | null; // 1-based line of the template the path names (or its nearest parent)
}

const PATH = /^([A-Za-z_][\w.\-/[\]]*): (.*)$/s;

export function placeProblems(text: string, problems: string[]): Problem[] {
  const lines = new LineCounter();
  let root: unknown = null;
  try {
    root = parseDocument(text, { lineCounter: lines, uniqueKeys: false, prettyErrors: false }).contents;
  } catch {
    root = null; // the server's own message says where the text is broken
  }
  return problems.map((raw) => {
    const m = PATH.exec(raw);
    if (!m) return { path: "", message: raw, line: null };
    const offset = root === null ? null : locate(root, m[1]);
    return { path: m[1], message: m[2], line: offset === null ? null : lines.linePos(offset).line };
  });
}

/** The source offset of the deepest node on `path` (a.b[0].c) that the document has. */
function locate(root: unknown, path: string): number | null {
  let node: unknown = root;
  let rest = path;
  let found: number | null = null;
  while (rest && node) {
    const index = /^\[(\d+)\]\.?/.exec(rest);
    if (index) {
      if (!isSeq(node)) break;
      node = node.items[Number(index[1])];
      rest = rest.slice(index[0].length);
      const range = (node as { range?: [number, number, number] } | undefined)?.range;
      if (range) found = range[0];
      continue;
    }
    if (!isMap(node)) break;
    // Keys may hold dots (labels such as app.kubernetes.io/name): the longest key that
    // the path starts with, followed by the path's end, a dot or an index.
    let best: { len: number; at: number; value: unknown } | null = null;
    for (const pair of node.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : null;
      if (key === null || !rest.startsWith(key)) continue;
      const next = rest.charAt(key.length);
      if ((next === "" || next === "." || next === "[") && (!best || key.length > best.len)) {
        const at = (pair.key as { range?: [number, number, number] }).range?.[0] ?? null;
        best = { len: key.length, at: at ?? found ?? 0, value: pair.value };
      }
    }
    if (!best) break;
    found = best.at;
    node = best.value;
    rest = rest.slice(best.len).replace(/^\./, "");
  }
  return found;
}
