// Draws each API response into its panel. Every renderer replaces what its panel showed, so a
// panel always shows exactly one response. Text from the API goes in through textContent only.

import type {
  Alert,
  Alerts,
  BaselineHealth,
  Device,
  List,
  Realtime,
  Region,
  RegionBaseline,
  Responses,
  Rising,
  RisingItem,
  Timeseries,
  TrendingItem,
} from "./api";
import {
  alpha,
  colors,
  devicesChart,
  palette,
  timeseriesChart,
  trendingChart,
  type BarChart,
  type DoughnutChart,
} from "./charts";
import {
  formatCompact,
  formatDecimal,
  formatDuration,
  formatHourMinute,
  formatInt,
  formatPercent,
  humanize,
} from "./format";

type Props = {
  class?: string;
  text?: string;
  testid?: string;
  data?: Record<string, string | number>;
  title?: string;
};

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Props = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (props.class) node.className = props.class;
  if (props.text !== undefined) node.textContent = props.text;
  if (props.testid) node.dataset.testid = props.testid;
  if (props.title) node.title = props.title;
  for (const [k, v] of Object.entries(props.data ?? {})) node.dataset[k] = String(v);
  node.append(...children);
  return node;
}

function byTestId<T extends HTMLElement = HTMLElement>(id: string): T {
  const node = document.querySelector<T>(`[data-testid="${id}"]`);
  if (!node) throw new Error(`index.html has no element with data-testid="${id}"`);
  return node;
}

/** Screen-reader (and test) text for a chart: the numbers it draws, as a list inside the canvas. */
function setFallback(canvas: HTMLCanvasElement, testid: string, items: HTMLLIElement[]): void {
  canvas.replaceChildren(el("ul", { testid }, ...items));
}

function setCard(name: string, value: string, raw: number | null, sub: string): void {
  const valueNode = byTestId(`card-${name}-value`);
  valueNode.textContent = value;
  valueNode.dataset.value = raw === null ? "" : String(raw);
  byTestId(`card-${name}-sub`).textContent = sub;
}

function formatMetric(name: string, value: number): string {
  if (name.endsWith("_rate")) return formatPercent(value);
  if (name.endsWith("_mbps")) return `${formatDecimal(value)} Mbps`;
  if (name === "downloads") return formatInt(Math.round(value));
  return String(value);
}

/** A score with its sign: +2.8, −14.1. */
function formatScore(score: number): string {
  const text = formatDecimal(Math.abs(score));
  return score < 0 && text !== "0.0" ? `−${text}` : `+${text}`;
}

/** The panel each endpoint feeds. */
export const PANELS: Record<keyof Responses, string> = {
  realtime: "panel-cards",
  alerts: "panel-alerts",
  trending: "panel-trending",
  regions: "panel-regions",
  timeseries: "panel-timeseries",
  devices: "panel-devices",
  rising: "panel-trending",
};

/** Which list the trending panel shows: the most downloaded titles, or the rising ones. */
export type TrendingView = "top" | "rising";

const TRENDING_HINTS: Record<TrendingView, string> = {
  top: "top 10 · last 5 min",
  rising: "forecast for the next window",
};

export class Dashboard {
  private trendingRates: number[] = [];
  private minuteTotals: (number | null)[] = [];
  private readonly trending: BarChart;
  private readonly timeseries: BarChart;
  private readonly devices: DoughnutChart;

  constructor(trendingView: TrendingView = "top") {
    this.trending = trendingChart(byTestId("trending-chart"), () => this.trendingRates);
    this.timeseries = timeseriesChart(byTestId("timeseries-chart"), () => this.minuteTotals);
    this.devices = devicesChart(byTestId("devices-chart"));
    for (const view of ["top", "rising"] as const) {
      byTestId(`trending-view-${view}`).addEventListener("click", () => this.showTrending(view));
    }
    this.showTrending(trendingView);
  }

  /** Switches the trending panel between its two lists (both stay up to date). */
  showTrending(view: TrendingView): void {
    byTestId("panel-trending").dataset.view = view;
    byTestId("trending-top").hidden = view !== "top";
    byTestId("trending-rising").hidden = view !== "rising";
    byTestId("trending-hint").textContent = TRENDING_HINTS[view];
    for (const option of ["top", "rising"] as const) {
      byTestId(`trending-view-${option}`).setAttribute("aria-pressed", String(option === view));
    }
  }

  render<E extends keyof Responses>(endpoint: E, response: Responses[E]): void {
    const renderers: { [K in keyof Responses]: (r: Responses[K]) => void } = {
      realtime: (r) => this.renderRealtime(r),
      alerts: (r) => this.renderAlerts(r),
      trending: (r) => this.renderTrending(r),
      regions: (r) => this.renderRegions(r),
      timeseries: (r) => this.renderTimeseries(r),
      devices: (r) => this.renderDevices(r),
      rising: (r) => this.renderRising(r),
    };
    renderers[endpoint](response);
  }

