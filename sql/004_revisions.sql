-- Revised windows. A window is final once the watermark has passed its end. If a partition that was
-- silent past the idle timeout later delivers events that are on time by the per-partition rule,
-- they are still applied (the tables stay a pure function of the topic), and their window is revised:
-- its rows change after it was reported final. `revised_at` says when that last happened; NULL means
-- the window never changed after it became final. `is_final` stays true.
ALTER TABLE window_totals ADD COLUMN IF NOT EXISTS revised_at timestamptz;

COMMENT ON COLUMN window_totals.revised_at IS
    'when rows of this window last changed after it was reported final (an idle partition delivered on-time events late); NULL if never';

-- Rows the database itself refused at the sink (for instance a CHECK constraint an analyst added)
-- land in dead_letters with partition -1 and a negative kafka_offset numbering them, the refused
-- row as JSON in raw, and PostgreSQL's error in reason.
COMMENT ON TABLE dead_letters IS
    'records that could not be decoded or lie outside the event domain (partition >= 0: the Kafka record), and rows PostgreSQL refused at the sink (partition = -1, raw = the row as JSON)';
