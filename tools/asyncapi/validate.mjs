// Validate AsyncAPI documents (YAML or JSON) with the official parser, @asyncapi/parser.
//
//   npm ci --prefix tools/asyncapi --ignore-scripts          # once
//   node tools/asyncapi/validate.mjs asyncapi.yaml           # "-" reads stdin
//   node tools/asyncapi/validate.mjs --json a.yaml b.json    # machine-readable, one result each
//
// Several files go through one process so that a batch pays for node's start-up and the
// parser's loading once.
//
// Text output: one line per diagnostic ("error|warning|info|hint <code> <path>: <message>")
// and a "valid: ..." / "invalid: ..." line per file, the file name in front when there are
// several. Exit 0 when no diagnostic of any file has severity error, 1 when one has (or the
// parser returns no document), 2 when a file cannot be read or no file is given.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const require = createRequire(import.meta.url);
const parserVersion = require("@asyncapi/parser/package.json").version;

const severityNames = {
  [DiagnosticSeverity.Error]: "error",
  [DiagnosticSeverity.Warning]: "warning",
  [DiagnosticSeverity.Information]: "info",
  [DiagnosticSeverity.Hint]: "hint",
};

const args = process.argv.slice(2);
const asJson = args.includes("--json");
const files = args.filter((a) => a !== "--json");
if (files.length === 0) {
  console.error("usage: node validate.mjs [--json] FILE|- [FILE...]");
  process.exit(2);
}

const parser = new Parser();
const results = [];
for (const file of files) {
  let text;
  try {
    text = readFileSync(file === "-" ? 0 : file, "utf8");
  } catch (err) {
    console.error(`error: cannot read ${file}: ${err.message}`);
    process.exit(2);
  }
  const source = file === "-" ? undefined : resolve(file);
  const { document, diagnostics } = await parser.parse(text, { source });
  const found = diagnostics.map((d) => ({
    severity: severityNames[d.severity] ?? String(d.severity),
    code: String(d.code),
    path: (d.path ?? []).join("."),
    message: d.message,
  }));
  const errors = found.filter((d) => d.severity === "error").length;
  results.push({
    file,
    valid: errors === 0 && document !== undefined,
    errors,
    warnings: found.filter((d) => d.severity === "warning").length,
    diagnostics: found,
  });
}

if (asJson) {
  console.log(JSON.stringify({ parser: parserVersion, results }, null, 2));
} else {
  for (const r of results) {
    const prefix = files.length > 1 ? `${r.file}: ` : "";
    for (const d of r.diagnostics) {
      console.log(`${prefix}${d.severity} ${d.code} ${d.path || "(root)"}: ${d.message}`);
    }
    const verdict = r.valid ? "valid" : "invalid";
    console.log(
      `${prefix}${verdict}: @asyncapi/parser ${parserVersion}: ` +
        `${r.errors} errors, ${r.warnings} warnings`,
    );
  }
}
process.exit(results.every((r) => r.valid) ? 0 : 1);
