// byte-level BPE tokenizer: trained with the official Hugging Face `tokenizers` binding, encoded with kitoken.
//
// Training. `tokenizers` 0.23.2 (napi) exposes `Tokenizer.train(files)` with the model's default trainer only:
// vocab size fixed at 30,000, no special tokens, no initial alphabet (only the bytes seen in the corpus). So we
// train once at 30,000 and rebuild the vocab:
//   ids [0, S)             the special tokens, in the order given (S = special.length)
//   ids [S, S + 256)       all 256 bytes, id S + b = byte b (GPT-2 byte-to-unicode spelling), seen or not
//   ids [S + 256, V)       the learned tokens in the order they were learned (= trained id order)
// and truncate to V by keeping the first K = V - S - 256 learned tokens and the merges up to and including the
// one that created the K-th. BPE training is greedy (each merge depends only on the merges before it), so this is
// exactly what training with vocab_size V would have produced; every kept merge's parts and result are kept.
// The JSON is patched with a ByteLevel decoder (the binding exports no byteLevelDecoder) and the specials as
// added tokens, so transformers' PreTrainedTokenizerFast and tokenizers' Tokenizer.fromFile load it as is.
//
// Encoding: the ids of `tokenizers` itself. Special tokens written in the text are recognized and encoded as their
// ids. The text is split in JS exactly as the ByteLevel pre-tokenizer does and each distinct piece is run through
// kitoken's BPE (WASM) once, then cached (see "fast encoding" below): ~30 MB/s on this 2-core machine once warm,
// against 5-8 MB/s for kitoken on the whole text (and kitoken's own split differs from tokenizers' in a corner).
// Decoding is a table lookup id -> bytes here, then UTF-8. decode(encode(s)) === s for every well-formed string
// (lone surrogates become U+FFFD on the way in, as in any UTF-8 tokenizer).
//
// Browsers: Tokenizer.fromJson and everything after it run in a browser too (the web demo): kitoken's `web`
// build (its WASM fetched next to the module; bundlers rewrite that URL) stands in for the Node one, and the
// Node modules that training needs are imported only when training.

import type { Kitoken as Kit } from 'kitoken/node';
import { EngramError } from '../gpu/errors.ts';

export interface TrainTokenizerOptions {
  vocabSize: number;
  /** special tokens kept at the lowest ids, e.g. ['<|endoftext|>'] */
  special?: string[];
}

/** The parts of a tokenizer.json that we read and write. */
interface TokenizerJson {
  added_tokens: AddedTokenJson[];
  pre_tokenizer: unknown;
  decoder: unknown;
  model: { type: string; vocab: Record<string, number>; merges: (string | [string, string])[]; [k: string]: unknown };
  [k: string]: unknown;
}

interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** The largest vocab `tokenizers` 0.23.2 trains (its BpeTrainer default; the binding cannot change it). */
const TRAINED_VOCAB = 30_000;

// GPT-2's bytes_to_unicode: printable Latin-1 bytes spell themselves, the other 68 map to U+0100 onwards.
const BYTE_CHARS: string[] = (() => {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const chars: string[] = [];
  let n = 0;
  for (let b = 0; b < 256; b++) chars.push(String.fromCharCode(printable(b) ? b : 256 + n++));
  return chars;
})();
const CHAR_BYTE = new Map<string, number>(BYTE_CHARS.map((c, b) => [c, b]));

/** The byte-level spelling of byte b (e.g. 32 -> 'Ġ'), as in the vocab of a trained tokenizer. */
export function byteChar(b: number): string {
  const c = BYTE_CHARS[b];
  if (c === undefined) throw new EngramError(`byteChar: ${b} is not a byte (0..255)`);
  return c;
}

/**
 * trains a byte-level BPE on the text files (paths), truncated to vocabSize, returns the tokenizer.json text (HF
 * format, loadable by transformers' PreTrainedTokenizerFast / tokenizers.Tokenizer.fromFile, with a ByteLevel
 * decoder)
 */
