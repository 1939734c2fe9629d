// Publish messages the way any Node service would, with amqplib: confirmed and mandatory.
// Usage: node publish.mjs AMQP_URL < [{"exchange", "routing_key", "body", "type"?, "message_id"?,
//        "headers"?}, ...]  -> {"confirmed": N, "returned": [index...], "nacked": [index...]}
import { readFileSync } from "node:fs";
import amqp from "amqplib";

const messages = JSON.parse(readFileSync(0, "utf8"));
const connection = await amqp.connect(process.argv[2]);
const channel = await connection.createConfirmChannel();
const returned = [];
channel.on("return", (message) => returned.push(Number(message.properties.headers["x-index"])));
const nacked = [];
const pending = messages.map(
  (m, index) =>
    new Promise((resolve) => {
      const options = {
        mandatory: true,
        persistent: true,
        contentType: "application/json",
        headers: { ...(m.headers ?? {}), "x-index": index },
      };
      if (m.type !== undefined) options.type = m.type;
      if (m.message_id !== undefined) options.messageId = m.message_id;
      channel.publish(m.exchange, m.routing_key, Buffer.from(m.body), options, (err) => {
        if (err) nacked.push(index);
        resolve();
      });
    }),
);
await Promise.all(pending);
await channel.close();
await connection.close();
const confirmed = messages.length - nacked.length;
process.stdout.write(JSON.stringify({ confirmed, returned, nacked }));
