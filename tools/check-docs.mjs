// npm run docs:check — the docs say only what the code does.
//
// 1. Every ```ts block of README.md, CONTRIBUTING.md, SECURITY.md, libs/api-token/README.md and docs/*.md
//    compiles against the library (its source, as `nestjs-api-token`) with the repository's TypeScript,
//    strict. Context a reader does not need goes in an HTML comment right before the block,
//    `<!-- ts-prelude … -->`, which is prepended to the snippet.
// 2. Every option, environment variable, CLI command and flag, metric and `api_token_*` name the docs
//    mention exists in the code; every module option is in the README's table, every metric in
//    docs/observability.md, every span and span attribute in docs/tracing.md, every variable the demo
//    and the CLI read in the README.
// Prints `docs:check: …` last; exits 1 on any problem.
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const started = Date.now();
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const ts = createRequire(join(root, 'package.json'))('typescript');
const read = (path) => readFileSync(join(root, path), 'utf8');
const problems = [];
const problem = (file, line, message) => problems.push(`${file}:${line}: ${message}`);

const docFiles = [
  'README.md',
  'CONTRIBUTING.md',
  'SECURITY.md',
  'libs/api-token/README.md',
  ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`),
];
const docs = docFiles.map((file) => ({ file, text: read(file) }));
const lineAt = (text, index) => text.slice(0, index).split('\n').length;

// ---------------------------------------------------------------------------------------------
// 1. Snippets
// ---------------------------------------------------------------------------------------------
const outDir = join(root, '.tmp', 'docs-check');
rmSync(outDir, { recursive: true, force: true });
mkdirSync(outDir, { recursive: true });
const snippets = [];
for (const { file, text } of docs) {
  const fence = /(?:<!--\s*ts-prelude\n([\s\S]*?)-->\s*\n)?```(?:ts|typescript)\n([\s\S]*?)\n```/g;
  for (const m of text.matchAll(fence)) {
    const prelude = m[1] ?? '';
    const code = m[2];
    const codeLine = lineAt(text, m.index + m[0].indexOf('```')) + 1;
    const name = `${file.replace(/[^A-Za-z0-9]+/g, '_')}_L${codeLine}.ts`;
    const source = `${prelude}\n${code}\nexport {};\n`;
    writeFileSync(join(outDir, name), source);
    snippets.push({ file, codeLine, path: join(outDir, name), codeOffset: prelude.split('\n').length });
  }
}
const options = {
  strict: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.ES2022, // allows top-level await in snippets
  moduleResolution: ts.ModuleResolutionKind.Node10, // as the library's own tsconfig resolves
  lib: ['lib.es2022.d.ts'],
  types: ['node'],
  experimentalDecorators: true,
  emitDecoratorMetadata: true,
  esModuleInterop: true,
  skipLibCheck: true,
  noEmit: true,
  baseUrl: root,
  paths: { 'nestjs-api-token': ['libs/api-token/src/index.ts'], 'nestjs-api-token/env': ['libs/api-token/src/env.ts'], 'nestjs-api-token/admin': ['libs/api-token/src/admin.ts'] },
};
// The library's ambient declarations (types of dependencies that ship none) are roots too, as in its tsconfig.
const ambient = ts.sys.readDirectory(join(root, 'libs/api-token/src'), ['.d.ts']);
const program = ts.createProgram([...snippets.map((s) => s.path), ...ambient], options);
for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
  const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, ' ');
  const snippet = diagnostic.file && snippets.find((s) => resolve(s.path) === resolve(diagnostic.file.fileName));
  if (!snippet) {
    const where = diagnostic.file ? relative(root, diagnostic.file.fileName) : 'tsc';
    problem(where, diagnostic.file ? diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start).line + 1 : 0, message);
    continue;
  }
  const line = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start).line; // 0-based in the generated file
  const inPrelude = line < snippet.codeOffset;
  problem(snippet.file, inPrelude ? snippet.codeLine - 1 : snippet.codeLine + line - snippet.codeOffset, `${inPrelude ? 'ts-prelude: ' : ''}${message}`);
}