  /** Marks a panel fresh or stale (its last request failed; it keeps the last data it had). */
  setPanelState(endpoint: keyof Responses, state: "ready" | "stale"): void {
    byTestId(PANELS[endpoint]).dataset.state = state;
  }

  private renderRealtime(r: Realtime): void {
    setCard(
      "downloads",
      formatInt(r.total_downloads),
      r.total_downloads,
      `${formatInt(r.successful_downloads)} ok · ${formatInt(r.failed_downloads)} failed · ${r.window_minutes} min`,
    );
    setCard(
      "unique-content",
      formatInt(r.unique_content),
      r.unique_content,
      `titles · ${formatCompact(r.total_size_gb)} GB transferred`,
    );
    const health = r.health_status;
    setCard("success-rate", formatPercent(r.avg_success_rate), r.avg_success_rate, `${health} · target ≥ 95%`);
    byTestId("card-success-rate").dataset.status = r.total_downloads > 0 ? health : "";
    const t = r.avg_download_time;
    setCard(
      "avg-download-time",
      t === null ? "—" : `${formatDecimal(t)} s`,
      t,
      t === null ? "no downloads yet" : `≈ ${formatDuration(t)} per download`,
    );
  }

  private renderAlerts(r: Alerts): void {
    byTestId("alerts-count").textContent = formatInt(r.unacknowledged_count);
    byTestId("panel-alerts").dataset.active = String(r.unacknowledged_count > 0);
    const list = byTestId("alerts-list");
    list.replaceChildren(...r.data.map(alertItem));
    list.hidden = r.data.length === 0;
    byTestId("alerts-empty").hidden = r.data.length > 0;
  }

  private renderTrending(r: List<TrendingItem>): void {
    const items = r.data;
    this.trendingRates = items.map((t) => t.success_rate);
    this.trending.data.labels = items.map((t) => t.title);
    const dataset = this.trending.data.datasets[0]!;
    dataset.data = items.map((t) => t.total_downloads);
    dataset.backgroundColor = items.map((_, i) => alpha(colors.accent, Math.max(0.35, 1 - i * 0.07)));
    this.trending.update();
    setFallback(
      this.trending.canvas,
      "trending-list",
      items.map((t, i) =>
        el("li", {
          text: `${i + 1}. ${t.title}: ${formatInt(t.total_downloads)} downloads`,
          data: { title: t.title, downloads: t.total_downloads },
        }),
      ),
    );
    byTestId("trending-empty").hidden = items.length > 0;
  }

  private renderRising(r: Rising): void {
    byTestId("rising-list").replaceChildren(...r.data.map(risingItem));
    byTestId("rising-empty").hidden = r.data.length > 0;
    const start = r.window_start === null ? null : new Date(r.window_start);
    const end = r.window_end === null ? null : new Date(r.window_end);
    byTestId("rising-window").textContent =
      start && end
        ? `Made at the end of ${formatHourMinute(start)}–${formatHourMinute(end)}, the newest settled window`
        : "";
  }

  private renderRegions(r: List<Region>): void {
    byTestId("regions-list").replaceChildren(...r.data.map(regionTile));
    byTestId("regions-empty").hidden = r.data.length > 0;
  }

  private renderTimeseries(r: Timeseries): void {
    const slots = minuteSlots(r);
    this.minuteTotals = slots.map((s) => s.minute?.total_downloads ?? null);
    this.timeseries.data.labels = slots.map((s) => formatHourMinute(s.start));
    const [ok, rest] = this.timeseries.data.datasets;
    // A window that is still open is drawn paler: its count is still growing.
    const shade = (c: string, s: Slot) => alpha(c, s.minute?.is_final === false ? 0.4 : 0.9);
    ok!.data = slots.map((s) => s.minute?.successful_downloads ?? 0);
    ok!.backgroundColor = slots.map((s) => shade(colors.accent, s));
    rest!.data = slots.map((s) => (s.minute ? s.minute.total_downloads - s.minute.successful_downloads : 0));
    rest!.backgroundColor = slots.map((s) => shade(colors.bad, s));
    this.timeseries.update();

    setFallback(
      this.timeseries.canvas,
      "timeseries-list",
      r.data.map((m) =>
        el("li", {
          text: `${formatHourMinute(new Date(m.window_start))}: ${formatInt(m.total_downloads)} downloads`,
          data: { start: m.window_start, downloads: m.total_downloads },
        }),
      ),
    );
    const finals = r.data.filter((m) => m.is_final);
    const latest = finals[finals.length - 1];
    const peak = r.data.reduce((max, m) => Math.max(max, m.total_downloads), 0);
    byTestId("timeseries-summary").replaceChildren(
      summaryItem("Last full minute", latest ? formatInt(latest.total_downloads) : "—"),
      summaryItem("Peak", r.data.length ? formatInt(peak) : "—", { testid: "timeseries-peak", value: peak }),
      summaryItem("Minutes", formatInt(r.data.length), { testid: "timeseries-count", value: r.data.length }),
    );
  }

