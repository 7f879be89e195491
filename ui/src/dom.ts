// The only way the dashboard makes DOM: elements with attributes and text nodes.
// Server text (names, labels, logs, messages) is attacker-controlled, so nothing here
// ever parses HTML: strings become text nodes, never markup, and no string can become
// an event handler or a javascript: link.

export type Child = Node | string | number | null | undefined | false;
export type Attrs = Record<string, string | number | boolean | null | undefined | EventListener>;

const SAFE_HREF = /^(\/|#|https?:)/i;

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K, attrs: Attrs = {}, ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") {
      if (!name.startsWith("on")) throw new Error(`el: ${name} is not an event`);
      node.addEventListener(name.slice(2), value);
    } else if (name.startsWith("on")) {
      throw new Error(`el: ${name} must be a function`);
    } else if (name === "href" && !SAFE_HREF.test(String(value))) {
      throw new Error("el: href must be a path or an http(s) URL");
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

export function append(parent: Node, children: (Child | Child[])[]): void {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace what `parent` shows with `children`. */
export function show(parent: Element, ...children: (Child | Child[])[]): void {
  parent.replaceChildren();
  append(parent, children);
}
