// Sample messages for every event of an AsyncAPI 3.0 document, generated from the payload JSON
// Schemas by json-schema-faker (a generator nobody on this project wrote).
// Usage: node samples.mjs ASYNCAPI.json COUNT [SEED]  ->  {"event": [body, ...], ...} on stdout
import { readFileSync } from "node:fs";
import jsf from "json-schema-faker";

const [file, countArg, seedArg] = process.argv.slice(2);
if (!file || !countArg) {
  console.error("usage: node samples.mjs ASYNCAPI.json COUNT [SEED]");
  process.exit(2);
}
const document = JSON.parse(readFileSync(file, "utf8"));
const count = Number.parseInt(countArg, 10);
let seed = Number.parseInt(seedArg ?? "1", 10);
// A small deterministic generator, so a failing sample can be generated again.
jsf.option({
  random: () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 2147483648;
  },
  alwaysFakeOptionals: false,
  optionalsProbability: 0.5,
  fillProperties: false,
  failOnInvalidTypes: true,
});

const samples = {};
for (const [name, message] of Object.entries(document.components.messages)) {
  // The payload references components/schemas: give the generator the whole components tree.
  const root = { ...message.payload, components: document.components };
  samples[name] = [];
  for (let i = 0; i < count; i += 1) {
    samples[name].push(jsf.generate(root));
  }
}
process.stdout.write(JSON.stringify(samples));
