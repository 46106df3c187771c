// App: one benchmark run. Counts the records in the topic, runs the Job from the beginning of it with
// a fresh application id until every record has passed the windowed aggregation, closes (final commit),
// reads the output topic back to see what was applied, deletes the run's topics and consumer group,
// and prints one JSON line on stdout. Progress and errors go to stderr.
package streampulse.kstreams;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.Metric;
import org.apache.kafka.common.MetricName;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.streams.CloseOptions;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;

public final class App {
    private App() {}

    private static final String USAGE = """
            usage: App --topic T [--bootstrap HOST:PORT] [--threads 1] [--guarantee at_least_once|exactly_once_v2]
                       [--grace-ms 5000] [--window-ms 60000] [--rule-lateness-ms 5000] [--app-id ID]
                       [--state-dir DIR] [--timeout-s 3600] [--keep-topics]""";

    record Options(String topic, String bootstrap, int threads, String guarantee, long graceMs, long windowMs,
                   long ruleLatenessMs, String appId, Path stateDir, long timeoutS, boolean keepTopics) {

        static Options parse(String[] args) {
            Map<String, String> a = new HashMap<>();
            boolean keep = false;
            for (int i = 0; i < args.length; i++) {
                if (args[i].equals("--keep-topics")) {
                    keep = true;
                } else if (args[i].startsWith("--") && i + 1 < args.length) {
                    a.put(args[i].substring(2), args[++i]);
                } else {
                    throw new IllegalArgumentException("unexpected argument " + args[i] + "\n" + USAGE);
                }
            }
            String topic = a.remove("topic");
            if (topic == null) {
                throw new IllegalArgumentException("--topic is required\n" + USAGE);
            }
            String guarantee = a.getOrDefault("guarantee", StreamsConfig.AT_LEAST_ONCE);
            if (!guarantee.equals(StreamsConfig.AT_LEAST_ONCE) && !guarantee.equals(StreamsConfig.EXACTLY_ONCE_V2)) {
                throw new IllegalArgumentException("--guarantee must be at_least_once or exactly_once_v2");
            }
            String appId = a.getOrDefault("app-id", "kstreams-bench-" + topic + "-" + System.currentTimeMillis());
            Options o = new Options(
                    topic,
                    a.getOrDefault("bootstrap", Optional.ofNullable(System.getenv("STREAMPULSE_BROKERS")).orElse("127.0.0.1:9092")),
                    Integer.parseInt(a.getOrDefault("threads", "1")),
                    guarantee,
                    Long.parseLong(a.getOrDefault("grace-ms", "5000")),
                    Long.parseLong(a.getOrDefault("window-ms", "60000")),
                    Long.parseLong(a.getOrDefault("rule-lateness-ms", "5000")),
                    appId,
                    Path.of(a.getOrDefault("state-dir", System.getProperty("java.io.tmpdir") + "/kstreams-bench")),
                    Long.parseLong(a.getOrDefault("timeout-s", "3600")),
                    keep);
            for (String k : List.of("bootstrap", "threads", "guarantee", "grace-ms", "window-ms", "rule-lateness-ms",
                    "app-id", "state-dir", "timeout-s")) {
                a.remove(k);
            }
            if (!a.isEmpty()) {
                throw new IllegalArgumentException("unknown option(s) " + a.keySet() + "\n" + USAGE);
            }
            return o;
        }
    }

    static void log(String fmt, Object... args) {
        System.err.printf(Locale.ROOT, "kstreams: " + fmt + "%n", args);
    }

    public static void main(String[] args) throws Exception {
        if (args.length == 4 && args[0].equals("--bootstrap") && args[2].equals("--cleanup")) {
            // What an interrupted run left behind: its topics and consumer group.
            deleteRunArtifacts(args[1], args[3]);
            return;
        }
        Options o;
        try {
            o = Options.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println(e.getMessage());
            System.exit(2);
            return;
        }
        String outTopic = o.appId() + "-out";
        Properties adminProps = new Properties();
        adminProps.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, o.bootstrap());

