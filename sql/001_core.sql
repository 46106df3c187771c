-- 001_core.sql — the tables the sink writes, and their indexes.
--
-- Applied by `streampulse migrate` (and at start-up) inside one transaction, with `search_path` set to the
-- target schema. So: no BEGIN/COMMIT here, no schema-qualified names, and every statement must be a no-op
-- when the object already exists (the whole set is re-run on every start).
--
-- Conventions shared by every per-window table:
--   * window_start/window_end: the tumbling window [start, end), UTC timestamptz, aligned to the epoch.
--   * the "sums" (downloads ... cdn_timeouts) are the dataflow's additive aggregate, stored as integers
--     so the sink can add deltas with `col = t.col + excluded.col` and a restart can rebuild the open
--     windows exactly. Anything that is not a sum (rates, averages, GB) is a STORED generated column:
--     it is always consistent with the sums and the sink never has to write it.
--   * is_final: the watermark has passed window_end, so the row will not change again.
--   * updated_at: default covers the INSERT; the sink sets it to now() in its DO UPDATE.
--
-- Deliberately no foreign keys: the sink writes each table independently within a transaction and
-- analysts only read. Primary keys are the natural keys, window_start first, so "newest windows first"
-- is a backward scan of the primary key and needs no extra index.
--
-- fillfactor = 80 on tables whose rows are upserted many times while their window is open: the free
-- space lets PostgreSQL keep those updates HOT (same page, no index churn).

-- Re-runs are expected, so keep the "already exists, skipping" notices out of the app's log. LOCAL: the
-- setting ends with the migration's transaction.
SET LOCAL client_min_messages = warning;

------------------------------------------------------------------------------------------------------
-- Per-window aggregates
------------------------------------------------------------------------------------------------------

-- One row per (window, content). Title is part of the key because the events carry it and the old
-- pipeline grouped by it; a retitled content_id simply gets a second row.
CREATE TABLE IF NOT EXISTS content_stats (
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    content_id      text        NOT NULL,
    title           text        NOT NULL,

    downloads       bigint      NOT NULL DEFAULT 0,
    successful      bigint      NOT NULL DEFAULT 0,
    failed          bigint      NOT NULL DEFAULT 0,
    size_mb         bigint      NOT NULL DEFAULT 0,  -- sum of content size, MB
    duration_s      bigint      NOT NULL DEFAULT 0,  -- sum of download durations, seconds (all downloads)
    speed_milli     bigint      NOT NULL DEFAULT 0,  -- sum of speed over successful downloads, 1/1000 Mbps
    cdn_timeouts    bigint      NOT NULL DEFAULT 0,  -- failed downloads with error_code = 'cdn_timeout'

    success_rate    double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE successful::double precision / downloads::double precision END) STORED,
    failure_rate    double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE failed::double precision / downloads::double precision END) STORED,
    avg_speed_mbps  double precision GENERATED ALWAYS AS
        (CASE WHEN successful = 0 THEN NULL ELSE speed_milli::double precision / 1000.0::double precision / successful::double precision END) STORED,
    avg_duration_s  double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE duration_s::double precision / downloads::double precision END) STORED,
    total_size_gb   double precision GENERATED ALWAYS AS
        (size_mb::double precision / 1024.0::double precision) STORED,

    is_final        boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT content_stats_pkey PRIMARY KEY (window_start, content_id, title),
    CONSTRAINT content_stats_window_check CHECK (window_end > window_start)
) WITH (fillfactor = 80);

-- One row per (window, region), with the health classification the dashboard colours by.
CREATE TABLE IF NOT EXISTS region_health (
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    region          text        NOT NULL,

    downloads       bigint      NOT NULL DEFAULT 0,
    successful      bigint      NOT NULL DEFAULT 0,
    failed          bigint      NOT NULL DEFAULT 0,
    size_mb         bigint      NOT NULL DEFAULT 0,
    duration_s      bigint      NOT NULL DEFAULT 0,
    speed_milli     bigint      NOT NULL DEFAULT 0,
    cdn_timeouts    bigint      NOT NULL DEFAULT 0,

    success_rate    double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE successful::double precision / downloads::double precision END) STORED,
    failure_rate    double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE failed::double precision / downloads::double precision END) STORED,
    avg_speed_mbps  double precision GENERATED ALWAYS AS
        (CASE WHEN successful = 0 THEN NULL ELSE speed_milli::double precision / 1000.0::double precision / successful::double precision END) STORED,
    avg_duration_s  double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE duration_s::double precision / downloads::double precision END) STORED,
    total_size_gb   double precision GENERATED ALWAYS AS
        (size_mb::double precision / 1024.0::double precision) STORED,
    -- healthy: success rate >= 0.95, degraded: >= 0.90, critical: below. Compared in exact integer
    -- arithmetic (numeric, so no overflow) rather than on the float success_rate, so a region at exactly
    -- 95 % is never misfiled by rounding.
    health_status   text GENERATED ALWAYS AS (
        CASE
            WHEN downloads = 0 THEN NULL
            WHEN successful::numeric * 100 >= downloads::numeric * 95 THEN 'healthy'
            WHEN successful::numeric * 100 >= downloads::numeric * 90 THEN 'degraded'
            ELSE 'critical'
        END) STORED,

    is_final        boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT region_health_pkey PRIMARY KEY (window_start, region),
    CONSTRAINT region_health_window_check CHECK (window_end > window_start)
) WITH (fillfactor = 80);