export async function trainTokenizer(files: string[], o: TrainTokenizerOptions): Promise<string> {
  const special = o.special ?? [];
  checkSpecials(special);
  const min = 256 + special.length;
  // training learns at most TRAINED_VOCAB - 1 tokens (it starts from >= 1 seen byte): a bound known before training
  const bound = min + TRAINED_VOCAB - 1;
  if (!Number.isInteger(o.vocabSize) || o.vocabSize < min || o.vocabSize > bound) {
    throw new EngramError(
      `trainTokenizer: vocabSize ${o.vocabSize} is out of range: a byte-level BPE needs all 256 bytes plus ` +
        `${special.length} special token(s), and tokenizers trains at most ${TRAINED_VOCAB} tokens, so vocabSize must ` +
        `be an integer in [${min}, ${bound}] (the exact maximum depends on the corpus)`,
    );
  }
  if (files.length === 0) throw new EngramError('trainTokenizer: no input files given');
  for (const f of files) await checkFile(f);
  const trained = await trainRaw(files);
  return JSON.stringify(rebuild(trained, o.vocabSize, special));
}

function checkSpecials(special: string[]): void {
  const seen = new Set<string>();
  for (const s of special) {
    if (typeof s !== 'string' || s.length === 0) throw new EngramError(`trainTokenizer: special token ${JSON.stringify(s)} must be a non-empty string`);
    if (seen.has(s)) throw new EngramError(`trainTokenizer: special token ${JSON.stringify(s)} is given twice`);
    seen.add(s);
  }
}

async function checkFile(f: string): Promise<void> {
  const { stat } = await import('node:fs/promises');
  let st;
  try {
    st = await stat(f);
  } catch (e) {
    throw new EngramError(`trainTokenizer: input file '${f}' does not exist or cannot be read`, { cause: e });
  }
  if (!st.isFile()) throw new EngramError(`trainTokenizer: input '${f}' is not a regular file`);
}