  private renderDevices(r: List<Device>): void {
    const total = r.data.reduce((sum, d) => sum + d.total_downloads, 0);
    this.devices.data.labels = r.data.map((d) => d.device);
    this.devices.data.datasets[0]!.data = r.data.map((d) => d.total_downloads);
    this.devices.update();
    byTestId("devices-list").replaceChildren(
      ...r.data.map((d, i) => deviceRow(d, palette[i % palette.length]!, total)),
    );
    byTestId("devices-empty").hidden = r.data.length > 0;
  }
}

function summaryItem(label: string, value: string, test?: { testid: string; value: number }): HTMLElement {
  const strong = el("strong", { text: value });
  if (test) {
    strong.dataset.testid = test.testid;
    strong.dataset.value = String(test.value);
  }
  return el("span", { class: "summary-item" }, `${label} `, strong);
}

function alertItem(a: Alert): HTMLLIElement {
  const start = new Date(a.window_start);
  const end = new Date(a.window_end);
  const meta = [
    `${formatHourMinute(start)}–${formatHourMinute(end)}`,
    a.baseline_value === null || a.baseline_value === undefined
      ? `${humanize(a.metric_name)} ${formatMetric(a.metric_name, a.metric_value)} (limit ${formatMetric(a.metric_name, a.threshold_value)})`
      : `${humanize(a.metric_name)} ${formatMetric(a.metric_name, a.metric_value)} (baseline ${formatMetric(a.metric_name, a.baseline_value)}${a.score === null ? "" : ` · score ${formatScore(a.score)}`})`,
  ];
  if (!a.is_final) meta.push("window still open");
  return el(
    "li",
    { class: "alert", testid: "alert-item", data: { id: a.id, severity: a.severity } },
    el(
      "div",
      { class: "alert-top" },
      el("span", { class: "severity", text: a.severity, testid: "alert-severity" }),
      el("span", { class: "alert-type", text: humanize(a.alert_type) }),
      el("span", { class: "alert-region", text: a.region }),
    ),
    el("p", { class: "alert-message", text: a.message, testid: "alert-message" }),
    el("p", { class: "alert-meta", text: meta.join(" · ") }),
  );
}

const BASELINE_LABELS: Record<BaselineHealth, string> = {
  normal: "normal",
  silent: "silent",
  low_traffic: "low traffic",
  high_traffic: "high traffic",
  high_errors: "high errors",
  learning: "learning",
};

/** What the badge's tooltip says: the window's figures against the baseline's. */
function baselineDetail(b: RegionBaseline): string {
  const window = formatHourMinute(new Date(b.window_start));
  return [
    `Window ${window}: ${formatInt(b.downloads)} downloads against ${formatInt(Math.round(b.mean_downloads))} ± ${formatInt(Math.round(b.spread_downloads))} per window (score ${formatScore(b.traffic_score)})`,
    `errors ${formatPercent(b.error_rate)} against ${formatPercent(b.baseline_error_rate)} (score ${formatScore(b.error_score)})`,
    `baseline of ${b.windows} windows`,
  ].join("; ");
}

/** The "vs baseline" badge: how the region's newest settled window compares with its own past. */
function baselineBadge(b: RegionBaseline | null): HTMLElement {
  const health = b?.health ?? "none";
  return el(
    "p",
    { class: "region-baseline" },
    el("span", { class: "baseline-label", text: "vs baseline" }),
    el("span", {
      class: "baseline-badge",
      testid: "region-baseline",
      text: b ? BASELINE_LABELS[b.health] ?? b.health : "no baseline yet",
      data: { baseline: health },
      title: b ? baselineDetail(b) : "No settled window with a baseline for this region yet",
    }),
  );
}

function regionTile(r: Region): HTMLLIElement {
  const bar = el("span", { class: "rate-fill" });
  bar.style.width = `${Math.max(0, Math.min(100, r.success_rate * 100))}%`;
  const baseline = r.baseline ?? null;
  return el(
    "li",
    {
      class: "region",
      testid: "region-tile",
      data: { region: r.region, status: r.health_status, baseline: baseline?.health ?? "none" },
    },
    el("p", { class: "region-name", text: r.region, testid: "region-name", title: r.region }),
    el(
      "div",
      { class: "region-row" },
      el("span", { class: "region-rate", text: formatPercent(r.success_rate), testid: "region-rate" }),
      el("span", { class: "status-pill", text: r.health_status, testid: "region-status" }),
    ),
    el("span", { class: "rate-track" }, bar),
    el("p", {
      class: "region-meta",
      text: `${formatInt(r.downloads)} downloads · ${formatDecimal(r.avg_speed)} Mbps`,
    }),
    baselineBadge(baseline),
  );
}

