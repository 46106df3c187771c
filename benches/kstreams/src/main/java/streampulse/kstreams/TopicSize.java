// TopicSize: prints how many records a topic holds (exit 1 when it does not exist), and on stderr how
// many each partition holds; run.sh --suite uses it to decide whether the topic must be generated.
package streampulse.kstreams;

import java.util.List;
import java.util.Properties;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;

public final class TopicSize {
    private TopicSize() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 4 || !args[0].equals("--bootstrap") || !args[2].equals("--topic")) {
            System.err.println("usage: TopicSize --bootstrap HOST:PORT --topic T");
            System.exit(2);
        }
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        try (Admin admin = Admin.create(p)) {
            if (!admin.listTopics().names().get().contains(args[3])) {
                System.exit(1);
            }
            int partitions = admin.describeTopics(List.of(args[3])).allTopicNames().get()
                    .get(args[3]).partitions().size();
            long total = 0;
            for (int i = 0; i < partitions; i++) {
                long n = App.recordsIn(admin, args[3], i, i + 1);
                System.err.printf("partition %d: %d records%n", i, n);
                total += n;
            }
            System.out.println(total);
        }
    }
}