/** Trains at the binding's fixed vocab size and returns the saved tokenizer.json, parsed. */
async function trainRaw(files: string[]): Promise<TokenizerJson> {
  // loaded lazily: a native module, and Node's, needed only for training (a browser loads this file to encode)
  const hf = await import('tokenizers');
  const [{ mkdtemp, readFile, rm }, { tmpdir }, { join }] = await Promise.all([import('node:fs/promises'), import('node:os'), import('node:path')]);
  const tok = new hf.Tokenizer(hf.BPE.empty());
  tok.setPreTokenizer(hf.byteLevelPreTokenizer(false, true));
  tok.train(files);
  // the binding has no toString(): save to a private temp dir and read it back
  const dir = await mkdtemp(join(tmpdir(), 'engram-tok-'));
  try {
    const path = join(dir, 'tokenizer.json');
    tok.save(path);
    return JSON.parse(await readFile(path, 'utf8')) as TokenizerJson;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function mergeParts(m: string | [string, string]): [string, string] {
  if (Array.isArray(m)) return m;
  const i = m.indexOf(' ');
  return [m.slice(0, i), m.slice(i + 1)];
}

/** Renumbers the trained vocab (specials, 256 bytes, learned tokens) and truncates it to V (see the header). */
function rebuild(t: TokenizerJson, V: number, special: string[]): TokenizerJson {
  const S = special.length;
  const learned = Object.entries(t.model.vocab)
    .filter(([tok]) => [...tok].length > 1) // single chars are the seen part of the byte alphabet
    .sort((a, b) => a[1] - b[1])
    .map(([tok]) => tok);
  for (const [tok] of Object.entries(t.model.vocab)) {
    if ([...tok].length === 1 && !CHAR_BYTE.has(tok)) throw new EngramError(`trainTokenizer: trained token '${tok}' is not a byte-level character (internal error)`);
  }
  const max = S + 256 + learned.length;
  if (V > max) {
    throw new EngramError(
      `trainTokenizer: vocabSize ${V} is above what training produced: ${learned.length} learned tokens + 256 bytes + ` +
        `${S} special token(s) = ${max}; vocabSize must be in [${S + 256}, ${max}] ` +
        `(tokenizers ${TRAINED_VOCAB} vocab cap; a larger corpus learns more tokens)`,
    );
  }
  for (const s of special) {
    if (CHAR_BYTE.has(s)) throw new EngramError(`trainTokenizer: special token '${s}' collides with a byte-level character; choose another special`);
  }
  const K = V - S - 256;
  const kept = learned.slice(0, K);
  const vocab: Record<string, number> = {};
  special.forEach((s, i) => (vocab[s] = i));
  BYTE_CHARS.forEach((c, b) => (vocab[c] = S + b));
  kept.forEach((tok, k) => {
    if (tok in vocab) throw new EngramError(`trainTokenizer: special token '${tok}' collides with a learned token of the same spelling; choose another special`);
    vocab[tok] = S + 256 + k;
  });
  // merges in learned order, up to the one that produced the K-th learned token (later duplicates would need
  // training past V). Merges' results are learned tokens, created in order, so a prefix keeps them consistent.
  const lastKept = K > 0 ? kept[K - 1] : undefined;
  const merges: [string, string][] = [];
  if (lastKept !== undefined) {
    for (const m of t.model.merges) {
      const [a, b] = mergeParts(m);
      if (!(a in vocab && b in vocab && a + b in vocab)) throw new EngramError(`trainTokenizer: merge '${a} ${b}' refers to a dropped token (internal error)`);
      merges.push([a, b]);
      if (a + b === lastKept) break;
    }
  }
  const added: AddedTokenJson[] = special.map((content, id) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  return {
    ...t,
    added_tokens: added,
    // the decoder the binding cannot set: ByteLevel maps the byte-level characters back to bytes
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: { ...t.model, vocab, merges },
  };
}

export class Tokenizer {
  /** fast encoder (kitoken) + decoder, from the text of a byte-level BPE tokenizer.json */
  static async fromJson(json: string): Promise<Tokenizer> {
    let t: TokenizerJson;
    try {
      t = JSON.parse(json) as TokenizerJson;
    } catch (e) {
      throw new EngramError(`Tokenizer.fromJson: not valid JSON (${(e as Error).message})`, { cause: e });
    }
    if (t.model?.type !== 'BPE' || typeof t.model.vocab !== 'object') {
      throw new EngramError(`Tokenizer.fromJson: expected a tokenizer.json with a BPE model, got model type '${String(t.model?.type)}'`);
    }
    const Kitoken = await kitoken();
    let kit: Kit;
    try {
      kit = Kitoken.from_tokenizers(new TextEncoder().encode(json));
    } catch (e) {
      throw new EngramError(`Tokenizer.fromJson: kitoken cannot load this tokenizer.json: ${String(e)}`, { cause: e });
    }
    return new Tokenizer(kit, t);
  }

  readonly vocabSize: number;
  private readonly kit: Kit;
  private readonly fast: FastEncoder | undefined;
  private readonly ids = new Map<string, number>();
  // bytes of token i: bytes[offsets[i] .. offsets[i + 1]); has[i] = 0 for ids in no vocab (holes)
  private readonly bytes: Uint8Array;
  private readonly offsets: Uint32Array;
  private readonly has: Uint8Array;
  // ignoreBOM: keep a leading U+FEFF (the default strips it, breaking decode(encode(s)) === s)
  private readonly utf8 = new TextDecoder('utf-8', { ignoreBOM: true });

  private constructor(kit: Kit, t: TokenizerJson) {
    this.kit = kit;
    this.fast = FastEncoder.supports(kit, t) ? new FastEncoder(kit, (t.added_tokens ?? []).map((a) => a.content)) : undefined;
    const enc = new TextEncoder();
    const spelled = new Map<number, Uint8Array>();
    for (const [tok, id] of Object.entries(t.model.vocab)) {
      this.ids.set(tok, id);
      spelled.set(id, byteLevelBytes(tok) ?? enc.encode(tok));
    }
    for (const a of t.added_tokens ?? []) {
      this.ids.set(a.content, a.id); // added tokens win: their text is their content, not a byte-level spelling
      spelled.set(a.id, enc.encode(a.content));
    }
    let n = 0;
    let total = 0;
    for (const [id, b] of spelled) {
      n = Math.max(n, id + 1);
      total += b.length;
    }
    this.vocabSize = n;
    this.bytes = new Uint8Array(total);
    this.offsets = new Uint32Array(n + 1);
    this.has = new Uint8Array(n);
    let at = 0;
    for (let id = 0; id < n; id++) {
      this.offsets[id] = at;
      const b = spelled.get(id);
      if (b !== undefined) {
        this.bytes.set(b, at);
        at += b.length;
        this.has[id] = 1;
      }
    }
    this.offsets[n] = at;
  }

  /** token ids (< vocabSize) of `text`; special tokens written in the text are encoded as their ids */
  encode(text: string): Uint32Array {
    if (text.length === 0) return new Uint32Array(0);
    return this.fast ? this.fast.encode(text) : this.kit.encode(text, true);
  }

  /** the text of `ids` (byte-level: decode(encode(s)) === s); throws on an id not in the vocab */
  decode(ids: ArrayLike<number>): string {
    const { offsets, has } = this;
    let len = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!(id >= 0 && id < this.vocabSize && has[id] === 1)) {
        throw new EngramError(`Tokenizer.decode: id ${id} at position ${i} is not in the vocab (ids must be in [0, ${this.vocabSize}))`);
      }
      len += offsets[id + 1]! - offsets[id]!;
    }
    const out = new Uint8Array(len);
    const bytes = this.bytes;
    let at = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      // tokens are a few bytes: a plain loop beats subarray().set() per token
      for (let k = offsets[id]!, e = offsets[id + 1]!; k < e; k++) out[at++] = bytes[k]!;
    }
    return this.utf8.decode(out);
  }

  /** the id of a token: a special token's content (e.g. '<|endoftext|>') or a vocab entry in byte-level spelling ('Ġthe') */
  tokenId(token: string): number | undefined {
    return this.ids.get(token);
  }
}

