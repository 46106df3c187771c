-- Alert episodes, stored, and the notification outbox.
--
-- An episode is a run of consecutive windows in which one rule fired for one region ("CDN_FAILURE in
-- eu-west from 10:03 to 10:09"). The sink maintains `episodes` from the alert changes it commits, in
-- the same transaction as the `alerts` rows, and writes one `notification_outbox` row per destination
-- and transition in that transaction too: a crash can lose neither an episode nor its notification.
-- (The older view `alert_episodes` recomputes runs from `alerts` on every query; this table is the
-- maintained record, with identity, state and notifications.)
--
-- state:
--   open       the run may still grow: the window after its last one is not final yet
--   resolved   the window after its last one is final and did not fire: the episode is over
--   withdrawn  every alert of the run disappeared while their windows were still open (counts changed
--              before the windows closed); a "resolved" notification closes what "opened" announced
--
-- confirmed: the first window of the run is final, so the episode can no longer be withdrawn.
-- Destinations are told "opened" when it is confirmed (or at once, for a destination configured with
-- "when": "provisional"), so by default a provisional alert that vanishes pages nobody.
--
-- Once resolved or withdrawn an episode does not change again (is_final). For the final windows of a
-- topic, the resolved episodes are the runs of the final alerts: a pure function of the topic.
CREATE TABLE IF NOT EXISTS episodes (
    id              bigint           NOT NULL,  -- stable: FNV-1a of type|region|first window|generation
    alert_type      text             NOT NULL,
    region          text             NOT NULL,
    severity        text             NOT NULL,  -- the worst severity of the run
    metric_name     text             NOT NULL,
    threshold_value double precision NOT NULL,
    first_window    timestamptz      NOT NULL,  -- window_start of the first window of the run
    last_window     timestamptz      NOT NULL,  -- window_start of the last window of the run
    episode_end     timestamptz      NOT NULL,  -- window_end of the last window
    windows         integer          NOT NULL,  -- how many windows fired
    peak_value      double precision NOT NULL,  -- the most extreme value: lowest speed, highest rate
    message         text             NOT NULL,  -- the message of the peak window's alert
    state           text             NOT NULL DEFAULT 'open',
    confirmed       boolean          NOT NULL DEFAULT false,  -- its first window is final
    is_final        boolean          NOT NULL DEFAULT false,
    opened_at       timestamptz      NOT NULL DEFAULT now(),
    closed_at       timestamptz,                -- when it was resolved or withdrawn
    updated_at      timestamptz      NOT NULL DEFAULT now(),
    acknowledged    boolean          NOT NULL DEFAULT false,
    acknowledged_at timestamptz,
    acknowledged_by text,

    CONSTRAINT episodes_pkey PRIMARY KEY (id),
    CONSTRAINT episodes_state_check CHECK (state IN ('open', 'resolved', 'withdrawn')),
    CONSTRAINT episodes_severity_check CHECK (severity IN ('CRITICAL', 'WARNING', 'INFO')),
    CONSTRAINT episodes_windows_check CHECK (last_window >= first_window AND windows >= 1)
);

-- The sink's look-ups: the open episodes of a (rule, region), and the last closed one.
CREATE INDEX IF NOT EXISTS episodes_key_idx ON episodes (alert_type, region, last_window DESC);
-- The watermark closes open episodes; the API lists open ones first.
CREATE INDEX IF NOT EXISTS episodes_open_idx ON episodes (last_window) WHERE state = 'open';
CREATE INDEX IF NOT EXISTS episodes_time_idx ON episodes (first_window DESC);

-- One notification to one destination: an episode's transition (opened, acknowledged, resolved).
-- Written by the sink (or the acknowledgement endpoint) in the transaction that made the transition;
-- delivered by the notifier, at least once, in id order per (destination, episode). The payload is
-- the episode as it was at the transition, without any destination secret (the notifier adds
-- routing keys and headers from its configuration when it sends). idempotency_key is the same on
-- every retry: a receiver that deduplicates by it acts exactly once.
--
-- state: pending (not yet delivered, next_attempt_at says when it is tried), delivered, or
-- abandoned (still failing after the notifier's give-up age; last_error says why).
CREATE TABLE IF NOT EXISTS notification_outbox (
    id              bigserial   NOT NULL,
    destination     text        NOT NULL,  -- the destination's name in the notifier configuration
    episode_id      bigint      NOT NULL,
    transition      text        NOT NULL,
    idempotency_key text        NOT NULL,  -- streampulse-episode-<id>-<transition>
    payload         jsonb       NOT NULL,
    state           text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_error      text,
    delivered_at    timestamptz,

    CONSTRAINT notification_outbox_pkey PRIMARY KEY (id),
    CONSTRAINT notification_outbox_key UNIQUE (destination, idempotency_key),
    CONSTRAINT notification_outbox_transition_check
        CHECK (transition IN ('opened', 'acknowledged', 'resolved')),
    CONSTRAINT notification_outbox_state_check CHECK (state IN ('pending', 'delivered', 'abandoned'))
);

-- The notifier's scan: what is due.
CREATE INDEX IF NOT EXISTS notification_outbox_due_idx
    ON notification_outbox (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS notification_outbox_episode_idx ON notification_outbox (episode_id);

COMMENT ON TABLE episodes IS
    'alert episodes: runs of consecutive windows in which a rule fired for a region, maintained by the sink with the alerts; state open, resolved or withdrawn';
COMMENT ON TABLE notification_outbox IS
    'notifications of episode transitions, one row per destination, written in the transaction that made the transition and delivered at least once with a stable idempotency_key';

-- A database that already holds alerts: their runs become episodes without notifications, so that
-- upgrading announces nothing about them. By the stored watermark (the slowest topic's): a run whose
-- next window is final is resolved; the others stay open (confirmed if their first window is final)
-- and carry on as the sink extends them, still unannounced. Ids come from the natural key with the
-- window start in epoch milliseconds (independent of the session's time zone); later episodes use
-- the app's own ids. `message` is the first window's.
WITH mark AS (SELECT min(watermark) AS watermark FROM sink_progress)
INSERT INTO episodes (id, alert_type, region, severity, metric_name, threshold_value, first_window,
                      last_window, episode_end, windows, peak_value, message, state, confirmed,
                      is_final, closed_at)
SELECT ('x' || substr(md5(v.alert_type || '|' || v.region || '|'
                          || (extract(epoch FROM v.first_window) * 1000)::bigint::text), 1, 13))::bit(52)::bigint,
       v.alert_type, v.region, v.severity, v.metric_name, a.threshold_value, v.first_window,
       v.last_window, v.episode_end, v.windows, v.worst_metric_value, a.message,
       CASE WHEN resolved THEN 'resolved' ELSE 'open' END,
       coalesce(v.first_window + (v.episode_end - v.last_window) <= mark.watermark, false),
       resolved, CASE WHEN resolved THEN now() END
FROM alert_episodes AS v
JOIN alerts AS a ON a.id = v.alert_ids[1]
CROSS JOIN mark
CROSS JOIN LATERAL (SELECT coalesce(v.episode_end + (v.episode_end - v.last_window) <= mark.watermark,
                                    false) AS resolved) AS r
ON CONFLICT (id) DO NOTHING;
