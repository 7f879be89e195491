// The page's CSP allows no inline style but the nonce'd. xterm.js writes its theme and
// cell sizes into <style> elements it creates at run time; they get the page's nonce
// (from <meta property="csp-nonce">, which the server fills per response) as they are
// made, so that the policy stays strict and the terminal still renders.

export function nonceStyles(): void {
  const nonce = document.querySelector<HTMLMetaElement>('meta[property="csp-nonce"]')?.nonce;
  if (!nonce) return;
  const create = Document.prototype.createElement;
  Document.prototype.createElement = function (this: Document, tag: string, options?: ElementCreationOptions) {
    const made = create.call(this, tag, options);
    if (tag.toLowerCase() === "style") made.nonce = nonce;
    return made;
  } as typeof Document.prototype.createElement;
}
