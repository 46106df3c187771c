-- Hand-made sample data for trying the schema and the queries in sql/README.md.
-- NOT a migration (it lives outside sql/NNN_*.sql on purpose). Load it into a scratch schema:
--
--   psql -v ON_ERROR_STOP=1 "$DB" -c 'SET search_path TO my_scratch_schema' -f sql/examples/sample_data.sql
--
-- Shape: the last 2 hours of 1-minute windows (the newest still open) plus 5 final windows from
-- 10 days ago, for three regions and four titles. EU-London has a CDN outage 30..25 minutes ago and
-- again 10..8 minutes ago; ASIA-Tokyo has slow downloads 60..58 minutes ago. Everything is
-- deterministic arithmetic on the window index, relative to the current minute.

CREATE TEMP TABLE sample_windows AS
SELECT i,                                            -- minutes ago: 1 = newest window
       t0 - make_interval(mins => i)     AS window_start,
       t0 - make_interval(mins => i - 1) AS window_end,
       i = 1                             AS is_open,
       false                             AS old
FROM (SELECT date_trunc('minute', now()) AS t0) AS p,
     generate_series(1, 120) AS i
UNION ALL
SELECT i, t0 - make_interval(days => 10, mins => i), t0 - make_interval(days => 10, mins => i - 1), false, true
FROM (SELECT date_trunc('minute', now()) AS t0) AS p,
     generate_series(1, 5) AS i;

-- content: weights 50/30/15/5 like the old pipeline; a few failures, ~1/3 of them CDN timeouts.
INSERT INTO content_stats (window_start, window_end, content_id, title,
                           downloads, successful, failed, size_mb, duration_s, speed_milli, cdn_timeouts,
                           is_final)
SELECT w.window_start, w.window_end, c.content_id, c.title,
       d.downloads, d.downloads - d.failed - d.cancelled, d.failed,
       d.downloads * c.size_mb, d.downloads * c.secs,
       (d.downloads - d.failed - d.cancelled) * (30000 + 500 * (w.i % 7)),
       d.failed / 3,
       NOT w.is_open
FROM sample_windows AS w
CROSS JOIN (VALUES ('c-001', 'Big Buck Bunny', 50, 1200, 90),
                   ('c-002', 'Sintel',         30,  800, 70),
                   ('c-003', 'Tears of Steel', 15, 2400, 150),
                   ('c-004', 'Elephants Dream', 5,  600, 40)) AS c(content_id, title, weight, size_mb, secs)
CROSS JOIN LATERAL (
    SELECT c.weight + (w.i * 7 + c.weight) % 11 AS downloads,
           (c.weight + (w.i * 7 + c.weight) % 11) / 12 + (w.i % 3) AS failed,
           (w.i % 2) AS cancelled
) AS d;

-- window_totals from the content rows, as the dataflow would have them.
INSERT INTO window_totals (window_start, window_end,
                           downloads, successful, failed, size_mb, duration_s, speed_milli, cdn_timeouts,
                           unique_content, is_final)
SELECT window_start, window_end,
       sum(downloads), sum(successful), sum(failed), sum(size_mb), sum(duration_s), sum(speed_milli),
       sum(cdn_timeouts), count(DISTINCT content_id), bool_and(is_final)
FROM content_stats
GROUP BY window_start, window_end;

-- regions: US-California healthy, ASIA-Tokyo mostly healthy but slow at i = 58..60, EU-London degraded
-- now and then and critical during the two CDN outages.
INSERT INTO region_health (window_start, window_end, region,
                           downloads, successful, failed, size_mb, duration_s, speed_milli, cdn_timeouts,
                           is_final)
SELECT w.window_start, w.window_end, r.region,
       r.downloads, r.downloads - r.failed, r.failed, r.downloads * 1100, r.downloads * 95,
       (r.downloads - r.failed) * r.speed_milli, r.cdn,
       NOT w.is_open
FROM sample_windows AS w
CROSS JOIN LATERAL (
    VALUES ('US-California', 40, 1, 36000, 0),
           ('ASIA-Tokyo',    30, 1, CASE WHEN w.i BETWEEN 58 AND 60 THEN 9000 ELSE 28000 END, 0),
           ('EU-London',     30,
            CASE WHEN w.i BETWEEN 25 AND 30 OR w.i BETWEEN 8 AND 10 THEN 9
                 WHEN w.i % 5 = 0 THEN 2 ELSE 0 END,
            31000,
            CASE WHEN w.i BETWEEN 25 AND 30 OR w.i BETWEEN 8 AND 10 THEN 7 ELSE 0 END)
) AS r(region, downloads, failed, speed_milli, cdn);

INSERT INTO device_stats (window_start, window_end, device, os_version,
                          downloads, successful, failed, size_mb, duration_s, speed_milli, cdn_timeouts,
                          is_final)
SELECT w.window_start, w.window_end, d.device, d.os,
       d.n, d.n - d.f, d.f, d.n * 1000, d.n * 100, (d.n - d.f) * d.speed, 0, NOT w.is_open
