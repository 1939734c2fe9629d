// Read COUNT messages from QUEUE with amqplib (manual acks) and print what a Node consumer sees.
// Usage: node consume.mjs AMQP_URL QUEUE COUNT TIMEOUT_MS -> [{"fields", "properties", "body"}]
import amqp from "amqplib";

const [url, queue, countArg, timeoutArg] = process.argv.slice(2);
const count = Number.parseInt(countArg, 10);
const connection = await amqp.connect(url);
const channel = await connection.createChannel();
await channel.prefetch(100);
const seen = [];
await new Promise((resolve) => {
  const timer = setTimeout(resolve, Number.parseInt(timeoutArg, 10));
  channel.consume(queue, (message) => {
    seen.push({
      fields: { exchange: message.fields.exchange, routingKey: message.fields.routingKey },
      properties: message.properties,
      body: message.content.toString("utf8"),
    });
    channel.ack(message);
    if (seen.length >= count) {
      clearTimeout(timer);
      resolve();
    }
  });
});
await channel.close();
await connection.close();
process.stdout.write(JSON.stringify(seen));