/** kitoken's class: its Node build under Node, else its web build, whose WASM is fetched once */
async function kitoken(): Promise<typeof Kit> {
  if (typeof process !== 'undefined' && typeof process.versions?.node === 'string') return (await import('kitoken/node')).Kitoken;
  const web = await import('kitoken/web');
  await web.default(); // fetches web_bg.wasm beside the module (once: later calls return at once)
  return web.Kitoken;
}

/** bytes of a byte-level spelled token, or undefined when it has a character outside the byte-level alphabet */
function byteLevelBytes(tok: string): Uint8Array | undefined {
  const out = new Uint8Array(tok.length);
  for (let i = 0; i < tok.length; i++) {
    const b = CHAR_BYTE.get(tok[i]!);
    if (b === undefined) return undefined;
    out[i] = b;
  }
  return out;
}

// ---- fast encoding ----
// kitoken alone runs at 5-8 MB/s on this machine for small vocabs, and its translation of the ByteLevel split
// regex differs from tokenizers' in one corner: after a white space other than ' ' it glues the space to a
// following apostrophe ("\n'tis" -> "\n'", "tis"), where tokenizers splits "\n", "'t", "is": different ids.
// So we pre-split in plain JS, exactly as tokenizers does (GPT-2's regex below, on each stretch between special
// tokens; a hand-written scanner, ~5x faster than the regex), and cache each piece's ids; kitoken runs BPE only
// on the pieces not met before (a piece is one split unit for kitoken too, so its BPE is tokenizers'). Natural
// text repeats its words, so nearly every piece hits the cache. Used only for tokenizer.json files of the kind
// trainTokenizer writes (checked in FastEncoder.supports); anything else goes to kitoken whole. Character classes
// are Unicode's, through JS \p{...}: they match tokenizers' except for characters newer than one of the tables.

// The ByteLevel pre-tokenizer's split (GPT-2's regex; \s is Unicode White_Space, which JS's \s is not: U+FEFF):
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// pieces are its matches; nothing falls between them.

