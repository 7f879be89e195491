// The dashboard's build: hashed assets into the Python package, served by the API at /ui.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/ui/",
  build: {
    outDir: "../capsuled/ui_static",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    // One module script and one stylesheet: nothing inline, so the CSP needs no hashes.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
  html: {
    // Vite puts this placeholder into the nonce attributes of the tags it writes and into
    // <meta property="csp-nonce">; the server swaps in a fresh nonce per response.
    cspNonce: "CAPSULED_CSP_NONCE",
  },
});
