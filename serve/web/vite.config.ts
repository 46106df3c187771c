// The bundle is embedded into the streampulse binary by serve/build.rs, which serves
// dist/index.html at `/` and the content-hashed files under `/assets/`.
import { defineConfig } from "vite";

// `npm run dev` proxies the API to a running `streampulse run` (default address), so the page
// can be developed with hot reload against live data.
const api = process.env.STREAMPULSE_API ?? "http://127.0.0.1:8080";

export default defineConfig({
  // Relative URLs, so the page also works behind a reverse proxy under a path prefix.
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    // One small page: a single JS and CSS file is simpler to embed and loads in one round trip.
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 400,
    rollupOptions: {
      // The dashboard at `/`, and the API docs that `streampulse` serves at `/docs`. Swagger UI is
      // one prebuilt ~1.5 MB bundle, loaded only by the docs page.
      input: { index: "index.html", docs: "docs.html" },
    },
  },
  server: {
    proxy: {
      "/api": api,
      "/health": api,
      "/openapi.json": api,
    },
  },
});