FROM sample_windows AS w
CROSS JOIN (VALUES ('iPhone',  'iOS 17.2',    45, 2, 38000),
                   ('Android', 'Android 14',  35, 3, 29000),
                   ('Desktop', 'Windows 11',  20, 1, 52000)) AS d(device, os, n, f, speed);

-- failures by region and code (failed = downloads here: error_stats counts failed downloads).
INSERT INTO error_stats (window_start, window_end, region, error_code,
                         downloads, failed, size_mb, duration_s, cdn_timeouts, is_final)
SELECT r.window_start, r.window_end, r.region, e.code, e.n, e.n, e.n * 1100, e.n * 95,
       CASE WHEN e.code = 'cdn_timeout' THEN e.n ELSE 0 END, r.is_final
FROM region_health AS r
CROSS JOIN LATERAL (
    VALUES ('cdn_timeout', r.cdn_timeouts),
           ('network_error', r.failed - r.cdn_timeouts)
) AS e(code, n)
WHERE e.n > 0;

-- late events on partitions 0..2 every 7th window.
INSERT INTO late_events (window_start, window_end, partition, downloads, successful, failed, size_mb,
                         duration_s, speed_milli, is_final)
SELECT w.window_start, w.window_end, p, 1 + (w.i + p) % 4, 1 + (w.i + p) % 4, 0, 900, 80, 33000,
       NOT w.is_open
FROM sample_windows AS w, generate_series(0, 2) AS p
WHERE w.i % 7 = 0 OR w.old;

-- top-3 per window from content_stats.
INSERT INTO trending (window_start, window_end, rank, content_id, title, downloads, is_final)
SELECT window_start, window_end, rank, content_id, title, downloads, is_final
FROM (SELECT c.*, row_number() OVER (PARTITION BY window_start ORDER BY downloads DESC, content_id) AS rank
      FROM content_stats AS c) AS ranked
WHERE rank <= 3;

-- alerts the rules would raise on the region rows above (ids: any stable number will do here).
INSERT INTO alerts (id, alert_type, severity, region, window_start, window_end, metric_name,
                    metric_value, threshold_value, message, is_final)
SELECT row_number() OVER (ORDER BY t.alert_type, r.region, r.window_start),
       t.alert_type, t.severity, r.region, r.window_start, r.window_end, t.metric, t.value, t.threshold,
       format('%s in %s: %s = %s', t.alert_type, r.region, t.metric, round(t.value::numeric, 3)),
       r.is_final
FROM region_health AS r
CROSS JOIN LATERAL (
    VALUES ('CDN_FAILURE', 'CRITICAL', 'cdn_timeout_rate',
            r.cdn_timeouts::double precision / r.downloads, 0.05,
            r.cdn_timeouts * 20 >= r.downloads),
           ('HIGH_ERROR_RATE', CASE WHEN r.success_rate < 0.85 THEN 'CRITICAL' ELSE 'WARNING' END,
            'failure_rate', r.failure_rate, 0.10, r.failure_rate > 0.10),
           ('SLOW_DOWNLOADS', 'WARNING', 'avg_speed_mbps', r.avg_speed_mbps, 15.0, r.avg_speed_mbps < 15)
) AS t(alert_type, severity, metric, value, threshold, fired)
WHERE t.fired AND r.downloads >= 5;

-- one acknowledged alert, to see it drop out of active_alerts.
UPDATE alerts SET acknowledged = true, acknowledged_at = now(), acknowledged_by = 'oncall@example.com'
WHERE id = (SELECT min(id) FROM alerts WHERE alert_type = 'SLOW_DOWNLOADS');

INSERT INTO sink_progress (topic, partition, next_offset, max_timestamp, watermark)
SELECT 'content-downloads', p, 40000 + p * 17, date_trunc('minute', now()) - interval '2 seconds',
       date_trunc('minute', now()) - interval '7 seconds'
FROM generate_series(0, 2) AS p;

INSERT INTO dead_letters (topic, partition, kafka_offset, reason, raw) VALUES
    ('content-downloads', 1, 1234, 'avro: unexpected end of input', '\x0a0b'::bytea),
    ('content-downloads', 2, 77,   'confluent: unknown schema id 42', '\x00000000002a01'::bytea);

-- 10 050 sampled events, one per second backwards from now.
INSERT INTO event_log (topic, partition, kafka_offset, event_id, event_timestamp, content_id, region,
                       device, status, error_code, received_at)
SELECT 'content-downloads', n % 3, n, 'evt-' || n, now() - make_interval(secs => 10050 - n),
       'c-00' || (1 + n % 4), (ARRAY['US-California', 'EU-London', 'ASIA-Tokyo'])[1 + n % 3],
       'iPhone', CASE WHEN n % 12 = 0 THEN 'failed' ELSE 'success' END,
       CASE WHEN n % 12 = 0 THEN 'network_error' END,
       now() - make_interval(secs => 10050 - n)
FROM generate_series(1, 10050) AS n;

DROP TABLE sample_windows;
