-- Baselines and trending forecasts.
--
-- region_baselines: per region and settled window, the region's trailing baseline (the windows before
-- it in which the stream had events; a region without events in such a window counted 0 downloads)
-- beside the window's own downloads and error rate, the scores the baseline rules compare, and the
-- resulting health relative to the baseline. A window is settled once the stream has events past its
-- end plus the lateness, so the newest window or two of a live stream have no row yet. The integer
-- sums (baseline_*) are exact; the rest is derived from them when the row is written.
--
-- error_baselines (below): the same per error code.
--
-- trending_predictions: the table the old pipeline left empty. Per settled window, the top titles by
-- rising score: a forecast of the next window's downloads by Holt's linear exponential smoothing over
-- the title's recent windows (history, oldest first), and how far it runs ahead of their mean.
--
-- alerts gain baseline_value and score: for the *_BASELINE rules, the baseline's value of the measure
-- (mean downloads per window, or the baseline error rate; threshold_value holds it too) and the score
-- the rule compared; NULL for the fixed-threshold rules.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS baseline_value double precision;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS score double precision;

CREATE TABLE IF NOT EXISTS region_baselines (
    window_start          timestamptz      NOT NULL,
    window_end            timestamptz      NOT NULL,
    region                text             NOT NULL,
    baseline_windows      integer          NOT NULL,  -- stream windows the baseline covers
    baseline_downloads    bigint           NOT NULL,  -- downloads over them
    baseline_downloads_sq numeric          NOT NULL,  -- sum of each window's downloads squared
    baseline_failed       bigint           NOT NULL,  -- failed downloads over them
    mean_downloads        double precision NOT NULL,  -- baseline_downloads / baseline_windows
    spread_downloads      double precision NOT NULL,  -- standard deviation per window
    baseline_error_rate   double precision NOT NULL,  -- baseline_failed / baseline_downloads
    downloads             bigint           NOT NULL,  -- this window's (0: the region was silent)
    failed                bigint           NOT NULL,
    error_rate            double precision NOT NULL,
    traffic_score         double precision NOT NULL,
    error_score           double precision NOT NULL,
    health                text             NOT NULL,  -- normal, silent, low_traffic, high_traffic,
                                                      -- high_errors, learning
    is_final              boolean          NOT NULL DEFAULT false,
    updated_at            timestamptz      NOT NULL DEFAULT now(),

    CONSTRAINT region_baselines_pkey PRIMARY KEY (window_start, region),
    CONSTRAINT region_baselines_window_check CHECK (window_end > window_start)
);

CREATE INDEX IF NOT EXISTS region_baselines_region_time_idx
    ON region_baselines (region, window_start DESC);
CREATE INDEX IF NOT EXISTS region_baselines_open_idx
    ON region_baselines (window_end) WHERE NOT is_final;

-- error_baselines: per settled window, region and error code (seen in the window or its trail), the
-- code's share of the region's downloads against its trailing baseline over the same windows as
-- region_baselines: which kind of failure moved.
CREATE TABLE IF NOT EXISTS error_baselines (
    window_start          timestamptz      NOT NULL,
    window_end            timestamptz      NOT NULL,
    region                text             NOT NULL,
    error_code            text             NOT NULL,
    baseline_windows      integer          NOT NULL,  -- as in region_baselines
    baseline_downloads    bigint           NOT NULL,  -- the region's downloads over them
    baseline_failures     bigint           NOT NULL,  -- failures with this code over them
    baseline_rate         double precision NOT NULL,  -- baseline_failures / baseline_downloads
    downloads             bigint           NOT NULL,  -- the region's downloads in this window
    failures              bigint           NOT NULL,  -- failures with this code in this window
    rate                  double precision NOT NULL,  -- failures / downloads (0 without downloads)
    score                 double precision NOT NULL,  -- standard errors above the baseline rate
    is_final              boolean          NOT NULL DEFAULT false,
    updated_at            timestamptz      NOT NULL DEFAULT now(),

    CONSTRAINT error_baselines_pkey PRIMARY KEY (window_start, region, error_code),
    CONSTRAINT error_baselines_window_check CHECK (window_end > window_start)
);

CREATE INDEX IF NOT EXISTS error_baselines_open_idx
    ON error_baselines (window_end) WHERE NOT is_final;

CREATE TABLE IF NOT EXISTS trending_predictions (
    window_start        timestamptz      NOT NULL,  -- the window the forecast was made at
    window_end          timestamptz      NOT NULL,
    rank                integer          NOT NULL,  -- 1 = rising fastest
    content_id          text             NOT NULL,
    title               text             NOT NULL,
    downloads           bigint           NOT NULL,  -- in this window
    predicted_downloads double precision NOT NULL,  -- forecast for the next window
    level               double precision NOT NULL,
    trend               double precision NOT NULL,
    rising_score        double precision NOT NULL,
    history             bigint[]         NOT NULL,  -- downloads in the forecast's windows, oldest first
    is_final            boolean          NOT NULL DEFAULT false,
    updated_at          timestamptz      NOT NULL DEFAULT now(),

    CONSTRAINT trending_predictions_pkey PRIMARY KEY (window_start, rank),
    CONSTRAINT trending_predictions_window_check CHECK (window_end > window_start),
    CONSTRAINT trending_predictions_rank_check CHECK (rank >= 1)
);

CREATE INDEX IF NOT EXISTS trending_predictions_content_time_idx
    ON trending_predictions (content_id, window_start DESC);
CREATE INDEX IF NOT EXISTS trending_predictions_open_idx
    ON trending_predictions (window_end) WHERE NOT is_final;

-- Retention covers the new tables.
CREATE OR REPLACE FUNCTION expire_old_rows(keep interval, keep_events integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    cutoff  timestamptz := now() - keep;
    n       bigint;
    total   bigint := 0;
BEGIN
    IF keep IS NULL OR keep < interval '0' THEN
        RAISE EXCEPTION 'expire_old_rows: keep must be a non-negative interval, got %', keep;
    END IF;
    IF keep_events IS NULL OR keep_events < 0 THEN
        RAISE EXCEPTION 'expire_old_rows: keep_events must be >= 0, got %', keep_events;
    END IF;

    DELETE FROM content_stats WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM region_health WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM device_stats  WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM error_stats   WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM window_totals WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM trending      WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM alerts        WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM late_events   WHERE window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM region_baselines     WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM error_baselines      WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM trending_predictions WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;

    -- Keep the newest keep_events rows; ties on received_at (one sink transaction shares now()) are
    -- broken by Kafka coordinates so exactly keep_events rows survive.
    DELETE FROM event_log
    WHERE ctid IN (
        SELECT ctid FROM event_log
        ORDER BY received_at DESC, topic DESC, partition DESC, kafka_offset DESC
        OFFSET keep_events
    );
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;

    RETURN total;
END
$$;

REVOKE EXECUTE ON FUNCTION expire_old_rows(interval, integer) FROM PUBLIC;
