// End-to-end tests of the dashboard: the real streampulse binary (its embedded bundle and live
// API) driven by headless Chromium. Expected values always come from the API, never from here.
// These pages poll (`?push=0`), so that each round's responses can be compared with the page;
// push.test.mjs tests the page fed by the push stream.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { api, artifacts, freePort, launchBrowser, parseNumber, startServer, waitFor } from "./support.mjs";

/** The tests' pages poll faster than the default 2 s so that they finish sooner. */
const POLL_MS = 1000;

let port;
let server;
let browser;
let page;
const pageErrors = [];
/**
 * The newest body the page received from each endpoint, by name ("realtime", "trending", ...;
 * "rising" for trending?by=rising, the trending panel's second list).
 */
const received = new Map();

const testid = (id) => `[data-testid="${id}"]`;

function watch(p) {
  p.on("pageerror", (e) => pageErrors.push(e.message));
  p.on("response", async (response) => {
    const { pathname, searchParams } = new URL(response.url());
    if (!pathname.startsWith("/api/stats/") || !response.ok()) return;
    const name = searchParams.get("by") === "rising" ? "rising" : pathname.slice("/api/stats/".length);
    try {
      received.set(name, await response.json());
    } catch {
      // The page may have navigated away; that round is not compared.
    }
  });
}

async function rounds(p = page) {
  return Number((await p.getAttribute(testid("live-indicator"), "data-rounds")) ?? 0);
}

/**
 * Waits until the page has finished one more polling round, then a moment more so the test has
 * every response of that round. The next round starts POLL_MS after, so the page and `received`
 * hold the same round until then.
 */
async function nextRound(p = page) {
  const n = await rounds(p);
  await waitFor("the next polling round", async () => (await rounds(p)) > n, { timeoutMs: 10_000 });
  await sleep(150);
}

async function waitLive(p = page) {
  await waitFor("the live indicator to say live", async () => {
    return (await p.getAttribute(testid("live-indicator"), "data-state")) === "live";
  }, { timeoutMs: 20_000 });
}

/** Everything the page shows, as plain data. */
function readPage(p = page) {
  return p.evaluate(() => {
    const q = (id) => document.querySelector(`[data-testid="${id}"]`);
    const all = (selector, root = document) => [...root.querySelectorAll(selector)];
    const text = (node) => node?.textContent?.trim() ?? "";
    const visible = (node) => !!node && !node.hidden && node.getClientRects().length > 0;
    const painted = (canvas) => {
      const { width, height } = canvas;
      if (!width || !height) return 0;
      const pixels = canvas.getContext("2d").getImageData(0, 0, width, height).data;
      let n = 0;
      for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) n++;
      return n;
    };
    return {
      cards: {
        downloads: text(q("card-downloads-value")),
        uniqueContent: text(q("card-unique-content-value")),
        successRate: text(q("card-success-rate-value")),
        avgDownloadTime: text(q("card-avg-download-time-value")),
      },
      alerts: {
        count: text(q("alerts-count")),
        items: all('[data-testid="alert-item"]').map((li) => ({
          id: li.dataset.id,
          severity: text(li.querySelector('[data-testid="alert-severity"]')),
          message: text(li.querySelector('[data-testid="alert-message"]')),
        })),
        emptyVisible: visible(q("alerts-empty")),
      },
      trending: all('[data-testid="trending-list"] li').map((li) => ({
        title: li.dataset.title,
        downloads: Number(li.dataset.downloads),
      })),
      trendingPainted: painted(q("trending-chart")),
      regions: all('[data-testid="region-tile"]').map((li) => ({
        region: text(li.querySelector('[data-testid="region-name"]')),
        status: text(li.querySelector('[data-testid="region-status"]')),
        rate: text(li.querySelector('[data-testid="region-rate"]')),
        fill: getComputedStyle(li.querySelector(".rate-fill")).backgroundColor,
      })),
      timeseries: {
        items: all('[data-testid="timeseries-list"] li').map((li) => ({
          start: li.dataset.start,
          downloads: Number(li.dataset.downloads),
        })),
        peak: text(q("timeseries-peak")),
        count: text(q("timeseries-count")),
      },
      timeseriesPainted: painted(q("timeseries-chart")),
      devices: all('[data-testid="device-row"]').map((li) => ({
        device: text(li.querySelector('[data-testid="device-name"]')),
        downloads: text(li.querySelector('[data-testid="device-downloads"]')),
      })),
      devicesPainted: painted(q("devices-chart")),
      live: {
        state: q("live-indicator").dataset.state,
        label: text(q("live-label")),
        updated: text(q("last-updated")),
        updatedIso: q("live-indicator").dataset.updated,
      },
      banner: { visible: visible(q("error-banner")), text: text(q("error-banner")) },
    };
  });
}

