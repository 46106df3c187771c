// The JSON API served by `streampulse run` (serve/src/api.rs): response shapes and a fetch
// that turns every way a request can go wrong into one readable message.

export interface Realtime {
  total_downloads: number;
  unique_content: number;
  avg_success_rate: number;
  /** The API's health level for `avg_success_rate` (the thresholds live in the server alone). */
  health_status: HealthStatus;
  avg_download_time: number | null;
  successful_downloads: number;
  failed_downloads: number;
  total_size_gb: number;
  late_events: number;
  window_minutes: number;
  windows: number;
  as_of: string | null;
}

export interface TrendingItem {
  content_id: string;
  title: string;
  total_downloads: number;
  successful_downloads: number;
  failed_downloads: number;
  success_rate: number;
  total_size_gb: number;
}

/** A title of the rising list (`trending?by=rising`): its forecast made at the list's window. */
export interface RisingItem {
  rank: number;
  content_id: string;
  title: string;
  /** Downloads in the list's window (the last of `history`). */
  downloads: number;
  /** The forecast of the next window's downloads. */
  predicted_downloads: number;
  level: number;
  /** Downloads per window the smoothed trend adds. */
  trend: number;
  rising_score: number;
  /** Downloads in the forecast's windows, oldest first. */
  history: number[];
}

export interface Rising {
  by: "rising";
  count: number;
  data: RisingItem[];
  /** The window the list was made at: the newest settled one (null until one is). */
  window_start: string | null;
  window_end: string | null;
}

export type HealthStatus = "healthy" | "degraded" | "critical";

/** How a region's newest settled window compares with its own recent past. */
export type BaselineHealth = "normal" | "silent" | "low_traffic" | "high_traffic" | "high_errors" | "learning";

export interface RegionBaseline {
  window_start: string;
  health: BaselineHealth;
  mean_downloads: number;
  spread_downloads: number;
  baseline_error_rate: number;
  downloads: number;
  error_rate: number;
  traffic_score: number;
  error_score: number;
  windows: number;
}

export interface Region {
  region: string;
  downloads: number;
  successful: number;
  failed: number;
  success_rate: number;
  avg_speed: number;
  avg_duration_s: number;
  total_size_gb: number;
  health_status: HealthStatus;
  /** Null while the region has no baseline yet. */
  baseline: RegionBaseline | null;
}

export type Severity = "CRITICAL" | "WARNING" | "INFO";

export interface Alert {
  id: number;
  alert_type: string;
  severity: Severity;
  message: string;
  region: string;
  metric_name: string;
  metric_value: number;
  threshold_value: number;
  created_at: string;
  window_start: string;
  window_end: string;
  is_final: boolean;
  acknowledged: boolean;
  /** A baseline rule's baseline value (then equal to `threshold_value`); null for a fixed rule. */
  baseline_value: number | null;
  /** A baseline rule's score (spreads or standard errors from the baseline); null otherwise. */
  score: number | null;
}

export interface Minute {
  window_start: string;
  total_downloads: number;
  successful_downloads: number;
  success_rate: number;
  unique_content: number;
  late_events: number;
  is_final: boolean;
  /** Changed after it was final: an idle partition delivered on-time events late. */
  revised: boolean;
}

export interface Device {
  device: string;
  total_downloads: number;
  successful_downloads: number;
  success_rate: number;
  avg_speed: number;
}

export interface List<T> {
  count: number;
  data: T[];
}

export interface Alerts extends List<Alert> {
  unacknowledged_count: number;
}

export interface Timeseries extends List<Minute> {
  start_time: string | null;
  end_time: string | null;
}

/** What one polling round asks for. Paths are relative, so the page works under any prefix. */
export const ENDPOINTS = {
  realtime: "api/stats/realtime?minutes=5",
  alerts: "api/stats/alerts?limit=10",
  trending: "api/stats/trending?minutes=5&limit=10",
  regions: "api/stats/regions?minutes=5",
  timeseries: "api/stats/timeseries?minutes=60",
  devices: "api/stats/devices?minutes=5&limit=10",
  /** The trending panel's second list: the titles whose forecast rises most. */
  rising: "api/stats/trending?by=rising&limit=10",
} as const;

export type Endpoint = keyof typeof ENDPOINTS;

/**
 * The push stream (server-sent events): one event per changed panel, named as in ENDPOINTS, whose
 * data is the body that endpoint returns for the same query.
 */
export const STREAM = "api/stream";

export interface Responses {
  realtime: Realtime;
  alerts: Alerts;
  trending: List<TrendingItem>;
  regions: List<Region>;
  timeseries: Timeseries;
  devices: List<Device>;
  rising: Rising;
}

/** A failed request, with a message fit for the error banner. */
export class ApiError extends Error {
  constructor(
    readonly endpoint: Endpoint,
    message: string,
    readonly unreachable: boolean,
  ) {
    super(message);
  }
}

export async function fetchEndpoint<E extends Endpoint>(
  endpoint: E,
  timeoutMs: number,
): Promise<Responses[E]> {
  let response: Response;
  try {
    response = await fetch(ENDPOINTS[endpoint], {
      headers: { Accept: "application/json" },
      cache: "no-store",
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    const why = e instanceof DOMException && e.name === "TimeoutError" ? "timed out" : "network error";
    throw new ApiError(endpoint, `${endpoint}: ${why}`, true);
  }
  let body: unknown;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(endpoint, `${endpoint}: HTTP ${response.status}, not JSON`, false);
  }
  if (!response.ok) {
    const detail = isRecord(body) && typeof body.detail === "string" ? ` ${body.detail}` : "";
    throw new ApiError(endpoint, `${endpoint}: HTTP ${response.status}${detail}`, false);
  }
  // A list endpoint always has `data`; checking it here turns a changed API into a banner
  // message rather than a half-drawn panel.
  if (!isRecord(body) || (endpoint !== "realtime" && !Array.isArray(body.data))) {
    throw new ApiError(endpoint, `${endpoint}: unexpected response shape`, false);
  }
  return body as unknown as Responses[E];
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null;
}