const SVG = "http://www.w3.org/2000/svg";

/**
 * The title's recent windows as a small line, and a dashed step to the forecast: what the score
 * is made of, at a glance.
 */
function sparkline(history: number[], predicted: number): SVGSVGElement {
  const width = 72;
  const height = 22;
  const values = [...history, predicted];
  const max = Math.max(1, ...values);
  const x = (i: number) => (i / Math.max(1, values.length - 1)) * (width - 4) + 2;
  const y = (v: number) => height - 2 - (v / max) * (height - 4);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "sparkline");
  svg.setAttribute("aria-hidden", "true");
  const past = document.createElementNS(SVG, "polyline");
  past.setAttribute("points", history.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" "));
  past.setAttribute("class", "spark-past");
  const last = history.length - 1;
  const next = document.createElementNS(SVG, "line");
  next.setAttribute("x1", x(last).toFixed(1));
  next.setAttribute("y1", y(history[last] ?? 0).toFixed(1));
  next.setAttribute("x2", x(last + 1).toFixed(1));
  next.setAttribute("y2", y(predicted).toFixed(1));
  next.setAttribute("class", "spark-next");
  const dot = document.createElementNS(SVG, "circle");
  dot.setAttribute("cx", x(last + 1).toFixed(1));
  dot.setAttribute("cy", y(predicted).toFixed(1));
  dot.setAttribute("r", "2");
  dot.setAttribute("class", "spark-dot");
  svg.append(past, next, dot);
  return svg;
}

function risingItem(t: RisingItem): HTMLLIElement {
  const trend = t.trend >= 0 ? `+${formatDecimal(t.trend)}` : `−${formatDecimal(-t.trend)}`;
  return el(
    "li",
    {
      class: "rising-item",
      testid: "rising-item",
      data: {
        contentId: t.content_id,
        rank: t.rank,
        downloads: t.downloads,
        predicted: t.predicted_downloads,
        score: t.rising_score,
      },
    },
    el("span", { class: "rising-rank", text: String(t.rank) }),
    el(
      "div",
      { class: "rising-main" },
      el("p", { class: "rising-title", text: t.title, testid: "rising-title", title: `${t.title} (${t.content_id})` }),
      el("p", {
        class: "rising-meta",
        testid: "rising-forecast",
        text: `${formatInt(t.downloads)} → ${formatInt(Math.round(t.predicted_downloads))} forecast · trend ${trend}/window`,
      }),
    ),
    sparkline(t.history, t.predicted_downloads),
    el("span", {
      class: "rising-score",
      text: formatScore(t.rising_score),
      testid: "rising-score",
      title: "Rising score: (forecast − recent mean) / √(recent mean + 1)",
    }),
  );
}

function deviceRow(d: Device, color: string, total: number): HTMLLIElement {
  const swatch = el("span", { class: "swatch" });
  swatch.style.background = color;
  const share = total > 0 ? d.total_downloads / total : 0;
  return el(
    "li",
    { class: "device", testid: "device-row", data: { device: d.device, downloads: d.total_downloads } },
    swatch,
    el("span", { class: "device-name", text: d.device, testid: "device-name" }),
    el("span", { class: "device-count", text: formatInt(d.total_downloads), testid: "device-downloads" }),
    el("span", { class: "device-share", text: formatPercent(share) }),
  );
}

interface Slot {
  start: Date;
  minute: Responses["timeseries"]["data"][number] | undefined;
}

/**
 * One slot per window over the whole requested span, so the axis always shows the full hour
 * and a quiet minute shows as a gap rather than disappearing.
 */
function minuteSlots(r: Timeseries): Slot[] {
  const byStart = new Map(r.data.map((m) => [Date.parse(m.window_start), m]));
  const last = r.data[r.data.length - 1];
  if (!last || !r.start_time || !r.end_time) return [];
  const end = Date.parse(r.end_time);
  const start = Date.parse(r.start_time);
  const windowMs = end - Date.parse(last.window_start);
  if (!(windowMs > 0) || end <= start) {
    return r.data.map((m) => ({ start: new Date(m.window_start), minute: m }));
  }
  const slots: Slot[] = [];
  for (let t = start; t < end; t += windowMs) slots.push({ start: new Date(t), minute: byStart.get(t) });
  return slots;
}
