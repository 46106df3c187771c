// Progress: counters the topology bumps as records pass, read by the main thread to know when the
// whole topic has gone through the windowed aggregation, and for the audit of lateness rules.
package streampulse.kstreams;

import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.LongAdder;

final class Progress {
    /** Source records seen by the job (decoded or not). */
    final LongAdder sourceRecords = new LongAdder();
    /** Records whose value did not decode: skipped, like StreamPulse's dead letters. */
    final LongAdder deadLetters = new LongAdder();
    /** Events StreamPulse's per-partition rule would call late (applied or dropped here, whichever). */
    final LongAdder lateByRule = new LongAdder();
    /** Rows emitted into the repartition topic, per dimension (indexed like {@link Rows#DIMENSIONS}). */
    final LongAdder[] rowsEmitted = new LongAdder[Rows.DIMENSIONS.length];
    /** Rows that reached the windowed aggregation (after the repartition topic). */
    final LongAdder rowsArrived = new LongAdder();
    /** System.nanoTime() of the first source record, 0 before. */
    final AtomicLong firstRecordNanos = new AtomicLong();

    Progress() {
        for (int i = 0; i < rowsEmitted.length; i++) {
            rowsEmitted[i] = new LongAdder();
        }
    }

    long rowsEmittedTotal() {
        long n = 0;
        for (LongAdder a : rowsEmitted) {
            n += a.sum();
        }
        return n;
    }
}
