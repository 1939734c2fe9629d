// The RabbitMQ Java client as a baseline for `python -m bench` (Debian's librabbitmq-client-java).
// Same method as the Python cases: 256-byte JSON body, persistent, durable classic queue through
// the default exchange; publish with confirms and mandatory, at most WINDOW unconfirmed;
// consume a pre-filled queue with manual acks, one per message.
//
//   java -cp amqp-client.jar:slf4j-api.jar:. AmqpBaseline publish URL QUEUE SECONDS WINDOW WARMUP [ours]
//     (ours: every message carries amqp-bus's properties, see oursProperties; else two)
//   java -cp ... AmqpBaseline consume URL QUEUE COUNT PREFETCH
// prints one JSON line: {"messages": N, "seconds": S, "msg_s": R, "cpu": C}
import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.util.Date;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ConcurrentNavigableMap;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

public final class AmqpBaseline {
  private static final AMQP.BasicProperties PROPS =
      new AMQP.BasicProperties.Builder().contentType("application/json").deliveryMode(2).build();

  /**
   * The properties amqp-bus puts on every message: a new message id (which the message also
   * correlates with), the time and the publishing program, besides PROPS.
   */
  private static AMQP.BasicProperties oursProperties() {
    String id = UUID.randomUUID().toString();
    return new AMQP.BasicProperties.Builder()
        .contentType("application/json")
        .deliveryMode(2)
        .messageId(id)
        .correlationId(id)
        .timestamp(new Date())
        .appId("bench")
        .build();
  }

  private static byte[] body() {
    String head = "{\"event\":\"bench\",\"pad\":\"";
    String tail = "\"}";
    return (head + "x".repeat(256 - head.length() - tail.length()) + tail)
        .getBytes(StandardCharsets.UTF_8);
  }

  private static long cpuNanos() {
    return ((com.sun.management.OperatingSystemMXBean)
            ManagementFactory.getOperatingSystemMXBean())
        .getProcessCpuTime();
  }

  private static void result(long count, double seconds, double cpuSeconds) {
    System.out.printf(
        "{\"messages\": %d, \"seconds\": %.6f, \"msg_s\": %.3f, \"cpu\": %.4f}%n",
        count, seconds, count / seconds, cpuSeconds / seconds);
  }

  /** Publishes until stop; returns the count once every confirm has arrived. */
  private static long publishWindow(Channel ch, String queue, byte[] body, int window,
      long deadlineNanos, long limit, boolean ours) throws Exception {
    Semaphore permits = new Semaphore(window);
    ConcurrentNavigableMap<Long, Boolean> outstanding = new ConcurrentSkipListMap<>();
    AtomicLong failed = new AtomicLong();
    ch.clearConfirmListeners();
    ch.clearReturnListeners();
    ch.addReturnListener(r -> failed.incrementAndGet());
    ch.addConfirmListener(
        (seq, multiple) -> settle(outstanding, permits, seq, multiple),
        (seq, multiple) -> {
          failed.incrementAndGet();
          settle(outstanding, permits, seq, multiple);
        });
    long count = 0;
    while (count < limit && System.nanoTime() < deadlineNanos) {
      permits.acquire();
      outstanding.put(ch.getNextPublishSeqNo(), Boolean.TRUE);
      ch.basicPublish("", queue, true, ours ? oursProperties() : PROPS, body);
      count++;
    }
    permits.acquire(window); // every confirm is in
    if (failed.get() > 0) {
      throw new IllegalStateException(failed.get() + " publishes nacked or returned");
    }
    return count;
  }

  private static void settle(ConcurrentNavigableMap<Long, Boolean> outstanding, Semaphore permits,
      long seq, boolean multiple) {
    if (multiple) {
      Map<Long, Boolean> done = outstanding.headMap(seq, true);
      int n = done.size();
      done.clear();
      permits.release(n);
    } else if (outstanding.remove(seq) != null) {
      permits.release();
    }
  }

  private static void publish(String url, String queue, double seconds, int window, int warmup,
      boolean ours) throws Exception {
    ConnectionFactory factory = new ConnectionFactory();
    factory.setUri(url);
    try (Connection connection = factory.newConnection("bench java publish")) {
      Channel ch = connection.createChannel();
      ch.queueDeclare(queue, true, false, false, Map.of("x-queue-type", "classic"));
      ch.queuePurge(queue);
      ch.confirmSelect();
      byte[] body = body();
      publishWindow(ch, queue, body, window, Long.MAX_VALUE, warmup, ours);
      ch.queuePurge(queue);
      long cpu = cpuNanos();
      long start = System.nanoTime();
      long count = publishWindow(ch, queue, body, window, start + (long) (seconds * 1e9),
          Long.MAX_VALUE, ours);
      double elapsed = (System.nanoTime() - start) / 1e9;
      result(count, elapsed, (cpuNanos() - cpu) / 1e9);
      ch.queuePurge(queue);
    }
  }

  private static void consume(String url, String queue, long count, int prefetch)
      throws Exception {
    ConnectionFactory factory = new ConnectionFactory();
    factory.setUri(url);
    try (Connection connection = factory.newConnection("bench java consume")) {
      Channel ch = connection.createChannel();
      ch.basicQos(prefetch);
      CountDownLatch done = new CountDownLatch(1);
      AtomicLong seen = new AtomicLong();
      long cpu = cpuNanos();
      long start = System.nanoTime();
      ch.basicConsume(queue, false, new DefaultConsumer(ch) {
        @Override
        public void handleDelivery(String tag, Envelope envelope, AMQP.BasicProperties props,
            byte[] body) throws java.io.IOException {
          getChannel().basicAck(envelope.getDeliveryTag(), false);
          if (seen.incrementAndGet() == count) {
            done.countDown();
          }
        }
      });
      if (!done.await(600, TimeUnit.SECONDS)) {
        throw new IllegalStateException("consumed " + seen.get() + " of " + count);
      }
      double elapsed = (System.nanoTime() - start) / 1e9;
      result(count, elapsed, (cpuNanos() - cpu) / 1e9);
    }
  }

  public static void main(String[] args) throws Exception {
    if (args.length >= 6 && args[0].equals("publish")) {
      boolean ours = args.length >= 7 && args[6].equals("ours");
      publish(args[1], args[2], Double.parseDouble(args[3]), Integer.parseInt(args[4]),
          Integer.parseInt(args[5]), ours);
    } else if (args.length >= 5 && args[0].equals("consume")) {
      consume(args[1], args[2], Long.parseLong(args[3]), Integer.parseInt(args[4]));
    } else {
      System.err.println("usage: AmqpBaseline publish URL QUEUE SECONDS WINDOW WARMUP [minimal|ours]"
          + " | consume URL QUEUE COUNT PREFETCH");
      System.exit(2);
    }
  }
}
