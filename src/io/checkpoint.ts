// atomic checkpoint folders: a crash at any moment leaves the previous checkpoint or the new
// one, complete and verifiable, never a mix or a half-written file.
//
// write:  1. every file into a fresh sibling `<dir>.tmp-<pid>-<rand>/`, each fsynced
//         2. `checksums.json` {file: sha256 hex} last, fsynced, then the folder itself fsynced:
//            a folder with a manifest whose checksums verify is by construction complete
//         3. swap: the old `<dir>` is renamed aside to `<dir>.old-<pid>-<rand>`, the temp folder
//            renamed to `<dir>`, the parent fsynced, and only then the old one removed.
//            (POSIX rename cannot replace a non-empty folder, hence two renames.)
// crash points: before 3 the old `<dir>` is untouched (a leftover .tmp is garbage); between
// the two renames `<dir>` is missing but both the new (.tmp, with its manifest) and the old
// (.old) are complete, and readCheckpoint falls back to them (newest verified first); after
// the second rename `<dir>` is the new checkpoint and a leftover .old is garbage. the next
// successful write removes leftovers of writers that are no longer running.
// read:   every file in the manifest is read and its sha256 checked; a mismatch, a missing file
//         or a missing manifest is a CheckpointError naming the folder and the file.
// files are flat (plain names, no sub-folders), written and returned as bytes (strings as UTF-8).
// one writer per folder at a time: two concurrent writers to the same <dir> are not supported.

import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { EngramError } from '../gpu/errors.ts';

/** A checkpoint folder is incomplete, damaged, or could not be written; names the folder and file. */
export class CheckpointError extends EngramError {}

const MANIFEST = 'checksums.json';

const sha256 = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');
const errCode = (e: unknown): string | undefined => (e as NodeJS.ErrnoException | undefined)?.code;

/** A plain file name: no folders, no '.'/'..', not the manifest's own name. */
function checkName(dir: string, name: string): void {
  if (name === '' || name === '.' || name === '..' || /[/\\\0]/.test(name) || name === MANIFEST) {
    throw new CheckpointError(`checkpoint ${dir}: '${name}' is not a valid file name (plain names only, no folders, not '${MANIFEST}')`);
  }
}

