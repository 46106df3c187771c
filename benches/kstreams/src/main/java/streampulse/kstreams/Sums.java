// Sums: the measures of one per-window row (StreamPulse's `Aggregate`: integer sums, speed in
// thousandths of a Mbps over successful downloads), plus `lateByRule`, an audit count of the events in
// the row that StreamPulse's per-partition rule would have called late. Serialized as unsigned varints.
package streampulse.kstreams;

import java.nio.ByteBuffer;

import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

final class Sums {
    long downloads;
    long successful;
    long failed;
    long sizeMb;
    long durationS;
    long speedMilli;
    long cdnTimeouts;
    long lateByRule;

    /** The contribution of one event. */
    static Sums of(Event e, boolean lateByRule) {
        Sums s = new Sums();
        boolean success = e.success();
        boolean failed = e.failed();
        s.downloads = 1;
        s.successful = success ? 1 : 0;
        s.failed = failed ? 1 : 0;
        s.sizeMb = e.sizeMb();
        s.durationS = e.durationS();
        s.speedMilli = success ? Math.round(e.speedMbps() * 1000.0) : 0;
        s.cdnTimeouts = failed && "cdn_timeout".equals(e.errorCode()) ? 1 : 0;
        s.lateByRule = lateByRule ? 1 : 0;
        return s;
    }

    /** Adds {@code o} into this (an aggregate freshly read from the store) and returns this. */
    Sums add(Sums o) {
        downloads += o.downloads;
        successful += o.successful;
        failed += o.failed;
        sizeMb += o.sizeMb;
        durationS += o.durationS;
        speedMilli += o.speedMilli;
        cdnTimeouts += o.cdnTimeouts;
        lateByRule += o.lateByRule;
        return this;
    }

    private static final int FIELDS = 8;

    byte[] toBytes() {
        ByteBuffer b = ByteBuffer.allocate(FIELDS * 10);
        for (long v : new long[] {downloads, successful, failed, sizeMb, durationS, speedMilli, cdnTimeouts, lateByRule}) {
            while ((v & ~0x7FL) != 0) {
                b.put((byte) ((v & 0x7F) | 0x80));
                v >>>= 7;
            }
            b.put((byte) v);
        }
        byte[] out = new byte[b.position()];
        b.flip().get(out);
        return out;
    }

    static Sums fromBytes(byte[] data) {
        ByteBuffer b = ByteBuffer.wrap(data);
        long[] v = new long[FIELDS];
        for (int i = 0; i < FIELDS; i++) {
            long x = 0;
            int shift = 0;
            byte next;
            do {
                next = b.get();
                x |= (long) (next & 0x7F) << shift;
                shift += 7;
            } while (next < 0);
            v[i] = x;
        }
        Sums s = new Sums();
        s.downloads = v[0];
        s.successful = v[1];
        s.failed = v[2];
        s.sizeMb = v[3];
        s.durationS = v[4];
        s.speedMilli = v[5];
        s.cdnTimeouts = v[6];
        s.lateByRule = v[7];
        return s;
    }

    static final Serde<Sums> SERDE = Serdes.serdeFrom(
            (Serializer<Sums>) (topic, s) -> s == null ? null : s.toBytes(),
            (Deserializer<Sums>) (topic, data) -> data == null ? null : fromBytes(data));
}
