// The verdict of an independent JSON Schema validator (Ajv, draft 2020-12) on message bodies.
// Usage: node validate.mjs ASYNCAPI.json < [{"event": NAME, "body": "<json text>"}, ...]
//        -> [true|false, ...] (one verdict per input, in order) on stdout
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";

const document = JSON.parse(readFileSync(process.argv[2], "utf8"));
const ajv = new Ajv2020({ strict: false, allErrors: false });
const validators = {};
for (const [name, message] of Object.entries(document.components.messages)) {
  validators[name] = ajv.compile({ ...message.payload, components: document.components });
}
const inputs = JSON.parse(readFileSync(0, "utf8"));
const verdicts = inputs.map(({ event, body }) => {
  let value;
  try {
    value = JSON.parse(body);
  } catch {
    return false;
  }
  return validators[event](value);
});
process.stdout.write(JSON.stringify(verdicts));
