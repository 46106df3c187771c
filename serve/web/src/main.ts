// The polling loop: every `poll` milliseconds ask every endpoint, draw what came back, and
// tell the reader, through the live indicator and the error banner, how fresh the page is.
//
//   timer ─▶ 6 × fetch (in parallel) ─▶ render each success ─▶ banner + live indicator ─▶ timer

import "./style.css";
import { ApiError, ENDPOINTS, fetchEndpoint, type Endpoint } from "./api";
import { formatClock } from "./format";
import { Dashboard } from "./render";

/** How often the page polls, unless the URL says otherwise (`/?poll=5000`). */
const DEFAULT_POLL_MS = 2000;
const MIN_POLL_MS = 250;
const MAX_POLL_MS = 60_000;

function pollInterval(): number {
  const raw = new URLSearchParams(window.location.search).get("poll");
  const ms = raw === null ? Number.NaN : Number(raw);
  if (!Number.isFinite(ms)) return DEFAULT_POLL_MS;
  return Math.round(Math.min(MAX_POLL_MS, Math.max(MIN_POLL_MS, ms)));
}

const pollMs = pollInterval();
// Long enough for a busy server, short enough that a hung one is reported within a few polls.
const timeoutMs = Math.min(10_000, Math.max(4000, pollMs * 2));
const endpoints = Object.keys(ENDPOINTS) as Endpoint[];

const byTestId = (id: string): HTMLElement => {
  const node = document.querySelector<HTMLElement>(`[data-testid="${id}"]`);
  if (!node) throw new Error(`index.html has no element with data-testid="${id}"`);
  return node;
};

const live = byTestId("live-indicator");
const liveLabel = byTestId("live-label");
const lastUpdated = byTestId("last-updated") as HTMLTimeElement;
const banner = byTestId("error-banner");
const bannerTitle = byTestId("error-title");
const bannerDetail = byTestId("error-detail");
const dashboard = new Dashboard();

const every = pollMs % 1000 === 0 ? `${pollMs / 1000} s` : `${pollMs} ms`;
byTestId("poll-info").textContent = `Refreshing every ${every}`;

let lastSuccess: Date | null = null;
let rounds = 0;

async function poll(): Promise<void> {
  const results = await Promise.allSettled(endpoints.map((e) => fetchEndpoint(e, timeoutMs)));
  const errors: ApiError[] = [];
  results.forEach((result, i) => {
    const endpoint = endpoints[i]!;
    if (result.status === "fulfilled") {
      try {
        dashboard.render(endpoint, result.value);
        dashboard.setPanelState(endpoint, "ready");
        return;
      } catch (e) {
        console.error(`rendering ${endpoint}`, e);
        errors.push(new ApiError(endpoint, `${endpoint}: could not draw the response`, false));
      }
    } else {
      const reason: unknown = result.reason;
      errors.push(reason instanceof ApiError ? reason : new ApiError(endpoint, `${endpoint}: ${String(reason)}`, true));
    }
    dashboard.setPanelState(endpoint, "stale");
  });
  rounds += 1;
  if (errors.length === 0) lastSuccess = new Date();
  showStatus(errors);
}

function showStatus(errors: ApiError[]): void {
  live.dataset.rounds = String(rounds);
  document.body.classList.toggle("is-stale", errors.length > 0);
  if (lastSuccess) {
    lastUpdated.textContent = formatClock(lastSuccess);
    lastUpdated.dateTime = lastSuccess.toISOString();
    live.dataset.updated = lastSuccess.toISOString();
  }
  if (errors.length === 0) {
    live.dataset.state = "live";
    liveLabel.textContent = "Live";
    banner.hidden = true;
    return;
  }
  const unreachable = errors.every((e) => e.unreachable) && errors.length === endpoints.length;
  live.dataset.state = "error";
  liveLabel.textContent = unreachable ? "Offline" : "Degraded";
  const since = lastSuccess ? `Showing data from ${formatClock(lastSuccess)}.` : "No data received yet.";
  bannerTitle.textContent = unreachable
    ? "Can't reach the StreamPulse API."
    : `${errors.length} of ${endpoints.length} API requests failed.`;
  bannerDetail.textContent = unreachable
    ? ` ${since} Retrying every ${every}.`
    : ` ${errors.map((e) => e.message).join("; ")}. ${since} Retrying every ${every}.`;
  banner.hidden = false;
}

async function loop(): Promise<void> {
  try {
    await poll();
  } catch (e) {
    // Only a bug gets here; keep polling so the page recovers when the cause goes away.
    console.error("polling round failed", e);
  }
  window.setTimeout(() => void loop(), pollMs);
}

void loop();
