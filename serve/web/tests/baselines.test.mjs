// The dashboard's baseline badges and rising list, on real data: the streampulse binary with the
// generator's `region-silent` scenario (US-NewYork sends nothing from minute 15 to 25 after the
// start) and its `viral-title` scenario (mus_0152, "Pop #153", doubles every minute from minute
// 15), each started 23 minutes in the past (`--backfill 23`) so that the fault is under way as
// soon as the backlog is read. Then the newest settled window is the 21st or 22nd: the silent
// region has had no events for the whole 5 minutes the regions panel covers, so only its
// baseline keeps it on the page, and the viral title leads the rising list. Expected values come
// from the API, never from here. Both the polling page (`?push=0`) and the pushed one are checked.
//
// Why 23 minutes, and why the server starts at second 15 or later of a minute: windows are aligned
// to the clock's minutes, the backfilled stream (and so its scenario) to the second it starts. So
// the stream's first window and the window in which the silence begins are partial, and a baseline
// counts every window in which the region had events, however few. A nearly empty window in the
// trail widens its spread enough to pull a silent region's traffic score above −4 (silence is still
// flagged: it is judged against the mean alone). From the 21st window on the first window has left
// the 20-window trail; starting at second 15 or later leaves at least a quarter of a window of
// traffic before the silence.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { api, artifacts, freePort, launchBrowser, parseNumber, startServer, waitFor } from "./support.mjs";

const POLL_MS = 1000;
const BACKFILL = ["--backfill", "23"];
const SILENT = "US-NewYork";
const VIRAL = "mus_0152";

const testid = (id) => `[data-testid="${id}"]`;

let browser;
const pageErrors = [];

async function openPage(base, query) {
  const page = await browser.context.newPage();
  page.on("pageerror", (e) => pageErrors.push(e.message));
  await page.goto(`${base}/${query}`);
  await waitFor("the live indicator to say live", async () => {
    return (await page.getAttribute(testid("live-indicator"), "data-state")) === "live";
  }, { timeoutMs: 20_000 });
  return page;
}

/** The region tiles as the page shows them. */
function readRegions(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('[data-testid="region-tile"]')].map((tile) => {
      const badge = tile.querySelector('[data-testid="region-baseline"]');
      const pill = tile.querySelector('[data-testid="region-status"]');
      return {
        region: tile.dataset.region,
        status: pill.textContent.trim(),
        baseline: badge.dataset.baseline,
        label: badge.textContent.trim(),
        detail: badge.title,
        meta: tile.querySelector(".region-meta").textContent.trim(),
        badgeVisible: badge.getClientRects().length > 0,
        badgeBackground: getComputedStyle(badge).backgroundColor,
        badgeBorder: getComputedStyle(badge).borderTopColor,
        pillBackground: getComputedStyle(pill).backgroundColor,
        tileShadow: getComputedStyle(tile).boxShadow,
      };
    }),
  );
}

/** The rising list as the page shows it, and which of the trending panel's lists is visible. */
function readRising(page) {
  return page.evaluate(() => {
    const visible = (node) => !!node && node.getClientRects().length > 0;
    const q = (id) => document.querySelector(`[data-testid="${id}"]`);
    return {
      view: q("panel-trending").dataset.view,
      risingVisible: visible(q("rising-list")) || visible(q("rising-empty")),
      chartVisible: visible(q("trending-chart")),
      window: q("rising-window").textContent.trim(),
      items: [...document.querySelectorAll('[data-testid="rising-item"]')].map((li) => ({
        contentId: li.dataset.contentId,
        rank: Number(li.dataset.rank),
        score: Number(li.dataset.score),
        predicted: Number(li.dataset.predicted),
        downloads: Number(li.dataset.downloads),
        title: li.querySelector('[data-testid="rising-title"]').textContent.trim(),
        forecast: li.querySelector('[data-testid="rising-forecast"]').textContent.trim(),
        scoreText: li.querySelector('[data-testid="rising-score"]').textContent.trim(),
        sparkline: li.querySelectorAll(".sparkline polyline, .sparkline line").length,
      })),
    };
  });
}

/** Waits, if need be, until the clock is at second 15 or later of its minute (see the top). */
async function awayFromTheMinutesStart() {
  const second = new Date().getSeconds() + new Date().getMilliseconds() / 1000;
  if (second < 15) await sleep((15.5 - second) * 1000);
}

/** What the page should show for a region: its API baseline's health, or "none". */
const expectedBadge = (region) => region.baseline?.health ?? "none";

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

