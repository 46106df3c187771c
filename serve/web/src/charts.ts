// The three Chart.js charts. Only the pieces they use are registered, which keeps the bundle
// small. Charts are created once and updated in place on every poll, without animation, so a
// 2-second refresh does not make the page twitch.

import {
  ArcElement,
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  DoughnutController,
  Legend,
  LinearScale,
  Tooltip,
  type ChartConfiguration,
} from "chart.js";

Chart.register(
  ArcElement,
  BarController,
  BarElement,
  CategoryScale,
  DoughnutController,
  Legend,
  LinearScale,
  Tooltip,
);

const css = getComputedStyle(document.documentElement);
const token = (name: string, fallback: string): string => css.getPropertyValue(name).trim() || fallback;

export const colors = {
  accent: token("--accent", "#38bdf8"),
  bad: token("--bad", "#f43f5e"),
  muted: token("--muted", "#8a97ad"),
  grid: "rgba(148, 163, 184, 0.12)",
  panel: token("--panel", "#111a2e"),
};

/** Distinct hues for the device doughnut, readable on the dark panels. */
export const palette = [
  "#38bdf8",
  "#a78bfa",
  "#34d399",
  "#fbbf24",
  "#f472b6",
  "#60a5fa",
  "#fb923c",
  "#2dd4bf",
  "#c084fc",
  "#94a3b8",
];

Chart.defaults.color = colors.muted;
Chart.defaults.borderColor = colors.grid;
Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
Chart.defaults.font.size = 12;
Chart.defaults.maintainAspectRatio = false;
Chart.defaults.animation = false;
Chart.defaults.plugins.tooltip.backgroundColor = "rgba(2, 6, 23, 0.94)";
Chart.defaults.plugins.tooltip.borderColor = "rgba(148, 163, 184, 0.25)";
Chart.defaults.plugins.tooltip.borderWidth = 1;
Chart.defaults.plugins.tooltip.padding = 10;
Chart.defaults.plugins.tooltip.cornerRadius = 8;

/** `rgba()` of a `#rrggbb` colour. */
export function alpha(hex: string, a: number): string {
  const n = Number.parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
}

function truncate(label: string, max: number): string {
  return label.length > max ? `${label.slice(0, max - 1)}…` : label;
}

export type BarChart = Chart<"bar", number[], string>;
export type DoughnutChart = Chart<"doughnut", number[], string>;

/** Horizontal bars: the top titles by downloads. */
export function trendingChart(canvas: HTMLCanvasElement, rates: () => number[]): BarChart {
  const config: ChartConfiguration<"bar", number[], string> = {
    type: "bar",
    data: {
      labels: [],
      datasets: [
        {
          label: "Downloads",
          data: [],
          backgroundColor: [],
          borderRadius: 4,
          barPercentage: 0.78,
          categoryPercentage: 0.9,
        },
      ],
    },
    options: {
      indexAxis: "y",
      plugins: {
        legend: { display: false },
        tooltip: {
          callbacks: {
            label: (item) => {
              const rate = rates()[item.dataIndex];
              const pct = rate === undefined ? "" : ` · ${(rate * 100).toFixed(1)}% successful`;
              return ` ${item.formattedValue} downloads${pct}`;
            },
          },
        },
      },
      scales: {
        x: { beginAtZero: true, grid: { color: colors.grid }, ticks: { precision: 0, maxTicksLimit: 6 } },
        y: {
          grid: { display: false },
          ticks: {
            color: "#cbd5e1",
            autoSkip: false,
            callback(value) {
              const label = this.getLabelForValue(Number(value));
              return truncate(label, this.chart.width < 420 ? 16 : 26);
            },
          },
        },
      },
    },
  };
  return new Chart(canvas, config);
}

/** Stacked bars per minute: successful downloads below, the rest above. */
export function timeseriesChart(canvas: HTMLCanvasElement, totals: () => (number | null)[]): BarChart {
  const config: ChartConfiguration<"bar", number[], string> = {
    type: "bar",
    data: {
      labels: [],
      datasets: [
        { label: "Successful", data: [], backgroundColor: [], borderRadius: 2, stack: "d" },
        { label: "Not successful", data: [], backgroundColor: [], borderRadius: 2, stack: "d" },
      ],
    },
    options: {
      interaction: { mode: "index", intersect: false },
      plugins: {
        legend: {
          position: "top",
          align: "end",
          labels: { boxWidth: 10, boxHeight: 10, useBorderRadius: true, borderRadius: 2 },
        },
        tooltip: {
          callbacks: {
            footer: (items) => {
              const i = items[0]?.dataIndex;
              const total = i === undefined ? null : totals()[i];
              return total == null ? "" : `Total ${total.toLocaleString("en-US")}`;
            },
          },
        },
      },
      scales: {
        x: {
          stacked: true,
          grid: { display: false },
          ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 16 },
        },
        y: {
          stacked: true,
          beginAtZero: true,
          grid: { color: colors.grid },
          ticks: { precision: 0, maxTicksLimit: 6 },
        },
      },
    },
  };
  return new Chart(canvas, config);
}

/** A doughnut of downloads by device. */
export function devicesChart(canvas: HTMLCanvasElement): DoughnutChart {
  const config: ChartConfiguration<"doughnut", number[], string> = {
    type: "doughnut",
    data: {
      labels: [],
      datasets: [{ data: [], backgroundColor: palette, borderColor: colors.panel, borderWidth: 2 }],
    },
    options: {
      cutout: "62%",
      plugins: { legend: { display: false } },
    },
  };
  return new Chart(canvas, config);
}
