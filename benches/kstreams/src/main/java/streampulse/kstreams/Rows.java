// Rows: the first processor after the source. For each event it emits one row per per-window
// collection it belongs to (totals, content, region, device, and region+error code for failed
// downloads), keyed by dimension and natural key, valued by the event's Sums. It also judges the event
// by StreamPulse's per-partition lateness rule, only to audit Kafka Streams' grace period: the verdict
// travels in Sums.lateByRule and changes nothing that Kafka Streams does.
package streampulse.kstreams;

import java.util.Arrays;

import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;

final class Rows implements Processor<String, Event, String, Sums> {
    /** One letter per collection; a row's key is the letter, then its natural key, separated by SEP. */
    static final String[] DIMENSIONS = {"totals", "content", "region", "device", "error"};
    static final char SEP = '\u001f';
    private static final int TOTALS = 0, CONTENT = 1, REGION = 2, DEVICE = 3, ERROR = 4;
    private static final String[] TAG = {"T", "C", "R", "D", "E"};

    private final Progress progress;
    private final long ruleLatenessMs;
    private ProcessorContext<String, Sums> context;
    /** Per source partition: the largest event time seen so far (StreamPulse's partition clock). */
    private long[] maxTs = new long[0];

    Rows(Progress progress, long ruleLatenessMs) {
        this.progress = progress;
        this.ruleLatenessMs = ruleLatenessMs;
    }

    @Override
    public void init(ProcessorContext<String, Sums> context) {
        this.context = context;
    }

    static int dimensionOf(String key) {
        return switch (key.charAt(0)) {
            case 'T' -> TOTALS;
            case 'C' -> CONTENT;
            case 'R' -> REGION;
            case 'D' -> DEVICE;
            case 'E' -> ERROR;
            default -> throw new IllegalArgumentException("unknown row key " + key);
        };
    }

    @Override
    public void process(Record<String, Event> record) {
        progress.firstRecordNanos.compareAndSet(0, System.nanoTime());
        progress.sourceRecords.increment();
        Event e = record.value();
        if (e == null) {
            progress.deadLetters.increment();
            return;
        }
        Sums sums = Sums.of(e, lateByRule(e.timestamp()));
        if (sums.lateByRule == 1) {
            progress.lateByRule.increment();
        }
        emit(record, TOTALS, TAG[TOTALS], sums);
        emit(record, CONTENT, TAG[CONTENT] + SEP + e.contentId() + SEP + e.title(), sums);
        emit(record, REGION, TAG[REGION] + SEP + e.region(), sums);
        emit(record, DEVICE, TAG[DEVICE] + SEP + e.device() + SEP + e.osVersion(), sums);
        if (sums.failed == 1 && e.errorCode() != null) {
            emit(record, ERROR, TAG[ERROR] + SEP + e.region() + SEP + e.errorCode(), sums);
        }
    }

    private void emit(Record<String, Event> record, int dimension, String key, Sums sums) {
        // The record keeps its timestamp (the event time), which the repartition topic carries on.
        context.forward(new Record<>(key, sums, record.timestamp()));
        progress.rowsEmitted[dimension].increment();
    }

    /** StreamPulse's rule: late when older than the partition's newest event time minus the lateness. */
    private boolean lateByRule(long ts) {
        int p = context.recordMetadata().map(m -> m.partition()).orElse(0);
        if (p >= maxTs.length) {
            int old = maxTs.length;
            maxTs = Arrays.copyOf(maxTs, p + 1);
            Arrays.fill(maxTs, old, p + 1, Long.MIN_VALUE);
        }
        long max = maxTs[p];
        if (max != Long.MIN_VALUE && ts < max - ruleLatenessMs) {
            return true;
        }
        maxTs[p] = Math.max(max, ts);
        return false;
    }
}