// ---------------------------------------------------------------------------------------------
// 2. Names
// ---------------------------------------------------------------------------------------------
const walk = (dir, keep) =>
  readdirSync(join(root, dir), { withFileTypes: true }).flatMap((entry) => {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory()) return entry.name === 'node_modules' || entry.name === 'dist' ? [] : walk(path, keep);
    return keep(entry.name) ? [path] : [];
  });
const codeFiles = [
  ...['libs/api-token/src', 'apps', 'test', 'bench', 'tools', '.ci'].flatMap((dir) => walk(dir, (n) => /\.(ts|mjs|js|sh|py)$/.test(n) || !n.includes('.'))),
  'docker-compose.yml',
  'package.json',
];
const code = codeFiles.map(read).join('\n');
const libCode = walk('libs/api-token/src', (n) => n.endsWith('.ts') && !n.endsWith('.spec.ts')).map(read).join('\n');
const identifiers = new Set(code.match(/[A-Za-z_$][\w$]*/g));

// Names of other software the docs mention (Dify's settings, drivers' and ioredis's options): not ours to check.
const FOREIGN = new Set([
  'ENABLE_API_TOKEN_LAST_USED_UPDATE_TASK', 'API_TOKEN_LAST_USED_UPDATE_INTERVAL', // Dify's Celery beat settings
  'connectionTimeoutMillis', 'keyPrefix', 'api_token_service', // pg, ioredis, Dify's module
  'lookupLocal', // removed in 0.2, named by the upgrade guide
]);

// Module options, from the interface (and the extras set beside them).
const optionsSource = read('libs/api-token/src/api-token.options.ts');
const optionBlock = optionsSource.slice(optionsSource.indexOf('export interface ApiTokenModuleOptions'), optionsSource.indexOf('\n}\n', optionsSource.indexOf('export interface ApiTokenModuleOptions')));
const moduleOptions = new Set([...optionBlock.matchAll(/^ {2}(\w+)\?:/gm)].map((m) => m[1]));
const extrasSource = read('libs/api-token/src/api-token.module-definition.ts');
const extras = new Set([...extrasSource.matchAll(/^ {2}(\w+)\?:/gm)].map((m) => m[1]));