-- One row per (window, device, os_version).
CREATE TABLE IF NOT EXISTS device_stats (
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    device          text        NOT NULL,
    os_version      text        NOT NULL,

    downloads       bigint      NOT NULL DEFAULT 0,
    successful      bigint      NOT NULL DEFAULT 0,
    failed          bigint      NOT NULL DEFAULT 0,
    size_mb         bigint      NOT NULL DEFAULT 0,
    duration_s      bigint      NOT NULL DEFAULT 0,
    speed_milli     bigint      NOT NULL DEFAULT 0,
    cdn_timeouts    bigint      NOT NULL DEFAULT 0,

    success_rate    double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE successful::double precision / downloads::double precision END) STORED,
    failure_rate    double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE failed::double precision / downloads::double precision END) STORED,
    avg_speed_mbps  double precision GENERATED ALWAYS AS
        (CASE WHEN successful = 0 THEN NULL ELSE speed_milli::double precision / 1000.0::double precision / successful::double precision END) STORED,
    avg_duration_s  double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE duration_s::double precision / downloads::double precision END) STORED,
    total_size_gb   double precision GENERATED ALWAYS AS
        (size_mb::double precision / 1024.0::double precision) STORED,

    is_final        boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT device_stats_pkey PRIMARY KEY (window_start, device, os_version),
    CONSTRAINT device_stats_window_check CHECK (window_end > window_start)
) WITH (fillfactor = 80);

-- One row per (window, region, error_code), over failed downloads only: `downloads` is the number of
-- failures with that code (so successful is 0 and failed = downloads).
CREATE TABLE IF NOT EXISTS error_stats (
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    region          text        NOT NULL,
    error_code      text        NOT NULL,

    downloads       bigint      NOT NULL DEFAULT 0,
    successful      bigint      NOT NULL DEFAULT 0,
    failed          bigint      NOT NULL DEFAULT 0,
    size_mb         bigint      NOT NULL DEFAULT 0,
    duration_s      bigint      NOT NULL DEFAULT 0,
    speed_milli     bigint      NOT NULL DEFAULT 0,
    cdn_timeouts    bigint      NOT NULL DEFAULT 0,

    success_rate    double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE successful::double precision / downloads::double precision END) STORED,
    failure_rate    double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE failed::double precision / downloads::double precision END) STORED,
    avg_speed_mbps  double precision GENERATED ALWAYS AS
        (CASE WHEN successful = 0 THEN NULL ELSE speed_milli::double precision / 1000.0::double precision / successful::double precision END) STORED,
    avg_duration_s  double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE duration_s::double precision / downloads::double precision END) STORED,
    total_size_gb   double precision GENERATED ALWAYS AS
        (size_mb::double precision / 1024.0::double precision) STORED,

    is_final        boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT error_stats_pkey PRIMARY KEY (window_start, region, error_code),
    CONSTRAINT error_stats_window_check CHECK (window_end > window_start)
) WITH (fillfactor = 80);

-- One row per window over all events. unique_content is a distinct count, NOT additive: the sink
-- writes its current value (`unique_content = excluded.unique_content`), while the sums are added.
CREATE TABLE IF NOT EXISTS window_totals (
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,

    downloads       bigint      NOT NULL DEFAULT 0,
    successful      bigint      NOT NULL DEFAULT 0,
    failed          bigint      NOT NULL DEFAULT 0,
    size_mb         bigint      NOT NULL DEFAULT 0,
    duration_s      bigint      NOT NULL DEFAULT 0,
    speed_milli     bigint      NOT NULL DEFAULT 0,
    cdn_timeouts    bigint      NOT NULL DEFAULT 0,

    success_rate    double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE successful::double precision / downloads::double precision END) STORED,
    failure_rate    double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE failed::double precision / downloads::double precision END) STORED,
    avg_speed_mbps  double precision GENERATED ALWAYS AS
        (CASE WHEN successful = 0 THEN NULL ELSE speed_milli::double precision / 1000.0::double precision / successful::double precision END) STORED,
    avg_duration_s  double precision GENERATED ALWAYS AS
        (CASE WHEN downloads = 0 THEN NULL ELSE duration_s::double precision / downloads::double precision END) STORED,
    total_size_gb   double precision GENERATED ALWAYS AS
        (size_mb::double precision / 1024.0::double precision) STORED,

    unique_content  bigint      NOT NULL DEFAULT 0,

    is_final        boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT window_totals_pkey PRIMARY KEY (window_start),
    CONSTRAINT window_totals_window_check CHECK (window_end > window_start)
) WITH (fillfactor = 80);

