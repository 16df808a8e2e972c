#!/usr/bin/env node
// Makes the pinned solc-js answer `solc --version` and `solc --standard-json` like a native solc,
// so py-solc-x and crytic-compile (slither) can use it where no native binary can be downloaded.
// Only the standard-JSON interface is offered: it is the one interface both tools need, and the
// compiler inside is the same one a native solc of the pinned version runs.
'use strict';

const fs = require('fs');
const path = require('path');
const util = require('util');

// Anything the compiler module logs (Emscripten prints through console.log) would corrupt the
// JSON on stdout, so route it to stderr before the module is loaded and captures console.log.
const toStderr = (...args) => process.stderr.write(util.format(...args) + '\n');
console.log = toStderr;
console.info = toStderr;

// The script lives in <root>/engine/chain/; resolving from the root keeps the compiler the one
// pinned in the project's package.json, whatever the caller's working directory is.
const PROJECT_ROOT = path.resolve(__dirname, '..', '..', '..');
const solc = require(require.resolve('solc', { paths: [PROJECT_ROOT] }));

const VALUE_OPTIONS = new Set(['--allow-paths', '--base-path', '--include-path', '--json-indent']);
const FLAG_OPTIONS = new Set(['--standard-json', '--pretty-json', '--version', '--help']);
const USAGE = 'Usage: solc --version | solc --standard-json [--base-path DIR] ' +
  '[--include-path DIR]... [--allow-paths DIRS] [--pretty-json] [--json-indent N] [FILE|-]\n';

class UsageError extends Error {}

// Writes and exits only once the data has reached the OS: exiting earlier truncates large outputs
// on a pipe.
function finish(stream, text, exitCode) {
  stream.write(text, () => process.exit(exitCode));
}

// Accepts the option spellings native solc's parser accepts (`--opt value` and `--opt=value`)
// and reports unknown options with native solc's message, which py-solc-x recognises.
function parseArgs(argv) {
  const options = { includePaths: [], positional: [] };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (!arg.startsWith('--')) {
      options.positional.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg : arg.slice(0, eq);
    if (FLAG_OPTIONS.has(name) && eq === -1) {
      options[name] = true;
      continue;
    }
    if (!VALUE_OPTIONS.has(name)) {
      throw new UsageError(`unrecognised option '${arg}'`);
    }
    let value = eq === -1 ? argv[i + 1] : arg.slice(eq + 1);
    if (eq === -1) {
      i += 1;
    }
    if (value === undefined || value === '') {
      throw new UsageError(`the required argument for option '${name}' is missing`);
    }
    if (name === '--include-path') {
      options.includePaths.push(value);
    } else {
      options[name] = value;
    }
  }
  if (options.includePaths.length > 0 && options['--base-path'] === undefined) {
    throw new UsageError('--include-path option requires a non-empty base path.');
  }
  if (options.positional.length > 1) {
    throw new UsageError('--standard-json accepts at most one input file.');
  }
  return options;
}

// Native solc's file loader: a source unit name is looked up under the base path (the working
// directory when none is given) and then under each include path. The project root and its
// node_modules come last so imports resolve when a caller passes no paths at all; allowed paths
// are accepted but not enforced, as the shim only ever runs for this project.
function makeImportCallback(basePath, includePaths) {
  const roots = [basePath ?? '', ...includePaths, PROJECT_ROOT, path.join(PROJECT_ROOT, 'node_modules')];
  return (sourceUnitName) => {
    const searched = [];
    for (const root of roots) {
      const candidate = root === '' ? path.resolve(sourceUnitName) : path.join(root, sourceUnitName);
      searched.push(`"${candidate}"`);
      try {
        return { contents: fs.readFileSync(candidate, 'utf8') };
      } catch (error) {
        if (error.code !== 'ENOENT' && error.code !== 'EISDIR') {
          return { error: `Cannot read "${candidate}": ${error.message}` };
        }
      }
    }
    return { error: `File not found. Searched the following locations: ${searched.join(', ')}.` };
  };
}

async function readInput(positional) {
  if (positional.length === 1 && positional[0] !== '-') {
    return fs.readFileSync(positional[0], 'utf8');
  }
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function formatOutput(output, options) {
  if (options['--json-indent'] === undefined && !options['--pretty-json']) {
    return output + '\n';
  }
  const indent = Number.parseInt(options['--json-indent'] ?? '2', 10);
  if (!Number.isInteger(indent) || indent < 0) {
    throw new UsageError(`Invalid option to --json-indent: ${options['--json-indent']}`);
  }
  return JSON.stringify(JSON.parse(output), null, indent) + '\n';
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  if (options['--version']) {
    finish(process.stdout,
      `solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`, 0);
    return;
  }
  if (options['--help']) {
    finish(process.stdout, USAGE, 0);
    return;
  }
  if (!options['--standard-json']) {
    throw new UsageError('this solc only supports --version and --standard-json');
  }
  const input = await readInput(options.positional);
  const importCallback = makeImportCallback(options['--base-path'], options.includePaths);
  const output = solc.compile(input, { import: importCallback });
  finish(process.stdout, formatOutput(output, options), 0);
}

main().catch((error) => {
  const message = error instanceof UsageError ? `${error.message}\n${USAGE}` : `${error.stack}\n`;
  finish(process.stderr, message, error instanceof UsageError ? 1 : 2);
});