/** kitoken's reading of a ByteLevel pre-tokenizer (what FastEncoder.supports expects kitoken to report) */
const KITOKEN_SPLIT = "'(?:[sdmt]|ll|ve|re)|\\s?\\p{L}+|\\s?\\p{N}+|\\s?[^\\s\\p{L}\\p{N}]+";

// character classes of the split: letter, number, white space, other
const LETTER = 1;
const NUMBER = 2;
const SPACE = 3;
const OTHER = 4;
const BMP_CLASS = new Uint8Array(0x10000); // 0: not classified yet
const ASTRAL_CLASS = new Map<number, number>();

function classify(cp: number): number {
  const c = String.fromCodePoint(cp);
  return /\p{L}/u.test(c) ? LETTER : /\p{N}/u.test(c) ? NUMBER : /\p{White_Space}/u.test(c) ? SPACE : OTHER;
}
for (let u = 0; u < 0x80; u++) BMP_CLASS[u] = classify(u);
// a surrogate not in a pair is OTHER (it becomes U+FFFD in UTF-8); pairs are classified by code point in cls()
BMP_CLASS.fill(OTHER, 0xd800, 0xe000);

// cache bounds (2^19 pieces of at most 48 code units: a few MB for natural text, ~60 MB at worst)
const MAX_PIECE = 48; // longer pieces (long runs of digits, punctuation) are encoded directly
const MAX_ENTRIES = 1 << 19;
const TABLE_BITS = 20;

class FastEncoder {
  /** true for a byte-level BPE as trainTokenizer writes it: ByteLevel split without prefix space, nothing else */
  static supports(kit: Kit, t: TokenizerJson): boolean {
    const pre = t.pre_tokenizer as { type?: string; add_prefix_space?: boolean; use_regex?: boolean } | null;
    const m = t.model as { dropout?: unknown; continuing_subword_prefix?: unknown; end_of_word_suffix?: unknown };
    if (pre?.type !== 'ByteLevel' || pre.add_prefix_space !== false || pre.use_regex !== true) return false;
    if (t.normalizer != null || m.dropout != null || m.continuing_subword_prefix != null || m.end_of_word_suffix != null) return false;
    if (!(t.added_tokens ?? []).every((a) => a.special && !a.single_word && !a.lstrip && !a.rstrip && a.content.length > 0)) return false;
    try {
      const c = kit.config() as { normalization?: unknown[]; processing?: unknown[]; split?: unknown[] };
      const want = [{ Pattern: { pattern: { Regex: KITOKEN_SPLIT }, behavior: 'Isolate' } }];
      return c.normalization?.length === 0 && c.processing?.length === 0 && JSON.stringify(c.split) === JSON.stringify(want);
    } catch {
      return false;
    }
  }

  private readonly specials: string[];
  private readonly specialIds: Uint32Array[];
  // the text being encoded as UTF-16 code units: typed-array reads stay fast whatever V8's string representation
  // (one- or two-byte, sliced, concatenated), where charCodeAt slows down ~2.5x once it has seen several kinds
  private u = new Uint16Array(1024);
  // open-addressing hash table of pieces: slot -> entry + 1 (0 = empty)
  private readonly table = new Int32Array(1 << TABLE_BITS);
  private entries = 0;
  private hashes = new Int32Array(1024);
  private keyStart = new Uint32Array(1024);
  private keyLen = new Uint8Array(1024);
  private keyPool = new Uint16Array(1 << 14);
  private keyUsed = 0;
  private idStart = new Uint32Array(1024);
  private idLen = new Uint8Array(1024);
  private idPool = new Uint32Array(1 << 14);
  private idUsed = 0;
  // output being built
  private out = new Uint32Array(0);
  private n = 0;

  constructor(
    private readonly kit: Kit,
    specials: string[],
  ) {
    this.specials = specials;
    this.specialIds = specials.map((sp) => kit.encode(sp, true));
  }