-- Events that arrived too late to be applied (older than the partition's max timestamp minus the
-- lateness bound), by the window they belonged to and the Kafka partition they came from. The sums
-- describe those discarded events; `downloads` is how many there were.
CREATE TABLE IF NOT EXISTS late_events (
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    partition       integer     NOT NULL,

    downloads       bigint      NOT NULL DEFAULT 0,
    successful      bigint      NOT NULL DEFAULT 0,
    failed          bigint      NOT NULL DEFAULT 0,
    size_mb         bigint      NOT NULL DEFAULT 0,
    duration_s      bigint      NOT NULL DEFAULT 0,
    speed_milli     bigint      NOT NULL DEFAULT 0,
    cdn_timeouts    bigint      NOT NULL DEFAULT 0,

    is_final        boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT late_events_pkey PRIMARY KEY (window_start, partition),
    CONSTRAINT late_events_window_check CHECK (window_end > window_start)
) WITH (fillfactor = 80);

-- Top-K content per window. Not additive: the sink replaces a window's ranks as they change
-- (upsert on (window_start, rank), then delete ranks beyond the current list length).
CREATE TABLE IF NOT EXISTS trending (
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    rank            integer     NOT NULL,  -- 1 = most downloaded
    content_id      text        NOT NULL,
    title           text        NOT NULL,
    downloads       bigint      NOT NULL,
    is_final        boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT trending_pkey PRIMARY KEY (window_start, rank),
    CONSTRAINT trending_window_check CHECK (window_end > window_start),
    CONSTRAINT trending_rank_check CHECK (rank >= 1)
) WITH (fillfactor = 80);

------------------------------------------------------------------------------------------------------
-- Alerts
------------------------------------------------------------------------------------------------------

-- One row per (rule, region, window) in which the rule fired. `id` is computed by the app from that
-- natural key so it is stable across restarts and replays (the ack endpoint takes it). While the window
-- is open an alert may appear and clear; once is_final it stays. The acknowledgement columns are the
-- only ones written by anything other than the sink (POST /api/alerts/{id}/ack).
--
-- alert_type is left unconstrained on purpose (rules are configurable); today's values are
-- HIGH_ERROR_RATE, SUSTAINED_ERROR_RATE, SLOW_DOWNLOADS, CDN_FAILURE.
CREATE TABLE IF NOT EXISTS alerts (
    id              bigint      NOT NULL,
    alert_type      text        NOT NULL,
    severity        text        NOT NULL,
    region          text        NOT NULL,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    metric_name     text        NOT NULL,  -- e.g. failure_rate, avg_speed_mbps, cdn_timeout_rate
    metric_value    double precision NOT NULL,
    threshold_value double precision NOT NULL,
    message         text        NOT NULL,
    is_final        boolean     NOT NULL DEFAULT false,
    raised_at       timestamptz NOT NULL DEFAULT now(),  -- first written; the sink must not update it
    updated_at      timestamptz NOT NULL DEFAULT now(),
    acknowledged    boolean     NOT NULL DEFAULT false,
    acknowledged_at timestamptz,
    acknowledged_by text,

    CONSTRAINT alerts_pkey PRIMARY KEY (id),
    CONSTRAINT alerts_type_region_window_key UNIQUE (alert_type, region, window_start),
    CONSTRAINT alerts_severity_check CHECK (severity IN ('CRITICAL', 'WARNING', 'INFO')),
    CONSTRAINT alerts_window_check CHECK (window_end > window_start)
);

------------------------------------------------------------------------------------------------------
-- Pipeline bookkeeping
------------------------------------------------------------------------------------------------------

-- Records that could not be decoded. Keyed by their Kafka coordinates so a replay that meets the same
-- bad record again is an idempotent `ON CONFLICT DO NOTHING`.
CREATE TABLE IF NOT EXISTS dead_letters (
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    reason          text        NOT NULL,
    raw             bytea       NOT NULL,  -- the record value exactly as read
    received_at     timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT dead_letters_pkey PRIMARY KEY (topic, partition, kafka_offset)
);

