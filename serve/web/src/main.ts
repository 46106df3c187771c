// How the page stays fresh: by push when it can, by polling when it cannot.
//
//   EventSource /api/stream ──event per changed panel──▶ render ─▶ live indicator (data-mode="push")
//        │ error, 503, old server
//        ▼
//   timer ─▶ 7 × fetch (in parallel) ─▶ render each success ─▶ banner + live indicator (data-mode="poll")
//        └── meanwhile the stream is tried again; once it opens, polling stops
//
// `?push=0` polls only; `?poll=ms` sets the polling interval; `?trending=rising` opens the
// trending panel on its rising list.

import "./style.css";
import { ApiError, ENDPOINTS, fetchEndpoint, STREAM, type Endpoint, type Responses } from "./api";
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
const pushWanted = new URLSearchParams(window.location.search).get("push") !== "0";
/** How long after a failed stream (503, an old server) the page tries it again, polling meanwhile. */
const STREAM_RETRY_MS = 5000;
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
const dashboard = new Dashboard(
  new URLSearchParams(window.location.search).get("trending") === "rising" ? "rising" : "top",
);

const every = pollMs % 1000 === 0 ? `${pollMs / 1000} s` : `${pollMs} ms`;
const pollInfo = byTestId("poll-info");

let lastSuccess: Date | null = null;
let rounds = 0;
/** How the page is fed right now: "push" while the stream is open, "poll" otherwise. */
let mode: "push" | "poll" = "poll";
let polling = false;
let pushed = 0;

function setMode(next: "push" | "poll"): void {
  mode = next;
  live.dataset.mode = next;
  pollInfo.textContent = next === "push" ? "Updated as the data changes (push)" : `Refreshing every ${every}`;
}

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
    liveLabel.textContent = mode === "push" ? "Live · push" : "Live · polling";
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

/** Polls until the stream opens. */
async function loop(): Promise<void> {
  if (mode === "push") {
    polling = false;
    return;
  }
  polling = true;
  try {
    await poll();
  } catch (e) {
    // Only a bug gets here; keep polling so the page recovers when the cause goes away.
    console.error("polling round failed", e);
  }
  window.setTimeout(() => void loop(), pollMs);
}

function startPolling(): void {
  setMode("poll");
  if (!polling) void loop();
}

/**
 * Opens the stream. While it is open the page does not poll. When it fails, the page polls;
 * EventSource retries by itself after a network error (sending Last-Event-ID, so the server sends
 * only what changed), and the page opens a new one after an HTTP error, which EventSource does
 * not retry, naming the last id in the URL.
 */
function openStream(lastEventId: string | null): void {
  const url = lastEventId ? `${STREAM}?last_event_id=${encodeURIComponent(lastEventId)}` : STREAM;
  const source = new EventSource(url);
  let lastId = lastEventId;
  source.onopen = () => {
    setMode("push");
    live.dataset.state = "live";
    liveLabel.textContent = "Live · push";
  };
  for (const endpoint of endpoints) {
    source.addEventListener(endpoint, (event: MessageEvent<string>) => {
      lastId = event.lastEventId || lastId;
      if (mode !== "push") setMode("push");
      try {
        dashboard.render(endpoint, JSON.parse(event.data) as Responses[typeof endpoint]);
        dashboard.setPanelState(endpoint, "ready");
      } catch (e) {
        console.error(`rendering ${endpoint}`, e);
        dashboard.setPanelState(endpoint, "stale");
        showStatus([new ApiError(endpoint, `${endpoint}: could not draw the pushed data`, false)]);
        return;
      }
      pushed += 1;
      live.dataset.pushed = String(pushed);
      lastSuccess = new Date();
      showStatus([]);
    });
  }
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      source.close();
      window.setTimeout(() => openStream(lastId), STREAM_RETRY_MS);
    }
    // Not live by push until the stream is open again: poll meanwhile (the rounds say whether
    // the server is reachable at all).
    if (mode === "push") {
      live.dataset.state = "connecting";
      liveLabel.textContent = "Reconnecting";
    }
    startPolling();
  };
}

setMode("poll");
if (pushWanted && typeof EventSource === "function") {
  openStream(null);
} else {
  void loop();
}
