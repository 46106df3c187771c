// Job: the Kafka Streams topology of StreamPulse's per-window sums.
//
//   events (key region, value bare Avro; event time = the Avro `timestamp`)
//     -> rows: one (dimension + natural key, Sums) row per collection the event belongs to
//     -> repartition by row key (internal topic "<app>-rows-repartition")
//     -> windowed aggregate: 1-minute tumbling windows, epoch-aligned, grace = --grace-ms
//     -> output topic "<app>-out": key "<row key>\u001f<window start ms>", value Sums (latest wins)
//
// Kafka Streams drops a row when its window has closed for the task that aggregates it: window end
// <= (largest timestamp that task's aggregate has seen) - grace. That task reads one partition of the
// repartition topic, fed by all source partitions at once; see README.md in this folder.
package streampulse.kstreams;

import java.time.Duration;

import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Repartitioned;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.state.WindowStore;

final class Job {
    private Job() {}

    /** Event time is the event's own `timestamp`; an undecodable record keeps its Kafka timestamp. */
    static final TimestampExtractor EVENT_TIME =
            (record, partitionTime) -> record.value() instanceof Event e ? e.timestamp() : record.timestamp();

    static Topology build(String topic, String outTopic, Duration window, Duration grace,
                          long ruleLatenessMs, Progress progress) {
        Serde<Event> events = Serdes.serdeFrom(
                (Serializer<Event>) (t, e) -> {
                    throw new UnsupportedOperationException("events are only read");
                },
                new Event.AvroDeserializer());
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(topic, Consumed.with(Serdes.String(), events)
                        .withTimestampExtractor(EVENT_TIME)
                        .withName("events"))
                .process(() -> new Rows(progress, ruleLatenessMs), Named.as("rows"))
                .repartition(Repartitioned.with(Serdes.String(), Sums.SERDE).withName("rows"))
                .peek((key, row) -> progress.rowsArrived.increment(), Named.as("arrived"))
                .groupByKey(Grouped.with(Serdes.String(), Sums.SERDE))
                .windowedBy(TimeWindows.ofSizeAndGrace(window, grace))
                .aggregate(Sums::new, (key, row, sum) -> sum.add(row), Named.as("sums"),
                        Materialized.<String, Sums, WindowStore<Bytes, byte[]>>as("sums")
                                .withKeySerde(Serdes.String())
                                .withValueSerde(Sums.SERDE))
                .toStream((key, sum) -> key.key() + Rows.SEP + key.window().start(), Named.as("rows-out"))
                .to(outTopic, Produced.with(Serdes.String(), Sums.SERDE).withName("out"));
        return builder.build();
    }
}