  encode(text: string): Uint32Array {
    if (text.length > this.u.length) this.u = new Uint16Array(text.length);
    // code units as they are, lone surrogates too (a browser has no Buffer: a plain loop there)
    if (typeof Buffer !== 'undefined') Buffer.from(this.u.buffer, 0, 2 * text.length).write(text, 'utf16le');
    else for (let i = 0; i < text.length; i++) this.u[i] = text.charCodeAt(i);
    this.out = new Uint32Array(Math.max(16, (text.length >> 1) + 16));
    this.n = 0;
    // next occurrence of each special at or after `at` (-1: none left), refreshed only when passed, so that a
    // text with many specials is still scanned once per special
    const next = this.specials.map((sp) => text.indexOf(sp));
    let at = 0;
    while (at < text.length) {
      // leftmost special token, the longest at a tie (as kitoken and tokenizers do)
      let sAt = -1;
      let sLen = 0;
      let sId = 0;
      for (let k = 0; k < this.specials.length; k++) {
        const sp = this.specials[k]!;
        let j = next[k]!;
        if (j >= 0 && j < at) next[k] = j = text.indexOf(sp, at);
        if (j >= 0 && (sAt < 0 || j < sAt || (j === sAt && sp.length > sLen))) {
          sAt = j;
          sLen = sp.length;
          sId = k;
        }
      }
      const end = sAt < 0 ? text.length : sAt;
      this.scan(text, at, end);
      if (sAt < 0) break;
      this.push(this.specialIds[sId]!);
      at = sAt + sLen;
    }
    const ids = this.out.slice(0, this.n);
    this.out = new Uint32Array(0);
    if (this.u.length > 1 << 22) this.u = new Uint16Array(1024); // do not hold on to a huge text's buffer
    return ids;
  }

  /** splits text[from, to) as the ByteLevel regex above does, and emits each piece's ids */
  private scan(text: string, from: number, to: number): void {
    const u = this.u;
    let i = from;
    while (i < to) {
      const ch = u[i]!;
      const c = this.cls(i, to);
      let e: number;
      if (ch === 39 /* ' */ && this.contraction(i, to) > 0) {
        e = i + this.contraction(i, to); // 's 't 're 've 'm 'll 'd
      } else if (c !== SPACE) {
        e = this.run(i, to, c); // \p{L}+ | \p{N}+ | [^\s\p{L}\p{N}]+
      } else if (ch === 32 && i + 1 < to && this.cls(i + 1, to) !== SPACE) {
        e = this.run(i + 1, to, this.cls(i + 1, to)); // ' ?' in front of a run
      } else {
        // white space (all of it in the BMP): \s+(?!\S) takes the run but its last character when a non-space
        // follows (that one goes with the next piece when it is ' ', else \s+ takes it alone)
        let j = i + 1;
        while (j < to && this.cls(j, to) === SPACE) j++;
        e = j === to || j - i === 1 ? j : j - 1;
      }
      this.piece(text, i, e);
      i = e;
    }
  }

  /** length of the contraction ('s 't 're 've 'm 'll 'd) at u[i] === "'", or 0 */
  private contraction(i: number, to: number): number {
    const a = i + 1 < to ? this.u[i + 1]! : 0;
    const b = i + 2 < to ? this.u[i + 2]! : 0;
    if (a === 115 || a === 116 || a === 109 || a === 100) return 2; // s t m d
    if ((a === 114 && b === 101) || (a === 118 && b === 101) || (a === 108 && b === 108)) return 3; // re ve ll
    return 0;
  }

  /** end of the run of class c starting at i */
  private run(i: number, to: number, c: number): number {
    let j = i + this.width(i, to);
    while (j < to && this.cls(j, to) === c) j += this.width(j, to);
    return j;
  }

  /** code units of the character at i: 2 for a surrogate pair */
  private width(i: number, to: number): number {
    const x = this.u[i]!;
    if (x < 0xd800 || x >= 0xdc00 || i + 1 >= to) return 1;
    const y = this.u[i + 1]!;
    return y >= 0xdc00 && y < 0xe000 ? 2 : 1;
  }

