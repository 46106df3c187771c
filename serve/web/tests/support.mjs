// Helpers for the browser tests: start the real streampulse binary, launch Debian's Chromium
// through playwright-core, and read numbers back out of the page.

import { spawn } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const webDir = resolve(here, "..");
export const artifacts = join(webDir, "test-artifacts");
mkdirSync(artifacts, { recursive: true });

export const binary = resolve(webDir, process.env.STREAMPULSE_BIN ?? "../../target/release/streampulse");
export const chromiumPath = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

/** A port nobody listens on right now. */
export async function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** Polls `check` until it returns a truthy value, or fails after `timeoutMs` with `what`. */
export async function waitFor(what, check, { timeoutMs = 15_000, everyMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
    }
    await sleep(everyMs);
  }
}

/**
 * `streampulse run` on 127.0.0.1:`port` (with `extra` flags and the generator's `scenario`,
 * cdn-outage unless told), its output appended to test-artifacts/streampulse.log. Resolves once
 * /health answers.
 */
export async function startServer(port, extra = [], { scenario = "cdn-outage" } = {}) {
  if (!existsSync(binary)) {
    throw new Error(
      `no streampulse binary at ${binary}; build it (cd /work/main && cargo build --release -p streampulse) or set STREAMPULSE_BIN`,
    );
  }
  const log = createWriteStream(join(artifacts, "streampulse.log"), { flags: "a" });
  const args = ["run", "--http", `127.0.0.1:${port}`, "--rate", "400", "--scenario", scenario, ...extra];
  const child = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "info" } });
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  let exited = null;
  child.on("exit", (code, signal) => {
    exited = { code, signal };
  });
  const base = `http://127.0.0.1:${port}`;
  await waitFor(`${base}/health`, async () => {
    if (exited) throw new Error(`streampulse exited early (${JSON.stringify(exited)}); see test-artifacts/streampulse.log`);
    const response = await fetch(`${base}/health`);
    return response.ok;
  });
  return {
    base,
    child,
    /** Kills the process outright, as a crash would, and waits until it is gone. */
    async kill() {
      if (exited) return;
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGKILL");
      await gone;
    },
  };
}

/** GET a JSON endpoint of the server. */
export async function api(base, path) {
  const response = await fetch(`${base}/${path}`);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

/** Headless Chromium with a fresh profile, and a function that closes it and removes the profile. */
export async function launchBrowser() {
  const profile = mkdtempSync(join(tmpdir(), "streampulse-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** "12,345" → 12345, "90.7%" → 90.7, "468.3 s" → 468.3; NaN when there is no number. */
export function parseNumber(text) {
  const match = /-?[\d,]*\.?\d+/.exec(text ?? "");
  return match ? Number(match[0].replaceAll(",", "")) : Number.NaN;
}