-- Where each partition resumes: written in the same transaction as the data derived from offsets below
-- next_offset, which is what makes the sink exactly-once. Never delete rows from here by hand unless you
-- also delete everything derived from that partition.
CREATE TABLE IF NOT EXISTS sink_progress (
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    next_offset     bigint      NOT NULL,  -- first offset NOT yet reflected in the tables
    max_timestamp   timestamptz,           -- largest event timestamp seen (lateness is judged against it)
    watermark       timestamptz,           -- this partition's contribution to the watermark
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT sink_progress_pkey PRIMARY KEY (topic, partition)
) WITH (fillfactor = 50);  -- a handful of rows rewritten on every commit: keep those updates HOT

-- A bounded sample of decoded events for debugging, as the old pipeline kept. Trimmed by
-- expire_old_rows() (003) to the newest rows.
CREATE TABLE IF NOT EXISTS event_log (
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    event_id        text        NOT NULL,
    event_timestamp timestamptz NOT NULL,
    content_id      text,
    region          text,
    device          text,
    status          text,
    error_code      text,
    received_at     timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT event_log_pkey PRIMARY KEY (topic, partition, kafka_offset)
);

------------------------------------------------------------------------------------------------------
-- Indexes
--
-- "Newest windows" and "window X" queries are served by the primary keys (window_start leads them, and a
-- B-tree scans backwards just as well), so the indexes below are for the other access paths only.
-- Each one costs write throughput on the sink's hot path, so each says which query it is for.
------------------------------------------------------------------------------------------------------

-- "This content over time" (API drill-down, analysts' per-title trends, hourly_content for one title).
CREATE INDEX IF NOT EXISTS content_stats_content_time_idx
    ON content_stats (content_id, window_start DESC);

-- "This region over time" (health trend) and region_health_latest (DISTINCT ON region, newest first).
CREATE INDEX IF NOT EXISTS region_health_region_time_idx
    ON region_health (region, window_start DESC);

-- "This device / OS over time".
CREATE INDEX IF NOT EXISTS device_stats_device_time_idx
    ON device_stats (device, os_version, window_start DESC);

-- "Errors in this region over time" and "where does this error code occur".
CREATE INDEX IF NOT EXISTS error_stats_region_time_idx
    ON error_stats (region, window_start DESC);
CREATE INDEX IF NOT EXISTS error_stats_code_time_idx
    ON error_stats (error_code, window_start DESC);

-- "Late events from this partition over time".
CREATE INDEX IF NOT EXISTS late_events_partition_time_idx
    ON late_events (partition, window_start DESC);

-- "Which windows did this content trend in".
CREATE INDEX IF NOT EXISTS trending_content_time_idx
    ON trending (content_id, window_start DESC);

-- Open (not yet final) rows: the sink finalizes them when the watermark passes
-- (UPDATE ... SET is_final = true WHERE NOT is_final AND window_end <= $watermark) and rebuilds open
-- windows from them at start-up. There are only a few open windows at any time, so these stay tiny.
CREATE INDEX IF NOT EXISTS content_stats_open_idx ON content_stats (window_end) WHERE NOT is_final;
CREATE INDEX IF NOT EXISTS region_health_open_idx ON region_health (window_end) WHERE NOT is_final;
CREATE INDEX IF NOT EXISTS device_stats_open_idx  ON device_stats  (window_end) WHERE NOT is_final;
CREATE INDEX IF NOT EXISTS error_stats_open_idx   ON error_stats   (window_end) WHERE NOT is_final;
CREATE INDEX IF NOT EXISTS window_totals_open_idx ON window_totals (window_end) WHERE NOT is_final;
CREATE INDEX IF NOT EXISTS late_events_open_idx   ON late_events   (window_end) WHERE NOT is_final;
CREATE INDEX IF NOT EXISTS trending_open_idx      ON trending      (window_end) WHERE NOT is_final;
CREATE INDEX IF NOT EXISTS alerts_open_idx        ON alerts        (window_end) WHERE NOT is_final;

-- The API's alert list: `?acknowledged=false&severity=CRITICAL`, newest first.
CREATE INDEX IF NOT EXISTS alerts_ack_severity_time_idx
    ON alerts (acknowledged, severity, window_start DESC);

-- "Alerts for this region", newest first. (alert_episodes walks (alert_type, region, window_start),
-- which the unique constraint's index already provides.)
CREATE INDEX IF NOT EXISTS alerts_region_time_idx
    ON alerts (region, window_start DESC);

-- Debugging: "the newest sampled events" and trimming to the newest N; "find this event".
CREATE INDEX IF NOT EXISTS event_log_received_idx ON event_log (received_at DESC);
CREATE INDEX IF NOT EXISTS event_log_event_id_idx ON event_log (event_id);

-- "Dead letters since ..." (the primary key already answers "per partition, by offset").
CREATE INDEX IF NOT EXISTS dead_letters_received_idx ON dead_letters (received_at DESC);