        try (Admin admin = Admin.create(adminProps)) {
            if (!admin.listTopics().names().get().contains(o.topic())) {
                log("error: topic %s does not exist on %s", o.topic(), o.bootstrap());
                System.exit(1);
            }
            int partitions = admin.describeTopics(List.of(o.topic())).allTopicNames().get()
                    .get(o.topic()).partitions().size();
            long events = recordsIn(admin, o.topic(), partitions);
            log("topic %s: %d partitions, %d records; app id %s, %s, %d thread(s), grace %d ms",
                    o.topic(), partitions, events, o.appId(), o.guarantee(), o.threads(), o.graceMs());
            // Output records carry event times (here 2023): keep them whatever their age, until deleted.
            admin.createTopics(List.of(new NewTopic(outTopic, Optional.of(partitions), Optional.empty())
                    .configs(Map.of("retention.ms", "-1")))).all().get();
            // A run stopped by a signal deletes what it made too (the hook runs after Kafka Streams'
            // own shutdown hook, if any, has closed it).
            AtomicReference<Boolean> cleaned = new AtomicReference<>(false);
            Thread cleanup = new Thread(() -> {
                if (!o.keepTopics() && cleaned.compareAndSet(false, true)) {
                    KafkaStreams streams = RUNNING.get();
                    if (streams != null) {
                        streams.close(leaving(Duration.ofSeconds(10)));
                    }
                    deleteRunArtifacts(o.bootstrap(), o.appId());
                }
            });
            Runtime.getRuntime().addShutdownHook(cleanup);
            Result r = run(o, outTopic, events);
            System.out.println(r.json(o));
            cleanup.run();
            Runtime.getRuntime().removeShutdownHook(cleanup);
        }
    }

    /** Records in a topic: end offsets minus start offsets (the generator writes no transaction markers). */
    static long recordsIn(Admin admin, String topic, int partitions) throws Exception {
        return recordsIn(admin, topic, 0, partitions);
    }

    /** Records in partitions [from, to) of a topic. */
    static long recordsIn(Admin admin, String topic, int from, int to) throws Exception {
        Map<TopicPartition, OffsetSpec> earliest = new HashMap<>();
        Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
        for (int p = from; p < to; p++) {
            earliest.put(new TopicPartition(topic, p), OffsetSpec.earliest());
            latest.put(new TopicPartition(topic, p), OffsetSpec.latest());
        }
        var start = admin.listOffsets(earliest).all().get();
        var end = admin.listOffsets(latest).all().get();
        long n = 0;
        for (TopicPartition tp : end.keySet()) {
            n += end.get(tp).offset() - start.get(tp).offset();
        }
        return n;
    }

    record Result(long events, double seconds, double startupS, double closeS, long deadLetters,
                  long[] emitted, long[] applied, long appliedLateByRule, long lateByRule,
                  long droppedMetric, long outputRows, String loadBefore, String loadAfter) {

        long droppedLate() {
            return emitted[0] - applied[0];
        }

        String json(Options o) {
            StringBuilder byDim = new StringBuilder("{");
            long droppedRows = 0;
            for (int d = 0; d < Rows.DIMENSIONS.length; d++) {
                long dropped = emitted[d] - applied[d];
                droppedRows += dropped;
                byDim.append(d == 0 ? "" : ",").append('"').append(Rows.DIMENSIONS[d]).append("\":").append(dropped);
            }
            byDim.append('}');
            // Of the events the totals dropped, those that the per-partition rule would have kept.
            long droppedOnTime = droppedLate() - (lateByRule - appliedLateByRule);
            return String.format(Locale.ROOT,
                    "{\"name\":\"kafka_streams\",\"threads\":%d,\"guarantee\":\"%s\",\"events\":%d,"
                            + "\"seconds\":%.3f,\"events_per_sec\":%.0f,\"dropped_late\":%d,\"grace_ms\":%d,"
                            + "\"topic\":\"%s\",\"startup_s\":%.3f,\"close_s\":%.3f,\"dead_letters\":%d,"
                            + "\"dropped_rows_by_collection\":%s,\"dropped_rows\":%d,\"dropped_records_metric\":%d,"
                            + "\"late_by_partition_rule\":%d,\"dropped_but_on_time_by_rule\":%d,"
                            + "\"applied_but_late_by_rule\":%d,\"output_rows\":%d,"
                            + "\"loadavg_before\":\"%s\",\"loadavg_after\":\"%s\"}",
                    o.threads(), o.guarantee(), events, seconds, events / seconds, droppedLate(), o.graceMs(),
                    o.topic(), startupS, closeS, deadLetters, byDim, droppedRows, droppedMetric,
                    lateByRule, droppedOnTime, appliedLateByRule, outputRows, loadBefore, loadAfter);
        }
    }

    static Result run(Options o, String outTopic, long events) throws Exception {
        Progress progress = new Progress();
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, o.appId());
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, o.bootstrap());
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, o.guarantee());
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, o.threads());
        Files.createDirectories(o.stateDir());
        p.put(StreamsConfig.STATE_DIR_CONFIG, o.stateDir().toString());
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        // Everything else is Kafka Streams' default (commit interval 30 s, or 100 ms with exactly-once;
        // 10 MiB record cache; RocksDB window store with a changelog topic).

        var topology = Job.build(o.topic(), outTopic, Duration.ofMillis(o.windowMs()), Duration.ofMillis(o.graceMs()),
                o.ruleLatenessMs(), progress);
        KafkaStreams streams = new KafkaStreams(topology, p);
        RUNNING.set(streams);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        streams.setUncaughtExceptionHandler(e -> {
            failure.compareAndSet(null, e);
            return StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });

        String loadBefore = loadavg();
        long started = System.nanoTime();
        streams.start();
        long deadline = started + o.timeoutS() * 1_000_000_000L;
        long nextReport = started + 5_000_000_000L;
        long done;
        while (true) {
            long now = System.nanoTime();
            if (failure.get() != null) {
                streams.close(Duration.ofSeconds(30));
                throw new IllegalStateException("Kafka Streams failed", failure.get());
            }
            KafkaStreams.State state = streams.state();
            if (state == KafkaStreams.State.ERROR || state == KafkaStreams.State.NOT_RUNNING
                    || state == KafkaStreams.State.PENDING_ERROR) {
                throw new IllegalStateException("Kafka Streams stopped: " + state);
            }
            // sourceRecords is bumped after a record's rows were emitted, so once it reaches the topic's
            // size the emitted counts are final.
            long seen = progress.sourceRecords.sum();
            long emitted = progress.rowsEmittedTotal();
            long arrived = progress.rowsArrived.sum();
            if (seen >= events && arrived >= emitted) {
                done = now;
                break;
            }
            if (now > deadline) {
                streams.close(Duration.ofSeconds(30));
                throw new IllegalStateException("timed out after " + o.timeoutS() + " s: " + seen + "/" + events
                        + " records, " + arrived + "/" + emitted + " rows aggregated");
            }
            if (now > nextReport) {
                log("%d/%d records, %d/%d rows aggregated, %.1f s", seen, events, arrived, emitted,
                        (now - started) / 1e9);
                nextReport = now + 5_000_000_000L;
            }
            Thread.sleep(10);
        }
        long first = progress.firstRecordNanos.get();
        String loadAfter = loadavg();
        // The last row is being aggregated right now on its stream thread; let it finish before reading
        // the task-level metric (task metrics disappear at close).
        Thread.sleep(500);
        long droppedMetric = sumMetric(streams.metrics(), "dropped-records-total", "stream-task-metrics");
        long closing = System.nanoTime();
        if (!streams.close(leaving(Duration.ofSeconds(120)))) {
            throw new IllegalStateException("Kafka Streams did not close within 120 s");
        }
        long closed = System.nanoTime();
        streams.cleanUp();

        Output out = readOutput(o.bootstrap(), outTopic);
        long[] emitted = new long[Rows.DIMENSIONS.length];
        for (int d = 0; d < emitted.length; d++) {
            emitted[d] = progress.rowsEmitted[d].sum();
        }
        return new Result(events, (done - first) / 1e9, (first - started) / 1e9, (closed - closing) / 1e9,
                progress.deadLetters.sum(), emitted, out.downloads, out.lateByRule[0],
                progress.lateByRule.sum(), droppedMetric, out.rows, loadBefore, loadAfter);
    }

    /** The 1, 5 and 15 minute load averages (Linux), to judge how busy the machine was. */
    static String loadavg() {
        try {
            String[] f = Files.readString(Path.of("/proc/loadavg")).trim().split(" ");
            return f[0] + " " + f[1] + " " + f[2];
        } catch (Exception e) {
            return "";
        }
    }

    /** The application being run, for the shutdown hook. */
    private static final AtomicReference<KafkaStreams> RUNNING = new AtomicReference<>();

    /** Close options that leave the group, so that the run's consumer group can be deleted right after. */
    static CloseOptions leaving(Duration timeout) {
        return CloseOptions.timeout(timeout)
                .withGroupMembershipOperation(CloseOptions.GroupMembershipOperation.LEAVE_GROUP);
    }

    static long sumMetric(Map<MetricName, ? extends Metric> metrics, String name, String group) {
        double sum = 0;
        for (var e : metrics.entrySet()) {
            if (e.getKey().name().equals(name) && e.getKey().group().equals(group)
                    && e.getValue().metricValue() instanceof Number n) {
                sum += n.doubleValue();
            }
        }
        return Math.round(sum);
    }

    /** The final value of every output row, summed per collection. */
    record Output(long[] downloads, long[] lateByRule, long rows) {}

    static Output readOutput(String bootstrap, String outTopic) {
        Properties c = new Properties();
        c.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        c.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        c.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "5000");
        Map<String, byte[]> latest = new HashMap<>();
        try (KafkaConsumer<String, byte[]> consumer =
                     new KafkaConsumer<>(c, new StringDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> tps = consumer.partitionsFor(outTopic).stream()
                    .map(pi -> new TopicPartition(outTopic, pi.partition()))
                    .collect(Collectors.toCollection(ArrayList::new));
            consumer.assign(tps);
            consumer.seekToBeginning(tps);
            Map<TopicPartition, Long> end = consumer.endOffsets(tps);
            while (tps.stream().anyMatch(tp -> consumer.position(tp) < end.get(tp))) {
                for (ConsumerRecord<String, byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                    latest.put(r.key(), r.value());
                }
            }
        }
        long[] downloads = new long[Rows.DIMENSIONS.length];
        long[] late = new long[Rows.DIMENSIONS.length];
        for (var e : latest.entrySet()) {
            int d = Rows.dimensionOf(e.getKey());
            Sums s = Sums.fromBytes(e.getValue());
            downloads[d] += s.downloads;
            late[d] += s.lateByRule;
        }
        return new Output(downloads, late, latest.size());
    }

    /** Deletes the run's internal and output topics (all named "<app id>-…") and its consumer group. */
    static void deleteRunArtifacts(String bootstrap, String appId) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(p)) {
            List<String> mine = admin.listTopics().names().get().stream()
                    .filter(t -> t.startsWith(appId + "-"))
                    .toList();
            if (!mine.isEmpty()) {
                admin.deleteTopics(mine).all().get();
            }
            admin.deleteConsumerGroups(List.of(appId)).all().get();
        } catch (Exception e) {
            log("could not delete the topics or group of %s: %s", appId, e);
        }
    }
}
