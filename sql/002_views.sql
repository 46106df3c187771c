-- 002_views.sql — views for the questions analysts ask most.
--
-- CREATE OR REPLACE VIEW keeps this file re-runnable. It can only append columns to a view, never drop,
-- rename or retype one: a later migration that changes a view's columns must DROP VIEW it first.
--
-- "Newest" here means the newest window in the data (the stream's own clock), not the wall clock, so the
-- views show something during replays and benchmarks too. Newest windows may still be open
-- (is_final = false) and keep changing until the watermark passes them.

-- Content stats of the newest window, most downloaded first.
CREATE OR REPLACE VIEW latest_content AS
SELECT c.*
FROM content_stats AS c
WHERE c.window_start = (SELECT max(window_start) FROM content_stats)
ORDER BY c.downloads DESC, c.content_id, c.title;

-- Each region's newest window. A region that had no traffic recently shows its last window with data:
-- compare window_start with the other regions' to spot it.
CREATE OR REPLACE VIEW region_health_latest AS
SELECT DISTINCT ON (r.region) r.*
FROM region_health AS r
ORDER BY r.region, r.window_start DESC;

-- Unacknowledged alerts, CRITICAL first, then WARNING, then INFO; newest first within a severity.
-- (Severity is ranked explicitly because alphabetical order would put INFO before WARNING.)
CREATE OR REPLACE VIEW active_alerts AS
SELECT a.*,
       CASE a.severity WHEN 'CRITICAL' THEN 1 WHEN 'WARNING' THEN 2 ELSE 3 END AS severity_rank
FROM alerts AS a
WHERE NOT a.acknowledged
ORDER BY severity_rank, a.window_start DESC, a.alert_type, a.region;

-- Consecutive windows in which the same rule fired for the same region, collapsed into one episode
-- ("CDN_FAILURE in EU-London from 10:03 to 10:09"). Gaps and islands: a row starts a new episode unless
-- the previous row of the same (alert_type, region) ended exactly where this one starts; a running sum
-- of those starts numbers the episodes.
--
--   first_window / last_window  window_start of the first and of the last window of the episode
--   episode_end                 window_end of the last window (the episode covers [first_window, episode_end))
--   windows                     how many windows fired
--   severity                    the worst severity seen in the episode
--   worst_metric_value          the most extreme metric value: the lowest for SLOW_DOWNLOADS (a speed),
--                               the highest for the rate-based rules
--   is_final                    every window of the episode is final (it can still be extended by the
--                               next window if that one is open)
--   acknowledged                every alert of the episode has been acknowledged
--   alert_ids                   the alerts rows, in window order (for POST /api/alerts/{id}/ack)
--
-- `episode` counts per (alert_type, region) from the oldest row still stored, so it shifts when old rows
-- are expired; (alert_type, region, first_window) is the stable identity of an episode.
CREATE OR REPLACE VIEW alert_episodes AS
WITH marked AS (
    SELECT a.*,
           CASE
               WHEN lag(a.window_end) OVER w = a.window_start THEN 0
               ELSE 1
           END AS starts_episode
    FROM alerts AS a
    WINDOW w AS (PARTITION BY a.alert_type, a.region ORDER BY a.window_start)
),
numbered AS (
    SELECT m.*,
           sum(m.starts_episode) OVER (
               PARTITION BY m.alert_type, m.region
               ORDER BY m.window_start
               ROWS UNBOUNDED PRECEDING
           ) AS episode
    FROM marked AS m
)
SELECT n.alert_type,
       n.region,
       n.episode::integer                                  AS episode,
       min(n.window_start)                                 AS first_window,
       max(n.window_start)                                 AS last_window,
       max(n.window_end)                                   AS episode_end,
       count(*)::integer                                   AS windows,
       (array_agg(n.severity ORDER BY CASE n.severity WHEN 'CRITICAL' THEN 1 WHEN 'WARNING' THEN 2 ELSE 3 END))[1]
                                                           AS severity,
       min(n.metric_name)                                  AS metric_name,
       CASE WHEN n.alert_type = 'SLOW_DOWNLOADS' THEN min(n.metric_value) ELSE max(n.metric_value) END
                                                           AS worst_metric_value,
       bool_and(n.is_final)                                AS is_final,
       bool_and(n.acknowledged)                            AS acknowledged,
       array_agg(n.id ORDER BY n.window_start)             AS alert_ids
FROM numbered AS n
GROUP BY n.alert_type, n.region, n.episode;

-- Content stats rolled up per UTC hour. Rates and averages are recomputed from the summed counts — never
-- an average of per-minute averages, which would weight a quiet minute like a busy one.
-- `hour` is truncated in UTC explicitly so the result does not depend on the session's TimeZone.
-- is_final: every window present in that hour is final.
CREATE OR REPLACE VIEW hourly_content AS
SELECT date_trunc('hour', c.window_start, 'UTC')            AS hour,
       c.content_id,
       c.title,
       count(*)::integer                                   AS windows,
       sum(c.downloads)::bigint                            AS downloads,
       sum(c.successful)::bigint                           AS successful,
       sum(c.failed)::bigint                               AS failed,
       sum(c.size_mb)::bigint                              AS size_mb,
       sum(c.duration_s)::bigint                           AS duration_s,
       sum(c.speed_milli)::bigint                          AS speed_milli,
       sum(c.cdn_timeouts)::bigint                         AS cdn_timeouts,
       sum(c.successful)::double precision / NULLIF(sum(c.downloads), 0)::double precision
                                                           AS success_rate,
       sum(c.failed)::double precision / NULLIF(sum(c.downloads), 0)::double precision
                                                           AS failure_rate,
       sum(c.speed_milli)::double precision / 1000.0::double precision
           / NULLIF(sum(c.successful), 0)::double precision AS avg_speed_mbps,
       sum(c.duration_s)::double precision / NULLIF(sum(c.downloads), 0)::double precision
                                                           AS avg_duration_s,
       sum(c.size_mb)::double precision / 1024.0::double precision
                                                           AS total_size_gb,
       bool_and(c.is_final)                                AS is_final
FROM content_stats AS c
GROUP BY 1, c.content_id, c.title;
