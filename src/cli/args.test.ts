/**
 * The argument parser: negative numbers are taken as values and refused as
 * negative by name; numeric flags are range-checked; real flags still parse.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { blockSizeProblem } from '../common/block-size.js';
import { ArgumentError, parseCommand, PORT_RANGE, type CommandSpec } from './args.js';

const spec: CommandSpec = {
  usage: 'cmd NAME SIZE [flags]',
  summary: 'test',
  positionals: ['NAME', 'SIZE'],
  minPositionals: 0,
  flags: {
    size: { type: 'size', help: '', min: 1 },
    port: { type: 'integer', short: 'p', help: '', ...PORT_RANGE },
    'block-size': { type: 'size', help: '', check: blockSizeProblem },
    name: { type: 'string', help: '' },
    force: { type: 'boolean', short: 'f', help: '' },
  },
};

const refused = (argv: string[], message: RegExp) =>
  assert.throws(
    () => parseCommand(spec, argv),
    (err: Error) => err instanceof ArgumentError && message.test(err.message),
    argv.join(' '),
  );

test('a negative value is the flag’s, refused as negative by name', () => {
  refused(['--size', '-1GiB'], /^--size: must not be negative, got "-1GiB"$/);
  refused(['--size=-1GiB'], /^--size: must not be negative/);
  refused(['--port', '-1'], /^--port: must not be negative/);
  refused(['-p', '-1'], /^--port: must not be negative/);
});

test('a negative positional stays a positional, in its place', () => {
  const parsed = parseCommand(spec, ['x', '-5GiB', '-f']);
  assert.deepEqual(parsed.positionals, ['x', '-5GiB']);
  assert.equal(parsed.values.force, true);
  assert.deepEqual(parseCommand(spec, ['-f', '-5']).positionals, ['-5']);
});

test('numeric flags are range-checked, naming the flag and the range', () => {
  refused(['--port', '70000'], /^--port: expected a whole number from 0 to 65535, got "70000"$/);
  refused(['--port', '1e3'], /^--port: expected a whole number/);
  refused(['--port', ''], /^--port: expected a whole number/);
  refused(['--size', '0'], /^--size: expected a size at least 1 B/);
  refused(['--block-size', '3'], /^--block-size: expected a power of two from 4 KiB to 8 MiB/);
  refused(['--block-size', '1TiB'], /^--block-size: expected a power of two/);
  assert.equal(parseCommand(spec, ['--port', '65535']).values.port, 65535);
  assert.equal(parseCommand(spec, ['--block-size', '1MiB']).values['block-size'], 2 ** 20);
});

test('real flags parse as before', () => {
  const parsed = parseCommand(spec, ['--name', 'a', '-p', '80', '--size=2G', 'n', '-f']);
  assert.equal(parsed.values.name, 'a');
  assert.equal(parsed.values.port, 80);
  assert.equal(parsed.values.size, 2 * 2 ** 30);
  assert.equal(parsed.values.force, true);
  assert.deepEqual(parsed.positionals, ['n']);
  refused(['--sise', '1'], /unknown flag --sise/);
  refused(['-x'], /unknown flag -x/);
  refused(['--port'], /--port: expected a value/);
  assert.deepEqual(parseCommand(spec, ['--', '-f', '-5']).positionals, ['-f', '-5']);
});

test('a flag that may be given more than once keeps every value; another keeps its last', () => {
  const repeated: CommandSpec = {
    usage: 'x',
    summary: 'x',
    flags: {
      'ensure-volume': { type: 'string', multiple: true, help: 'h' },
      name: { type: 'string', help: 'h' },
    },
  };
  const parsed = parseCommand(repeated, [
    '--ensure-volume',
    'a=1GiB',
    '--ensure-volume=b=2GiB',
    '--name',
    'x',
  ]);
  assert.deepEqual(parsed.values['ensure-volume'], ['a=1GiB', 'b=2GiB']);
  assert.equal(parseCommand(repeated, []).values['ensure-volume'], undefined);
});
