// Readiness probe and topic setup for scripts/dev-stack, in one JVM (each JVM start costs seconds on 2 cores).
// dev-stack (install_kafka in scripts/devstack/kafka.sh) compiles it against the cached Kafka jars into
// <cache>/devstack/kafka-<version>/helper-<first 12 hex digits of this file's SHA-256>, so an edit here recompiles it.
//
//   java DevstackAdmin ensure <bootstrap> <timeout-seconds> [topic:partitions ...]
//     waits until the broker answers a metadata request (describeCluster + listTopics), creates the missing
//     topics (replication factor 1), then waits until every partition of them has a leader.
import java.util.*;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.common.KafkaFuture;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.TopicExistsException;

public class DevstackAdmin {
    public static void main(String[] args) throws Exception {
        if (args.length < 3 || !args[0].equals("ensure")) {
            System.err.println("usage: DevstackAdmin ensure <bootstrap> <timeout-seconds> [topic:partitions ...]");
            System.exit(2);
        }
        String bootstrap = args[1];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[2]));
        Map<String, Integer> wanted = new LinkedHashMap<>();
        for (int i = 3; i < args.length; i++) {
            String[] p = args[i].split(":");
            wanted.put(p[0], p.length > 1 ? Integer.parseInt(p[1]) : 1);
        }
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "3000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        try (Admin admin = Admin.create(props)) {
            // 1. the broker answers metadata requests
            Set<String> existing = null;
            Exception last = null;
            while (existing == null) {
                try {
                    int nodes = admin.describeCluster().nodes().get(5, TimeUnit.SECONDS).size();
                    if (nodes > 0) existing = admin.listTopics().names().get(5, TimeUnit.SECONDS);
                } catch (Exception e) {
                    last = e;
                }
                if (existing == null) {
                    if (System.nanoTime() > deadline) fail("broker at " + bootstrap + " did not answer", last);
                    Thread.sleep(250);
                }
            }
            // 2. missing topics
            List<NewTopic> create = new ArrayList<>();
            for (Map.Entry<String, Integer> t : wanted.entrySet())
                if (!existing.contains(t.getKey())) create.add(new NewTopic(t.getKey(), t.getValue(), (short) 1));
            for (Map.Entry<String, KafkaFuture<Void>> r : admin.createTopics(create).values().entrySet()) {
                try {
                    r.getValue().get(30, TimeUnit.SECONDS);
                    System.out.println("created topic " + r.getKey() + " (" + wanted.get(r.getKey()) + " partitions)");
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) fail("creating " + r.getKey(), e);
                }
            }
            // 3. every partition has a leader
            while (!wanted.isEmpty()) {
                String missing = null;
                try {
                    Map<String, TopicDescription> d =
                        admin.describeTopics(wanted.keySet()).allTopicNames().get(5, TimeUnit.SECONDS);
                    for (TopicDescription td : d.values())
                        for (TopicPartitionInfo p : td.partitions())
                            if (p.leader() == null || p.leader().isEmpty()) missing = td.name() + "-" + p.partition();
                } catch (Exception e) {
                    last = e;
                    missing = "describe failed";
                }
                if (missing == null) break;
                if (System.nanoTime() > deadline) fail("no leader yet for " + missing, last);
                Thread.sleep(200);
            }
        }
    }

    static void fail(String what, Exception e) {
        System.err.println("DevstackAdmin: " + what + (e == null ? "" : ": " + e));
        System.exit(1);
    }
}