before(async () => {
  port = await freePort();
  server = await startServer(port);
  browser = await launchBrowser();
  page = await browser.context.newPage();
  watch(page);
  await page.goto(`${server.base}/?push=0&poll=${POLL_MS}`);
  await waitLive();
});

after(async () => {
  await browser?.close();
  await server?.kill();
});

describe("the streampulse dashboard", { timeout: 180_000 }, () => {
  test("/ serves the built bundle, and every file it links is embedded", async () => {
    const response = await fetch(`${server.base}/`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type"), /^text\/html/);
    const html = await response.text();
    assert.doesNotMatch(html, /dashboard-not-built/, "the binary was built without serve/web/dist");
    const links = [...html.matchAll(/(?:src|href)="\.?\/?(assets\/[^"]+)"/g)].map((m) => m[1]);
    assert.ok(links.some((l) => l.endsWith(".js")), `no script in ${links}`);
    assert.ok(links.some((l) => l.endsWith(".css")), `no stylesheet in ${links}`);
    for (const link of links) {
      assert.match(link, /-[\w-]{6,}\.(js|css)$/, `${link} has no content hash`);
      const asset = await fetch(`${server.base}/${link}`);
      assert.equal(asset.status, 200, link);
      assert.match(asset.headers.get("content-type"), link.endsWith(".js") ? /javascript/ : /text\/css/);
    }
    assert.equal(await (await fetch(`${server.base}/index.html`)).text(), html);
  });

  test("every panel draws exactly what the page received from the API", async () => {
    await nextRound();
    const shown = await readPage();
    const r = received.get("realtime");
    assert.ok(r, "the page never fetched /api/stats/realtime");

    assert.equal(parseNumber(shown.cards.downloads), r.total_downloads, shown.cards.downloads);
    assert.ok(r.total_downloads > 0, "the generator produced no downloads");
    assert.equal(parseNumber(shown.cards.uniqueContent), r.unique_content, shown.cards.uniqueContent);
    assert.ok(Math.abs(parseNumber(shown.cards.successRate) - r.avg_success_rate * 100) < 0.051, shown.cards.successRate);
    assert.ok(Math.abs(parseNumber(shown.cards.avgDownloadTime) - r.avg_download_time) < 0.051, shown.cards.avgDownloadTime);

    const alerts = received.get("alerts");
    assert.equal(parseNumber(shown.alerts.count), alerts.unacknowledged_count);
    assert.deepEqual(shown.alerts.items.map((a) => a.id), alerts.data.map((a) => String(a.id)));
    assert.deepEqual(shown.alerts.items.map((a) => a.severity), alerts.data.map((a) => a.severity));
    assert.deepEqual(shown.alerts.items.map((a) => a.message), alerts.data.map((a) => a.message));
    assert.equal(shown.alerts.emptyVisible, alerts.data.length === 0, "the empty state shows iff there are no alerts");

    const trending = received.get("trending");
    assert.ok(trending.data.length > 0, "no trending titles");
    assert.deepEqual(shown.trending, trending.data.map((t) => ({ title: t.title, downloads: t.total_downloads })));
    assert.ok(shown.trendingPainted > 500, "the trending chart drew nothing");

    const regions = received.get("regions");
    assert.ok(regions.data.length > 0, "no regions");
    assert.deepEqual(shown.regions.map((g) => g.region), regions.data.map((g) => g.region));
    assert.deepEqual(shown.regions.map((g) => g.status), regions.data.map((g) => g.health_status));
    regions.data.forEach((g, i) => {
      assert.ok(Math.abs(parseNumber(shown.regions[i].rate) - g.success_rate * 100) < 0.051, g.region);
    });
    // Colour-coded: one colour per status, and a different one for each status.
    const fills = new Map();
    for (const g of shown.regions) {
      if (fills.has(g.status)) assert.equal(g.fill, fills.get(g.status), `${g.region} is coloured unlike other ${g.status} regions`);
      fills.set(g.status, g.fill);
    }
    assert.equal(new Set(fills.values()).size, fills.size, "two statuses share a colour");

    const series = received.get("timeseries");
    assert.ok(series.data.length > 0, "no minutes in the time series");
    assert.deepEqual(shown.timeseries.items, series.data.map((m) => ({ start: m.window_start, downloads: m.total_downloads })));
    assert.equal(parseNumber(shown.timeseries.count), series.data.length);
    assert.equal(parseNumber(shown.timeseries.peak), Math.max(...series.data.map((m) => m.total_downloads)));
    assert.ok(shown.timeseriesPainted > 500, "the time-series chart drew nothing");

    const devices = received.get("devices");
    assert.ok(devices.data.length > 0, "no devices");
    assert.deepEqual(
      shown.devices.map((d) => [d.device, parseNumber(d.downloads)]),
      devices.data.map((d) => [d.device, d.total_downloads]),
    );
    assert.ok(shown.devicesPainted > 500, "the devices chart drew nothing");

    assert.equal(shown.live.state, "live");
    assert.match(shown.live.updated, /^\d\d:\d\d:\d\d$/);
    assert.equal(shown.banner.visible, false);

    await page.screenshot({ path: join(artifacts, "dashboard-desktop-1280x900.png"), fullPage: true });
  });

  test("the page agrees with the API fetched at about the same time", async () => {
    // The counters only grow during a short run, so what the page shows lies between two
    // answers fetched just before and just after it; ranks can swap, so a few tries are allowed.
    let last;
    for (let attempt = 0; attempt < 4; attempt++) {
      const [rtBefore, trBefore] = await Promise.all([
        api(server.base, "api/stats/realtime?minutes=5"),
        api(server.base, "api/stats/trending?minutes=5&limit=10"),
      ]);
      await nextRound();
      const shown = await readPage();
      const [rtAfter, trAfter] = await Promise.all([
        api(server.base, "api/stats/realtime?minutes=5"),
        api(server.base, "api/stats/trending?minutes=5&limit=10"),
      ]);
      const downloads = parseNumber(shown.cards.downloads);
      const firstTitles = [trBefore.data[0]?.title, trAfter.data[0]?.title];
      last = { downloads, before: rtBefore.total_downloads, after: rtAfter.total_downloads, shown: shown.trending[0]?.title, firstTitles };
      if (
        rtBefore.total_downloads <= downloads &&
        downloads <= rtAfter.total_downloads &&
        firstTitles.includes(shown.trending[0]?.title)
      ) {
        return;
      }
    }
    assert.fail(`the page disagrees with the API: ${JSON.stringify(last)}`);
  });

  test("the page updates as new events arrive", async () => {
    const first = await readPage();
    const changed = await waitFor(
      "the downloads card and the last-update time to change",
      async () => {
        const now = await readPage();
        return now.cards.downloads !== first.cards.downloads && now.live.updated !== first.live.updated && now;
      },
      { timeoutMs: 6 * POLL_MS + 2000 },
    );
    assert.ok(Date.parse(changed.live.updatedIso) > Date.parse(first.live.updatedIso));
    assert.ok(!Number.isNaN(parseNumber(changed.cards.downloads)));
  });

  test("with ?push=0, polls every 2 s by default and as often as ?poll= says", async () => {
    async function medianInterval(query, windowMs) {
      const p = await browser.context.newPage();
      const times = [];
      p.on("request", (req) => {
        if (new URL(req.url()).pathname === "/api/stats/realtime") times.push(Date.now());
      });
      await p.goto(`${server.base}/${query}`);
      await sleep(windowMs);
      await p.close();
      const gaps = times.slice(1).map((t, i) => t - times[i]).sort((a, b) => a - b);
      assert.ok(gaps.length >= 2, `only ${times.length} requests with ${query || "no query"}`);
      return gaps[Math.floor(gaps.length / 2)];
    }
    const byDefault = await medianInterval("?push=0", 7000);
    assert.ok(byDefault >= 1900 && byDefault < 3000, `default interval ${byDefault} ms`);
    const fast = await medianInterval("?push=0&poll=400", 3000);
    assert.ok(fast >= 380 && fast < 1200, `?poll=400 interval ${fast} ms`);
  });

  test("an API error shows in the banner and clears by itself", async () => {
    const faulty = "**/api/stats/regions*";
    await page.route(faulty, (route) =>
      route.fulfill({
        status: 500,
        contentType: "application/json",
        body: JSON.stringify({ error: "internal", detail: "injected by the test" }),
      }),
    );
    try {
      await page.waitForSelector(testid("error-banner"), { state: "visible", timeout: 5 * POLL_MS + 2000 });
      const shown = await readPage();
      assert.match(shown.banner.text, /regions: HTTP 500 injected by the test/);
      assert.equal(shown.live.state, "error");
      assert.equal(await page.getAttribute(testid("panel-regions"), "data-state"), "stale");
      assert.equal(await page.getAttribute(testid("panel-trending"), "data-state"), "ready");
    } finally {
      await page.unroute(faulty);
    }
    await page.waitForSelector(testid("error-banner"), { state: "hidden", timeout: 5 * POLL_MS + 2000 });
    assert.equal((await readPage()).live.state, "live");
  });

  test("at phone width nothing overflows sideways", async () => {
    const phone = await browser.context.newPage();
    watch(phone);
    try {
      await phone.setViewportSize({ width: 375, height: 800 });
      await phone.goto(`${server.base}/?push=0&poll=${POLL_MS}`);
      await waitLive(phone);
      await nextRound(phone);
      const layout = await phone.evaluate(() => {
        const doc = document.documentElement;
        const wide = [...document.querySelectorAll("body *")]
          .filter((n) => n.getClientRects().length > 0 && !n.closest("canvas"))
          .map((n) => ({ n, r: n.getBoundingClientRect() }))
          .filter(({ r }) => r.right > doc.clientWidth + 0.5 || r.left < -0.5)
          .map(({ n, r }) => `${n.tagName.toLowerCase()}.${n.className} [${Math.round(r.left)}, ${Math.round(r.right)}]`);
        return { scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, bodyScroll: document.body.scrollWidth, wide };
      });
      assert.ok(layout.scrollWidth <= layout.clientWidth, JSON.stringify(layout));
      assert.ok(layout.bodyScroll <= layout.clientWidth, JSON.stringify(layout));
      assert.deepEqual(layout.wide, [], "elements stick out of the viewport");
      const shown = await readPage(phone);
      assert.ok(shown.trending.length > 0 && shown.regions.length > 0 && shown.devices.length > 0);
      await phone.screenshot({ path: join(artifacts, "dashboard-phone-375x800.png"), fullPage: true });
    } finally {
      await phone.close();
    }
  });

  test("the banner appears when the server dies and clears when it is back", async () => {
    const before = await readPage();
    assert.equal(before.banner.visible, false);
    await server.kill();

    await page.waitForSelector(testid("error-banner"), { state: "visible", timeout: 10_000 });
    const down = await readPage();
    assert.equal(down.live.state, "error");
    assert.match(down.banner.text, /Can't reach the StreamPulse API/);
    // The last good figures stay on screen, with the time they are from.
    assert.equal(down.cards.downloads !== "—", true);
    await nextRound();
    assert.equal((await readPage()).live.updated, down.live.updated, "the last-update time moved while offline");
    await page.screenshot({ path: join(artifacts, "dashboard-offline-1280x900.png") });

    server = await waitFor("the server to restart on the same port", () => startServer(port), { timeoutMs: 30_000, everyMs: 500 });
    await page.waitForSelector(testid("error-banner"), { state: "hidden", timeout: 10_000 });
    await waitLive();
    await nextRound();
    const back = await readPage();
    assert.equal(back.live.state, "live");
    assert.notEqual(back.live.updated, down.live.updated);
    assert.equal(parseNumber(back.cards.downloads), received.get("realtime").total_downloads);
  });

  test("no uncaught errors in the page", () => {
    assert.deepEqual(pageErrors, []);
  });
});