  private cls(i: number, to: number): number {
    const x = this.u[i]!;
    if (x < 0xd800 || x >= 0xdc00) {
      const c = BMP_CLASS[x]!;
      return c !== 0 ? c : (BMP_CLASS[x] = classify(x));
    }
    const y = i + 1 < to ? this.u[i + 1]! : 0;
    if (!(y >= 0xdc00 && y < 0xe000)) return OTHER; // a lone high surrogate (U+FFFD once in UTF-8)
    const cp = ((x - 0xd800) << 10) + (y - 0xdc00) + 0x10000;
    let c = ASTRAL_CLASS.get(cp);
    if (c === undefined) ASTRAL_CLASS.set(cp, (c = classify(cp)));
    return c;
  }

  /** emits the ids of the piece text[s, e), from the cache or from kitoken */
  private piece(text: string, s: number, e: number): void {
    if (e - s > MAX_PIECE) {
      this.push(this.kit.encode(text.slice(s, e), false));
      return;
    }
    const u = this.u;
    let h = 0x811c9dc5 | 0;
    for (let k = s; k < e; k++) h = Math.imul(h ^ u[k]!, 0x01000193);
    const mask = (1 << TABLE_BITS) - 1;
    let slot = h & mask;
    for (;;) {
      const ent = this.table[slot]! - 1;
      if (ent < 0) break;
      if (this.hashes[ent] === h && this.same(ent, s, e)) {
        const st = this.idStart[ent]!;
        const len = this.idLen[ent]!;
        this.reserve(len);
        for (let k = 0; k < len; k++) this.out[this.n++] = this.idPool[st + k]!;
        return;
      }
      slot = (slot + 1) & mask;
    }
    const ids = this.kit.encode(text.slice(s, e), false);
    this.push(ids);
    if (this.entries < MAX_ENTRIES && ids.length < 256) this.insert(slot, h, s, e, ids);
  }

  /** whether cache entry ent is the piece u[s, e) */
  private same(ent: number, s: number, e: number): boolean {
    if (this.keyLen[ent] !== e - s) return false;
    const u = this.u;
    const pool = this.keyPool;
    for (let k = 0, at = this.keyStart[ent]!; k < e - s; k++) if (pool[at + k] !== u[s + k]) return false;
    return true;
  }

  private insert(slot: number, h: number, s: number, e: number, ids: Uint32Array): void {
    const ent = this.entries++;
    if (ent === this.hashes.length) {
      this.hashes = grow(this.hashes, ent * 2);
      this.keyStart = grow(this.keyStart, ent * 2);
      this.keyLen = grow(this.keyLen, ent * 2);
      this.idStart = grow(this.idStart, ent * 2);
      this.idLen = grow(this.idLen, ent * 2);
    }
    if (this.keyUsed + (e - s) > this.keyPool.length) this.keyPool = grow(this.keyPool, (this.keyUsed + e - s) * 2);
    if (this.idUsed + ids.length > this.idPool.length) this.idPool = grow(this.idPool, (this.idUsed + ids.length) * 2);
    this.hashes[ent] = h;
    this.keyStart[ent] = this.keyUsed;
    this.keyLen[ent] = e - s;
    this.keyPool.set(this.u.subarray(s, e), this.keyUsed);
    this.keyUsed += e - s;
    this.idStart[ent] = this.idUsed;
    this.idLen[ent] = ids.length;
    this.idPool.set(ids, this.idUsed);
    this.idUsed += ids.length;
    this.table[slot] = ent + 1;
  }

  private reserve(k: number): void {
    if (this.n + k > this.out.length) this.out = grow(this.out, Math.max(this.out.length * 2, this.n + k));
  }

  private push(ids: Uint32Array): void {
    this.reserve(ids.length);
    this.out.set(ids, this.n);
    this.n += ids.length;
  }
}

function grow<A extends Int32Array | Uint32Array | Uint16Array | Uint8Array>(a: A, size: number): A {
  const b = new (a.constructor as new (n: number) => A)(size);
  b.set(a);
  return b;
}
