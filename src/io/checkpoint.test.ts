import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, truncate, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { CheckpointError, readCheckpoint, writeCheckpoint } from './checkpoint.ts';
import { decodeSafetensors, encodeSafetensors, f32Bytes } from './safetensors.ts';

const root = await mkdtemp(join(tmpdir(), 'engram-ckpt-test-'));
after(() => rm(root, { recursive: true, force: true }));

let n = 0;
/** a fresh parent folder per test, so leftovers of one test cannot mask another */
async function fresh(): Promise<{ parent: string; dir: string }> {
  const parent = join(root, `t${n++}`);
  await mkdir(parent);
  return { parent, dir: join(parent, 'ckpt') };
}

const text = (b: Uint8Array | undefined) => new TextDecoder().decode(b);
const sha = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');
/** the pid of a process that has exited (a writer that "crashed") */
const deadPid = spawnSync(process.execPath, ['-e', '']).pid!;

function version(v: number): Record<string, Uint8Array | string> {
  const weights = encodeSafetensors({ w: { dtype: 'F32', shape: [3], data: f32Bytes(Float32Array.of(v, v + 0.5, -v)) } }, { step: String(v) });
  return { 'model.safetensors': weights, 'config.json': JSON.stringify({ version: v }), [`only-in-v${v}.txt`]: `v${v}` };
}

async function assertVersion(dir: string, v: number): Promise<void> {
  const got = await readCheckpoint(dir);
  assert.deepEqual(Object.keys(got).sort(), ['config.json', 'model.safetensors', `only-in-v${v}.txt`]);
  assert.deepEqual(JSON.parse(text(got['config.json'])), { version: v });
  assert.equal(text(got[`only-in-v${v}.txt`]), `v${v}`);
  const { tensors, metadata } = decodeSafetensors(got['model.safetensors']!, 'model.safetensors');
  assert.equal(metadata.step, String(v));
  assert.deepEqual(tensors.w!.data, f32Bytes(Float32Array.of(v, v + 0.5, -v)));
}

async function rejectsWith(p: Promise<unknown>, message: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof CheckpointError, `expected a CheckpointError, got ${String(e)}`);
    assert.match(e.message, message);
    return true;
  });
}

test('round trip: bytes and strings, manifest of sha256, no temp folders left', async () => {
  const { parent, dir } = await fresh();
  const files = { 'a.bin': Uint8Array.of(0, 1, 2, 255), 'b.json': '{"ünï":"✓"}', 'empty.bin': new Uint8Array(0) };
  await writeCheckpoint(dir, files);
  const got = await readCheckpoint(dir);
  assert.deepEqual(Object.keys(got).sort(), ['a.bin', 'b.json', 'empty.bin']);
  assert.deepEqual([...got['a.bin']!], [0, 1, 2, 255]);
  assert.equal(text(got['b.json']), files['b.json']);
  assert.equal(got['empty.bin']!.byteLength, 0);
  const manifest = JSON.parse(await readFile(join(dir, 'checksums.json'), 'utf8')) as unknown;
  assert.deepEqual(manifest, { 'a.bin': sha(files['a.bin']), 'b.json': sha(files['b.json']), 'empty.bin': sha('') });
  assert.deepEqual(await readdir(parent), ['ckpt']);
  // the parent folder is created when missing
  await writeCheckpoint(join(parent, 'deep', 'er', 'ckpt'), files);
  assert.equal(text((await readCheckpoint(join(parent, 'deep', 'er', 'ckpt')))['b.json']), files['b.json']);
});

test('overwrite replaces the whole checkpoint (files of the old one do not linger)', async () => {
  const { parent, dir } = await fresh();
  await writeCheckpoint(dir, version(1));
  await assertVersion(dir, 1);
  await writeCheckpoint(dir, version(2));
  await assertVersion(dir, 2);
  await writeCheckpoint(dir, version(3));
  await assertVersion(dir, 3);
  assert.deepEqual((await readdir(dir)).sort(), ['checksums.json', 'config.json', 'model.safetensors', 'only-in-v3.txt']);
  assert.deepEqual(await readdir(parent), ['ckpt']);
});

test('a changed, truncated or missing file, or a missing manifest, is an error naming folder and file', async () => {
  const { dir } = await fresh();
  await writeCheckpoint(dir, version(1));
  const model = join(dir, 'model.safetensors');
  const good = await readFile(model);

  const flipped = Uint8Array.from(good);
  flipped[flipped.length - 1]! ^= 1;
  await writeFile(model, flipped);
  await rejectsWith(readCheckpoint(dir), new RegExp(`^checkpoint ${dir}: file 'model.safetensors': checksum mismatch \\(file changed or truncated\\)$`));

  await writeFile(model, good);
  await truncate(model, good.length - 4);
  await rejectsWith(readCheckpoint(dir), /file 'model.safetensors': checksum mismatch \(file changed or truncated\)/);

  await unlink(model);
  await rejectsWith(readCheckpoint(dir), new RegExp(`^checkpoint ${dir}: file 'model.safetensors' is missing$`));

  await writeFile(model, good);
  await assertVersion(dir, 1);
  await writeFile(join(dir, 'checksums.json'), '{"config.json": ');
  await rejectsWith(readCheckpoint(dir), /checksums.json is unreadable .*not a complete engram checkpoint/);
  await writeFile(join(dir, 'checksums.json'), '{"../../etc/passwd": "00"}');
  await rejectsWith(readCheckpoint(dir), /'..\/..\/etc\/passwd' is not a valid file name/);
  await unlink(join(dir, 'checksums.json'));
  await rejectsWith(readCheckpoint(dir), new RegExp(`^checkpoint ${dir}: no checksums.json: not a complete engram checkpoint$`));

  await rejectsWith(readCheckpoint(join(dir, 'nowhere')), /nowhere: missing/);
});