async function writeSynced(path: string, data: Uint8Array | string): Promise<void> {
  const fh = await open(path, 'wx');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsync a folder so the names in it (new files, renames) survive a power loss. */
async function syncDir(path: string): Promise<void> {
  let fh;
  try {
    fh = await open(path, 'r');
    await fh.sync();
  } catch (e) {
    // Windows cannot open or fsync a folder; NTFS journals the metadata itself
    if (!['EISDIR', 'EPERM', 'EACCES', 'EINVAL', 'EBADF'].includes(errCode(e) ?? '')) throw e;
  } finally {
    await fh?.close();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (e) {
    if (errCode(e) === 'ENOENT') return false;
    throw e;
  }
}

/** Sibling folders `<dir>.tmp-<pid>-<rand>` / `<dir>.old-<pid>-<rand>` a writer leaves while it runs. */
async function siblings(dir: string): Promise<{ path: string; kind: 'tmp' | 'old'; pid: number }[]> {
  const base = basename(dir);
  let names: string[];
  try {
    names = await readdir(dirname(dir));
  } catch {
    return [];
  }
  const out: { path: string; kind: 'tmp' | 'old'; pid: number }[] = [];
  for (const name of names) {
    if (!name.startsWith(`${base}.`)) continue;
    const m = /^\.(tmp|old)-(\d+)-[0-9a-f]+$/.exec(name.slice(base.length));
    if (m) out.push({ path: join(dirname(dir), name), kind: m[1] as 'tmp' | 'old', pid: Number(m[2]) });
  }
  return out;
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errCode(e) === 'EPERM'; // exists, owned by someone else
  }
}

/**
 * Writes `files` (name -> bytes or UTF-8 text) as the checkpoint folder `dir`, atomically
 * replacing any checkpoint already there (see the header for the protocol). Refuses to replace
 * a non-empty folder that is not an engram checkpoint (no checksums.json).
 */
export async function writeCheckpoint(dir: string, files: Record<string, Uint8Array | string>): Promise<void> {
  dir = resolve(dir);
  const names = Object.keys(files).sort();
  for (const name of names) checkName(dir, name);
  const st = await stat(dir).catch((e: unknown) => {
    if (errCode(e) === 'ENOENT') return undefined;
    throw e;
  });
  if (st && !st.isDirectory()) throw new CheckpointError(`checkpoint ${dir}: exists and is a file, not a folder; refusing to replace it`);
  if (st && !(await exists(join(dir, MANIFEST))) && (await readdir(dir)).length > 0) {
    throw new CheckpointError(`checkpoint ${dir}: the folder exists and is not an engram checkpoint (no ${MANIFEST}); refusing to replace it`);
  }
  await mkdir(dirname(dir), { recursive: true });
  const tag = `${process.pid}-${randomBytes(6).toString('hex')}`;
  const tmp = `${dir}.tmp-${tag}`;
  await mkdir(tmp);
  let current = MANIFEST;
  try {
    const sums: Record<string, string> = {};
    for (const name of names) {
      current = name;
      const data = files[name]!;
      const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
      await writeSynced(join(tmp, name), bytes);
      sums[name] = sha256(bytes);
    }
    current = MANIFEST;
    await writeSynced(join(tmp, MANIFEST), `${JSON.stringify(sums, null, 2)}\n`);
    await syncDir(tmp);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw new CheckpointError(`checkpoint ${dir}: writing '${current}' failed (${(e as Error).message}); the previous checkpoint, if any, is untouched`, { cause: e });
  }

  const old = `${dir}.old-${tag}`;
  const hadOld = await exists(dir);
  if (hadOld) await rename(dir, old);
  try {
    await rename(tmp, dir);
  } catch (e) {
    if (hadOld) await rename(old, dir).catch(() => undefined);
    await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw new CheckpointError(`checkpoint ${dir}: moving the new checkpoint into place failed (${(e as Error).message})`, { cause: e });
  }
  await syncDir(dirname(dir));
  if (hadOld) await rm(old, { recursive: true, force: true });
  // leftovers of writers that crashed: <dir> is now complete, so they are garbage
  for (const s of await siblings(dir)) {
    if (s.pid !== process.pid && !running(s.pid)) await rm(s.path, { recursive: true, force: true }).catch(() => undefined);
  }
}

/**
 * Reads the checkpoint folder `dir`: every file listed in checksums.json, each verified against
 * its sha256. If `dir` itself is missing because a writer crashed between its two renames, the
 * complete sibling it left (the new one first) is read instead. Throws CheckpointError.
 */
export async function readCheckpoint(dir: string): Promise<Record<string, Uint8Array>> {
  dir = resolve(dir);
  if (await exists(dir)) return readVerified(dir, dir);
  // crash window of writeCheckpoint: try the complete new (.tmp), then the old (.old), newest first
  const found = await siblings(dir);
  const withTime = await Promise.all(found.map(async (s) => ({ ...s, mtime: (await stat(s.path).catch(() => undefined))?.mtimeMs ?? 0 })));
  withTime.sort((a, b) => (a.kind === b.kind ? b.mtime - a.mtime : a.kind === 'tmp' ? -1 : 1));
  for (const s of withTime) {
    try {
      return await readVerified(s.path, dir);
    } catch {
      // incomplete (a .tmp without its manifest, or still being written): try the next
    }
  }
  throw new CheckpointError(`checkpoint ${dir}: missing (no such folder, and no complete copy left by an interrupted write)`);
}

async function readVerified(path: string, dir: string): Promise<Record<string, Uint8Array>> {
  const where = path === dir ? `checkpoint ${dir}` : `checkpoint ${dir} (recovered from ${basename(path)})`;
  let manifest: unknown;
  try {
    manifest = JSON.parse(await readFile(join(path, MANIFEST), 'utf8'));
  } catch (e) {
    if (errCode(e) === 'ENOENT') throw new CheckpointError(`${where}: no ${MANIFEST}: not a complete engram checkpoint`);
    throw new CheckpointError(`${where}: ${MANIFEST} is unreadable (${(e as Error).message}): not a complete engram checkpoint`, { cause: e });
  }
  if (typeof manifest !== 'object' || manifest === null || Array.isArray(manifest)) {
    throw new CheckpointError(`${where}: ${MANIFEST} is not an object {file: sha256}`);
  }
  const out: Record<string, Uint8Array> = {};
  for (const [name, sum] of Object.entries(manifest as Record<string, unknown>)) {
    checkName(dir, name); // a manifest must not point outside the folder
    if (typeof sum !== 'string' || !/^[0-9a-f]{64}$/.test(sum)) throw new CheckpointError(`${where}: ${MANIFEST} entry '${name}' is not a sha256 hex digest`);
    let buf: Buffer;
    try {
      buf = await readFile(join(path, name));
    } catch (e) {
      if (errCode(e) === 'ENOENT') throw new CheckpointError(`${where}: file '${name}' is missing`);
      throw new CheckpointError(`${where}: file '${name}' could not be read (${(e as Error).message})`, { cause: e });
    }
    const bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    if (sha256(bytes) !== sum) throw new CheckpointError(`${where}: file '${name}': checksum mismatch (file changed or truncated)`);
    Object.defineProperty(out, name, { value: bytes, enumerable: true, writable: true, configurable: true });
  }
  return out;
}