// CLI commands and their flags, from commander's calls.
const cliSource = read('libs/api-token/src/cli/token.cli.ts');
const commands = new Map();
for (const part of cliSource.split(/\.command\('/).slice(1)) {
  const name = part.slice(0, part.indexOf("'"));
  commands.set(name, new Set([...part.matchAll(/\.(?:option|requiredOption)\('(--[\w-]+)/g)].map((m) => m[1])));
}
const allFlags = new Set([...commands.values()].flatMap((flags) => [...flags]));
const GLOBAL_FLAGS = new Set(['--help', '--version']);

// Metrics, as registered for Prometheus.
const metrics = new Set([...read('libs/api-token/src/metrics/prometheus.registration.ts').matchAll(/name: '(api_token_\w+)'/g)].map((m) => m[1]));
const METRIC = /\bapi_token_\w+?_(?:total|seconds|up|listening|listed|entries|pending)(?:_bucket|_sum|_count)?\b/g;

// Environment variables the demo and the CLI read.
const envRead = new Set(
  [read('libs/api-token/src/env/stores.env.ts'), read('apps/demo/src/demo.settings.ts')].flatMap((s) => [...s.matchAll(/\benv\.([A-Z][A-Z0-9_]+)/g)].map((m) => m[1])),
);

let checkedNames = 0;
const inlineSpans = (text) => [...text.matchAll(/(?<!`)`([^`\n]+)`(?!`)/g)].map((m) => ({ value: m[1], index: m.index }));
const codeBlocks = (text) => [...text.matchAll(/```[\w-]*\n([\s\S]*?)\n```/g)].map((m) => ({ value: m[1], index: m.index + m[0].indexOf('\n') + 1 }));

/** A command line of the token CLI: `… token -- <command> [flags]` or `… nestjs-api-token <command> [flags]`. */
function checkCommandLine(file, line, text) {
  const m = /(?:\btoken --|\bnestjs-api-token)\s+([^#\n]*)/.exec(text);
  if (!m) return false;
  const words = m[1].split(/\s+/).filter(Boolean);
  const first = words[0];
  if (!first || first.startsWith('<') || first === '…') return true;
  checkedNames++;
  if (GLOBAL_FLAGS.has(first)) return true;
  const flags = commands.get(first);
  if (!flags) {
    problem(file, line, `CLI command "${first}" does not exist (commands: ${[...commands.keys()].join(', ')})`);
    return true;
  }
  for (const word of words.slice(1)) {
    for (const flag of word.match(/--[a-z][\w-]*/g) ?? []) {
      checkedNames++;
      if (!flags.has(flag) && !GLOBAL_FLAGS.has(flag)) problem(file, line, `CLI flag ${flag} is not an option of "${first}"`);
    }
  }
  return true;
}

for (const { file, text } of docs) {
  for (const block of codeBlocks(text)) {
    block.value.split('\n').forEach((l, i) => checkCommandLine(file, lineAt(text, block.index) + i, l));
  }
  const outsideBlocks = text.replace(/```[\s\S]*?```/g, (b) => b.replace(/[^\n]/g, ' '));
  for (const { value, index } of inlineSpans(outsideBlocks)) {
    const line = lineAt(text, index);
    if (checkCommandLine(file, line, value)) continue;
    // A CLI flag on its own: `--expires-in`, `--grace D`.
    const flag = /^(--[a-z][\w-]*)/.exec(value);
    if (flag && !/^npm |^docker /.test(value)) {
      checkedNames++;
      if (!allFlags.has(flag[1]) && !GLOBAL_FLAGS.has(flag[1])) problem(file, line, `CLI flag ${flag[1]} does not exist`);
      continue;
    }
    // An environment variable (or a constant): ALL_CAPS with an underscore, maybe `=value`.
    const env = /^([A-Z][A-Z0-9]*_[A-Z0-9_]+)(?:=.*)?$/.exec(value);
    if (env) {
      checkedNames++;
      if (!identifiers.has(env[1]) && !FOREIGN.has(env[1])) problem(file, line, `${env[1]} is not read or defined anywhere in the code`);
      continue;
    }
    // A camelCase name: an option, a method, a field. `name`, `name()`, `Class.name`, `name: value`.
    const camel = /^(?:[A-Z]\w*\.)?([a-z]+[A-Z]\w*)(?:\(\))?(?:[:=].*)?$/.exec(value);
    if (camel) {
      checkedNames++;
      if (!identifiers.has(camel[1]) && !FOREIGN.has(camel[1])) problem(file, line, `\`${camel[1]}\` is not a name in the code`);
    }
  }
  // Metrics and api_token_* names anywhere (tables, prose, code).
  for (const m of text.matchAll(METRIC)) {
    checkedNames++;
    const name = m[0].replace(/_(?:bucket|sum|count)$/, '');
    if (!metrics.has(name)) problem(file, lineAt(text, m.index), `metric ${name} is not registered (libs/api-token/src/metrics/prometheus.registration.ts)`);
  }
  for (const m of text.matchAll(/\bapi_token(?:s|_[a-z_]+)?\b/g)) {
    if (METRIC.test(m[0]) || (METRIC.lastIndex = 0)) continue;
    checkedNames++;
    const name = m[0].replace(/_$/, '');
    if (!libCode.includes(name) && !FOREIGN.has(name)) problem(file, lineAt(text, m.index), `${name} does not appear in libs/api-token/src`);
  }
  // Option tables: the first column of a table whose header starts with "option".
  for (const table of text.matchAll(/^\| option \|[^\n]*\n\|[-| :]+\|\n((?:\|[^\n]*\n?)*)/gm)) {
    for (const row of table[1].split('\n').filter(Boolean)) {
      const name = /^\| `(\w+)`/.exec(row)?.[1];
      checkedNames++;
      if (!name || !(moduleOptions.has(name) || extras.has(name))) problem(file, lineAt(text, table.index), `options table row "${row.slice(0, 40)}…" names no module option`);
    }
  }
}

// Relative links: the file exists, and the anchor is one of its headings (GitHub's slugs).
const slug = (heading) => heading.trim().toLowerCase().replace(/[^\w\- ]+/g, '').replace(/ /g, '-');
const anchorsOf = (text) => new Set([...text.replace(/```[\s\S]*?```/g, '').matchAll(/^#+ (.+)$/gm)].map((m) => slug(m[1].replace(/`/g, ''))));
for (const { file, text } of docs) {
  for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
    const target = m[1];
    if (/^[a-z]+:/.test(target)) continue; // https:, mailto:
    const [path, anchor] = target.split('#');
    const targetFile = path ? relative(root, resolve(root, dirname(file), path)) : file;
    let targetText;
    try {
      targetText = read(targetFile);
    } catch {
      if (!path.endsWith('/')) problem(file, lineAt(text, m.index), `link to ${target}: no such file`);
      continue;
    }
    checkedNames++;
    if (anchor && targetFile.endsWith('.md') && !anchorsOf(targetText).has(anchor)) problem(file, lineAt(text, m.index), `link to ${target}: no such heading`);
  }
}

// Completeness: what users must find documented.
const readme = read('README.md');
const optionsTable = /^\| option \|[\s\S]*?\n\n/m.exec(readme)?.[0] ?? '';
for (const name of moduleOptions) if (!optionsTable.includes(`\`${name}\``)) problem('README.md', 0, `option ${name} is missing from the options table`);
const observability = read('docs/observability.md');
for (const name of metrics) if (!observability.includes(name)) problem('docs/observability.md', 0, `metric ${name} is not documented`);
// Spans and their attributes: every name the tracing module declares is in docs/tracing.md, and every
// dotted `api_token.*` name a page quotes is one it declares.
const tracingCode = read('libs/api-token/src/metrics/api-token.tracing.ts');
const traceNames = new Set([...tracingCode.matchAll(/'(api_token\.[a-z_.]+|error\.type)'/g)].map((m) => m[1]));
const tracingDoc = read('docs/tracing.md');
for (const name of traceNames) if (!tracingDoc.includes(`\`${name}\``)) problem('docs/tracing.md', 0, `span or attribute ${name} is not documented`);
for (const { file, text } of docs) {
  for (const m of text.matchAll(/`(api_token\.[a-z_.]*[a-z_])`/g)) {
    checkedNames++;
    if (!traceNames.has(m[1])) problem(file, lineAt(text, m.index), `span or attribute ${m[1]} is not declared in libs/api-token/src/metrics/api-token.tracing.ts`);
  }
}
for (const name of envRead) if (!readme.includes(`\`${name}\``)) problem('README.md', 0, `environment variable ${name} (read by the demo or the CLI) is not named`);
for (const name of commands.keys()) if (!read('docs/cli.md').includes(`-- ${name}`)) problem('docs/cli.md', 0, `CLI command ${name} is not documented`);

for (const p of problems) process.stderr.write(`${p}\n`);
process.stdout.write(
  `docs:check: ${docs.length} files, ${snippets.length} TypeScript snippets compiled, ${checkedNames} names checked, ` +
    `${problems.length} problem${problems.length === 1 ? '' : 's'} (${((Date.now() - started) / 1000).toFixed(1)} s)\n`,
);
process.exitCode = problems.length ? 1 : 0;