test('a write that fails part way leaves the previous checkpoint intact and no temp folder', async () => {
  const { parent, dir } = await fresh();
  await writeCheckpoint(dir, version(1));
  // the producer of the third file throws (e.g. a GPU read-back failing) after two were written
  const files: Record<string, Uint8Array | string> = { 'a.bin': Uint8Array.of(1), 'b.bin': Uint8Array.of(2) };
  Object.defineProperty(files, 'c.bin', {
    enumerable: true,
    get: () => {
      throw new Error('device lost while reading back');
    },
  });
  await rejectsWith(writeCheckpoint(dir, files), /writing 'c.bin' failed \(device lost while reading back\); the previous checkpoint, if any, is untouched/);
  await assertVersion(dir, 1);
  assert.deepEqual(await readdir(parent), ['ckpt']);
  // the file system refuses a file (name too long) after others were written
  await rejectsWith(writeCheckpoint(dir, { 'a.bin': Uint8Array.of(1), [`${'x'.repeat(300)}.bin`]: 'y' }), /writing 'x+\.bin' failed .*ENAMETOOLONG/);
  await assertVersion(dir, 1);
  assert.deepEqual(await readdir(parent), ['ckpt']);
});

test('a writer killed before its rename: the old checkpoint loads; the next write removes the leftover', async () => {
  const { parent, dir } = await fresh();
  await writeCheckpoint(dir, version(1));
  // what a crashed writer leaves: a temp folder with some files and no manifest
  const leftover = `${dir}.tmp-${deadPid}-0badc0de`;
  await mkdir(leftover);
  await writeFile(join(leftover, 'model.safetensors'), Uint8Array.of(1, 2, 3));
  await assertVersion(dir, 1);
  await writeCheckpoint(dir, version(2));
  await assertVersion(dir, 2);
  assert.deepEqual(await readdir(parent), ['ckpt']);
});

test('a writer process killed (SIGKILL) part way through: the old checkpoint loads', async () => {
  const { parent, dir } = await fresh();
  await writeCheckpoint(dir, version(1));
  // a real process death at a known point: the child kills itself while producing its 4th file
  const code = `
    import { writeCheckpoint } from ${JSON.stringify(new URL('./checkpoint.ts', import.meta.url).href)};
    const files = {};
    for (let i = 0; i < 6; i++) Object.defineProperty(files, 'f' + i + '.bin', { enumerable: true, get() {
      if (i === 3) process.kill(process.pid, 'SIGKILL');
      return new Uint8Array(4096).fill(i);
    } });
    await writeCheckpoint(${JSON.stringify(dir)}, files);`;
  const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { encoding: 'utf8' });
  assert.equal(child.signal, 'SIGKILL', child.stderr);
  const left = (await readdir(parent)).filter((f) => f !== 'ckpt');
  assert.equal(left.length, 1, 'the dead writer left its temp folder');
  assert.match(left[0]!, new RegExp(`^ckpt\\.tmp-${child.pid}-`));
  assert.deepEqual((await readdir(join(parent, left[0]!))).sort(), ['f0.bin', 'f1.bin', 'f2.bin']);
  await assertVersion(dir, 1);
  await writeCheckpoint(dir, version(2));
  await assertVersion(dir, 2);
  assert.deepEqual(await readdir(parent), ['ckpt']);
});

test('a writer killed between its two renames: the complete new copy is read, else the old', async () => {
  const { parent, dir } = await fresh();
  await writeCheckpoint(dir, version(1));
  await writeCheckpoint(join(parent, 'staging'), version(2));
  // the state after `<dir>` -> `.old-*` and before `.tmp-*` -> `<dir>`: both complete, no <dir>
  await rename(dir, `${dir}.old-${deadPid}-aaaa`);
  await rename(join(parent, 'staging'), `${dir}.tmp-${deadPid}-bbbb`);
  await assertVersion(dir, 2);
  // had the crash come before the new manifest was written, the old one is the complete copy
  await unlink(join(`${dir}.tmp-${deadPid}-bbbb`, 'checksums.json'));
  await assertVersion(dir, 1);
  // and the next write cleans both up
  await writeCheckpoint(dir, version(3));
  await assertVersion(dir, 3);
  assert.deepEqual(await readdir(parent), ['ckpt']);
});

test('leftovers of a writer still running are not removed', async () => {
  const { parent, dir } = await fresh();
  const live = `${dir}.tmp-${process.ppid}-cafe`; // the parent process: alive
  await mkdir(live);
  await writeCheckpoint(dir, version(1));
  assert.deepEqual((await readdir(parent)).sort(), ['ckpt', `ckpt.tmp-${process.ppid}-cafe`]);
});

test('bad file names and a folder that is not a checkpoint are refused', async () => {
  const { dir } = await fresh();
  for (const name of ['../escape', 'sub/file', 'checksums.json', '', '..', 'a\\b']) {
    await rejectsWith(writeCheckpoint(dir, { [name]: 'x' }), /is not a valid file name/);
  }
  await mkdir(dir);
  await writeFile(join(dir, 'precious.txt'), 'user data');
  await rejectsWith(writeCheckpoint(dir, version(1)), /the folder exists and is not an engram checkpoint \(no checksums.json\); refusing to replace it/);
  assert.equal(await readFile(join(dir, 'precious.txt'), 'utf8'), 'user data');
  await writeFile(`${dir}.file`, 'x');
  await rejectsWith(writeCheckpoint(`${dir}.file`, version(1)), /is a file, not a folder/);
  // an empty folder is fine to fill
  await rm(dir, { recursive: true });
  await mkdir(dir);
  await writeCheckpoint(dir, version(1));
  await assertVersion(dir, 1);
});
