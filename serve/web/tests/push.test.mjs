// End-to-end tests of the dashboard fed by the push stream (GET /api/stream): the real streampulse
// binary and headless Chromium. Every request the page makes is recorded, so "without polling"
// is checked, not assumed.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { api, artifacts, freePort, launchBrowser, parseNumber, startServer, waitFor } from "./support.mjs";

const testid = (id) => `[data-testid="${id}"]`;

let browser;
const servers = [];

after(async () => {
  await browser?.close();
  for (const s of servers) await s.kill();
});

async function start(port, extra = []) {
  const server = await waitFor("the server to start", () => startServer(port, extra), { timeoutMs: 30_000, everyMs: 500 });
  servers.push(server);
  return server;
}

/** A page that records its requests: polls (`/api/stats/*`) and stream opens (`/api/stream`). */
async function openPage(url) {
  browser ??= await launchBrowser();
  const page = await browser.context.newPage();
  const requests = { stats: [], stream: [] };
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("request", (req) => {
    const { pathname } = new URL(req.url());
    if (pathname.startsWith("/api/stats/")) requests.stats.push({ at: Date.now(), path: pathname });
    if (pathname === "/api/stream") requests.stream.push({ at: Date.now(), url: req.url() });
  });
  await page.goto(url);
  return { page, requests, errors };
}

async function indicator(page) {
  return page.evaluate(() => {
    const live = document.querySelector('[data-testid="live-indicator"]');
    return {
      state: live.dataset.state,
      mode: live.dataset.mode,
      label: live.querySelector('[data-testid="live-label"]').textContent.trim(),
      pushed: Number(live.dataset.pushed ?? 0),
      rounds: Number(live.dataset.rounds ?? 0),
      downloads: document.querySelector('[data-testid="card-downloads-value"]').textContent.trim(),
    };
  });
}

async function waitPushLive(page, timeoutMs = 20_000) {
  return waitFor(
    "the page to be live by push",
    async () => {
      const now = await indicator(page);
      return now.state === "live" && now.mode === "push" && now.pushed > 0 && now;
    },
    { timeoutMs },
  );
}

/** Waits for the downloads card to change while counting the page's polls; returns both. */
async function changeWithoutPolling(page, requests, what) {
  const since = Date.now();
  const first = await indicator(page);
  const changed = await waitFor(
    `${what}: the downloads card to change`,
    async () => {
      const now = await indicator(page);
      return now.downloads !== first.downloads && now.pushed > first.pushed && now;
    },
    { timeoutMs: 10_000 },
  );
  // A few more frames, so that a poll timer left running would have fired.
  await sleep(2500);
  const polls = requests.stats.filter((r) => r.at >= since);
  assert.deepEqual(polls, [], `${what}: the page polled while the stream was open`);
  const last = await indicator(page);
  assert.equal(last.mode, "push");
  assert.equal(last.state, "live");
  assert.match(last.label, /push/i);
  return { first, changed, last };
}

describe("the dashboard fed by push", { timeout: 180_000 }, () => {
  test("updates arrive without polling, and survive a server restart", async () => {
    const port = await freePort();
    let server = await start(port);
    const { page, requests, errors } = await openPage(`${server.base}/`);
    await waitPushLive(page);
    const { changed } = await changeWithoutPolling(page, requests, "first server");
    // What the page shows lies between two answers of the API fetched around it.
    const before = await api(server.base, "api/stats/realtime?minutes=5");
    const shown = parseNumber((await indicator(page)).downloads);
    const afterwards = await api(server.base, "api/stats/realtime?minutes=5");
    assert.ok(parseNumber(changed.downloads) > 0);
    assert.ok(
      before.total_downloads - 400 <= shown && shown <= afterwards.total_downloads,
      `page ${shown}, API ${before.total_downloads}..${afterwards.total_downloads}`,
    );
    assert.equal(requests.stream.length, 1, "one stream, opened once");

    await server.kill();
    await waitFor(
      "the page to stop saying live",
      async () => (await indicator(page)).state !== "live",
      { timeoutMs: 10_000 },
    );
    const down = await indicator(page);
    assert.notEqual(down.state, "live");
    await page.screenshot({ path: join(artifacts, "push-offline.png") });

    server = await start(port);
    const back = await waitPushLive(page, 30_000);
    assert.ok(requests.stream.length >= 2, "the stream was opened again");
    const again = await changeWithoutPolling(page, requests, "restarted server");
    assert.ok(again.last.pushed > back.pushed);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test("when the stream is refused the page polls, and tries the stream again", async () => {
    const port = await freePort();
    const server = await start(port, ["--push-max-streams", "0"]);
    const { page, requests, errors } = await openPage(`${server.base}/?poll=500`);
    const polled = await waitFor(
      "the page to be live by polling",
      async () => {
        const now = await indicator(page);
        return now.state === "live" && now.mode === "poll" && now.rounds >= 2 && now;
      },
      { timeoutMs: 15_000 },
    );
    assert.match(polled.label, /poll/i);
    assert.ok(requests.stats.length >= 12, `${requests.stats.length} polls`);
    const refused = await fetch(`${server.base}/api/stream`);
    assert.equal(refused.status, 503);
    assert.equal((await refused.json()).error, "push_disabled");
    // The stream is tried again every few seconds while the page polls.
    await waitFor("a second try of the stream", () => requests.stream.length >= 2, { timeoutMs: 15_000 });
    assert.equal((await indicator(page)).mode, "poll");
    await page.close();

    // ?push=0: polling only, the stream is never asked for.
    const forced = await openPage(`${server.base}/?push=0&poll=500`);
    await waitFor("polling rounds", async () => (await indicator(forced.page)).rounds >= 3, { timeoutMs: 15_000 });
    assert.deepEqual(forced.requests.stream, []);
    assert.equal((await indicator(forced.page)).mode, "poll");
    assert.deepEqual([...errors, ...forced.errors], []);
    await forced.page.close();
  });
});