describe("a silent region against its baseline", { timeout: 180_000 }, () => {
  let server;

  before(async () => {
    await awayFromTheMinutesStart();
    server = await startServer(await freePort(), BACKFILL, { scenario: "region-silent" });
    // Silent against its baseline, and the backlog read: the 5 newest minutes are all silent ones
    // (the first silent window is flagged as soon as it settles, while the backlog still streams).
    await waitFor(`${SILENT} silent for 5 minutes and against its baseline in /api/stats/regions`, async () => {
      const regions = await api(server.base, "api/stats/regions?minutes=5");
      const silent = regions.data.find((r) => r.region === SILENT);
      return silent?.downloads === 0 && silent?.baseline?.health === "silent";
    }, { timeoutMs: 60_000, everyMs: 500 });
  });

  after(async () => {
    await server?.kill();
  });

  test("the API lists the silent region from its baseline alone", async () => {
    const regions = await api(server.base, "api/stats/regions?minutes=5");
    const silent = regions.data.find((r) => r.region === SILENT);
    assert.equal(silent.downloads, 0, "no events for the whole period");
    assert.equal(silent.health_status, "critical");
    assert.equal(silent.baseline.downloads, 0);
    assert.ok(silent.baseline.mean_downloads > 100, JSON.stringify(silent.baseline));
    // Silence is judged against the mean alone (at least 16), whatever the trail's spread.
    assert.ok(silent.baseline.traffic_score < 0, JSON.stringify(silent.baseline));
    assert.equal(regions.data.at(-1).region, SILENT, "zero downloads: listed last");
    const others = regions.data.filter((r) => r.region !== SILENT);
    assert.ok(others.length >= 8 && others.every((r) => r.baseline?.health !== "silent"), JSON.stringify(others));
  });

  for (const [mode, query] of [
    ["polling", `?push=0&poll=${POLL_MS}`],
    ["push", ""],
  ]) {
    test(`by ${mode}, every region shows its baseline badge beside its fixed health`, async () => {
      const page = await openPage(server.base, query);
      try {
        if (mode === "push") {
          assert.equal(await page.getAttribute(testid("live-indicator"), "data-mode"), "push");
        }
        // The badges change at most once a window; the page and a fetch agree within a few tries.
        let last;
        await waitFor("the page's badges to match /api/stats/regions", async () => {
          const [shown, regions] = await Promise.all([readRegions(page), api(server.base, "api/stats/regions?minutes=5")]);
          last = { shown: shown.map((t) => [t.region, t.baseline]), api: regions.data.map((r) => [r.region, expectedBadge(r)]) };
          return JSON.stringify(last.shown) === JSON.stringify(last.api);
        }, { timeoutMs: 10_000, everyMs: 300 }).catch((e) => {
          throw new Error(`${e.message}: ${JSON.stringify(last)}`);
        });

        const shown = await readRegions(page);
        const silent = shown.find((t) => t.region === SILENT);
        assert.ok(silent, `no tile for ${SILENT}`);
        assert.equal(silent.baseline, "silent");
        assert.equal(silent.label.toLowerCase(), "silent");
        assert.equal(silent.status, "critical", "the fixed health stays as it was");
        assert.match(silent.meta, /^0 downloads/);
        assert.match(silent.detail, /0 downloads against [\d,]+ ± [\d,]+ per window/);
        assert.ok(silent.badgeVisible, "the badge is on screen");

        const normal = shown.find((t) => t.baseline === "normal");
        assert.ok(normal, `no region reads normal: ${JSON.stringify(shown)}`);
        assert.equal(normal.label, "normal");
        // Visually distinct: the silent badge is filled, the normal one outlined in another colour,
        // neither looks like the fixed health pill, and the silent tile is outlined.
        assert.notEqual(silent.badgeBackground, normal.badgeBackground);
        assert.notEqual(silent.badgeBorder, normal.badgeBorder);
        assert.notEqual(silent.badgeBackground, silent.pillBackground);
        assert.notEqual(silent.tileShadow, "none");
        assert.equal(normal.tileShadow, "none");
        for (const tile of shown) {
          assert.ok(tile.badgeVisible, `${tile.region}: no badge`);
          assert.equal(tile.label.length > 0, true);
        }

        // The baseline rule's alert shows the baseline it was judged against.
        const alerts = await page.evaluate(() =>
          [...document.querySelectorAll('[data-testid="alert-item"]')].map((li) => ({
            message: li.querySelector('[data-testid="alert-message"]').textContent,
            meta: li.querySelector(".alert-meta").textContent,
          })),
        );
        const below = alerts.find((a) => a.message.startsWith(`${SILENT} is silent`));
        assert.ok(below, `no silent alert among ${JSON.stringify(alerts)}`);
        assert.match(below.meta, /Downloads 0 \(baseline [\d,]+ · score −\d/);

        await page.screenshot({ path: join(artifacts, `baselines-silent-${mode}.png`), fullPage: true });
      } finally {
        await page.close();
      }
    });
  }

  test("at phone width the badges fit", async () => {
    const page = await browser.context.newPage();
    page.on("pageerror", (e) => pageErrors.push(e.message));
    try {
      await page.setViewportSize({ width: 375, height: 800 });
      await page.goto(`${server.base}/?push=0&poll=${POLL_MS}&trending=rising`);
      await page.waitForSelector(`${testid("region-tile")}[data-baseline="silent"]`, { timeout: 20_000 });
      const wide = await page.evaluate(() => {
        const width = document.documentElement.clientWidth;
        return [...document.querySelectorAll("body *")]
          .filter((n) => n.getClientRects().length > 0 && !n.closest("canvas"))
          .filter((n) => {
            const r = n.getBoundingClientRect();
            return r.right > width + 0.5 || r.left < -0.5;
          })
          .map((n) => `${n.tagName.toLowerCase()}.${n.className?.baseVal ?? n.className}`);
      });
      assert.deepEqual(wide, [], "elements stick out of the viewport");
      await page.screenshot({ path: join(artifacts, "baselines-phone-375x800.png"), fullPage: true });
    } finally {
      await page.close();
    }
  });
});

describe("the rising list", { timeout: 180_000 }, () => {
  let server;

  before(async () => {
    server = await startServer(await freePort(), BACKFILL, { scenario: "viral-title" });
    await waitFor(`${VIRAL} at the top of the rising list`, async () => {
      const rising = await api(server.base, "api/stats/trending?by=rising&limit=10");
      return rising.data[0]?.content_id === VIRAL;
    }, { timeoutMs: 60_000, everyMs: 500 });
  });

  after(async () => {
    await server?.kill();
  });

  /** Waits until the page's rising list is the API's (both change once a window). */
  async function agreesWithApi(page) {
    let last;
    await waitFor("the page's rising list to match the API", async () => {
      const [shown, rising] = await Promise.all([readRising(page), api(server.base, "api/stats/trending?by=rising&limit=10")]);
      last = { shown: shown.items, api: rising.data };
      return (
        rising.data.length > 0 &&
        JSON.stringify(shown.items.map((i) => [i.contentId, i.rank, i.score, i.predicted, i.downloads])) ===
          JSON.stringify(rising.data.map((t) => [t.content_id, t.rank, t.rising_score, t.predicted_downloads, t.downloads]))
      );
    }, { timeoutMs: 10_000, everyMs: 300 }).catch((e) => {
      throw new Error(`${e.message}: ${JSON.stringify(last)}`);
    });
    return readRising(page);
  }

  test("by polling: the toggle switches the trending panel to the rising list and back", async () => {
    const page = await openPage(server.base, `?push=0&poll=${POLL_MS}`);
    try {
      let shown = await readRising(page);
      assert.equal(shown.view, "top");
      assert.equal(shown.risingVisible, false);
      assert.equal(shown.chartVisible, true);
      assert.equal(await page.getAttribute(testid("trending-view-top"), "aria-pressed"), "true");

      await page.click(testid("trending-view-rising"));
      assert.equal(await page.getAttribute(testid("trending-view-rising"), "aria-pressed"), "true");
      assert.equal(await page.textContent(testid("trending-hint")), "forecast for the next window");
      shown = await agreesWithApi(page);
      assert.equal(shown.view, "rising");
      assert.equal(shown.risingVisible, true);
      assert.equal(shown.chartVisible, false);
      const [first] = shown.items;
      assert.equal(first.contentId, VIRAL);
      assert.equal(first.title, "Pop #153");
      assert.ok(first.score > 1, `rising score ${first.score}`);
      // Holt's forecast lags a doubling series, so it may lie below the latest window; the score
      // says it lies far above the title's recent mean.
      assert.ok(first.predicted > 0);
      // "1,536 → 2,310 forecast · trend +…/window", "+12.3"
      assert.equal(parseNumber(first.forecast), first.downloads);
      assert.match(first.forecast, new RegExp(`→ ${Math.round(first.predicted).toLocaleString("en-US")} forecast`));
      assert.ok(Math.abs(parseNumber(first.scoreText) - first.score) <= 0.051, `${first.scoreText} for ${first.score}`);
      assert.ok(first.scoreText.startsWith("+"));
      assert.equal(first.sparkline, 2, "the history line and the forecast step");
      assert.match(shown.window, /^Made at the end of \d\d:\d\d–\d\d:\d\d/);
      await page.screenshot({ path: join(artifacts, "baselines-rising-polling.png"), fullPage: true });

      await page.click(testid("trending-view-top"));
      shown = await readRising(page);
      assert.equal(shown.view, "top");
      assert.equal(shown.chartVisible, true);
      assert.equal(shown.risingVisible, false);
    } finally {
      await page.close();
    }
  });

  test("by push: ?trending=rising opens on the rising list, fed by the stream's rising events", async () => {
    const page = await openPage(server.base, "?trending=rising");
    try {
      assert.equal(await page.getAttribute(testid("live-indicator"), "data-mode"), "push");
      const shown = await agreesWithApi(page);
      assert.equal(shown.view, "rising");
      assert.equal(shown.items[0].contentId, VIRAL);
      // The page polled nothing: the list came with the stream.
      const polled = await page.evaluate(() =>
        performance.getEntriesByType("resource").filter((e) => e.name.includes("/api/stats/")).length,
      );
      assert.equal(polled, 0);
      await page.screenshot({ path: join(artifacts, "baselines-rising-push.png"), fullPage: true });
    } finally {
      await page.close();
    }
  });
});

test("no uncaught errors in the pages", () => {
  assert.deepEqual(pageErrors, []);
});
