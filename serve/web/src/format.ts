// Number and time formatting, fixed to one locale so figures read the same everywhere.

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
const oneDecimal = new Intl.NumberFormat("en-US", {
  minimumFractionDigits: 1,
  maximumFractionDigits: 1,
});
const clock = new Intl.DateTimeFormat("en-GB", {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});
const hourMinute = new Intl.DateTimeFormat("en-GB", {
  hour: "2-digit",
  minute: "2-digit",
  hour12: false,
});

export const formatInt = (n: number): string => integer.format(n);
export const formatCompact = (n: number): string => compact.format(n);
export const formatDecimal = (n: number): string => oneDecimal.format(n);

/** A 0–1 fraction as a percentage with one decimal: 0.907 → "90.7%". */
export const formatPercent = (fraction: number): string => `${(fraction * 100).toFixed(1)}%`;

export const formatClock = (d: Date): string => clock.format(d);
export const formatHourMinute = (d: Date): string => hourMinute.format(d);

/** 468.3 → "7 min 48 s"; 42 → "42 s"; 3725 → "1 h 2 min". */
export function formatDuration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** "HIGH_ERROR_RATE" → "High error rate", keeping "CDN" as it is. */
export function humanize(constant: string): string {
  const words = constant.toLowerCase().split("_");
  return words
    .map((w, i) => (w === "cdn" ? "CDN" : i === 0 ? w.charAt(0).toUpperCase() + w.slice(1) : w))
    .join(" ");
}
