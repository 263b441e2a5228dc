// Pure verification, no I/O and no DOM: canonical JSON (RFC 8785), SHA-256, RFC 9162 Merkle
// proofs and frontiers, the controller's signatures (Ed25519, ECDSA P-256, RSA-PSS, as
// duet/keys.py accepts), signed answers and tree heads (protocol/envelope.py, ledger/heads.py),
// C2SP checkpoints and entry bundles (ledger/note.py, checkpoint.py, tiles.py).
//
// Everything the page shows as "verified" went through a function of this module; each one
// mirrors the Python that the controller and `duet audit` use, so the bytes hashed and signed
// are the same in both languages. Failures are thrown as VerificationFailure with a stable
// code, which the page names in its red banner.

const subtle = globalThis.crypto && globalThis.crypto.subtle;
const utf8 = new TextEncoder();

/** A check that did not hold; `code` is what the banner names (see app.js FAILURES). */
export class VerificationFailure extends Error {
  constructor(code, message, seq = null) {
    super(message);
    this.name = 'VerificationFailure';
    this.code = code;
    this.seq = seq;
  }
}

/** WebCrypto exists only in a secure context (HTTPS, or http://localhost / 127.0.0.1). */
export function cryptoAvailable() {
  return Boolean(subtle);
}

// --- bytes -------------------------------------------------------------------------------------

export function hex(bytes) {
  let out = '';
  for (const b of bytes) out += (b < 16 ? '0' : '') + b.toString(16);
  return out;
}

export function fromHex(text) {
  if (typeof text !== 'string' || text.length % 2 || !/^[0-9a-f]*$/.test(text)) {
    throw new VerificationFailure('malformed', 'not lowercase hex');
  }
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(i * 2, 2), 16);
  return out;
}

export function isHex64(value) {
  return typeof value === 'string' && /^[0-9a-f]{64}$/.test(value);
}

export function b64decode(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) {
    throw new VerificationFailure('malformed', 'not base64');
  }
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

export function b64encode(bytes) {
  let raw = '';
  for (const b of bytes) raw += String.fromCharCode(b);
  return btoa(raw);
}

/** base64url (no padding) as used in links: `?controller=` may carry a whole public key. */
export function b64urlDecode(text) {
  const plain = text.replace(/-/g, '+').replace(/_/g, '/');
  return b64decode(plain + '='.repeat((4 - (plain.length % 4)) % 4));
}

export function b64urlEncode(bytes) {
  return b64encode(bytes).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function concat(...parts) {
  let size = 0;
  for (const p of parts) size += p.length;
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equalBytes(a, b) {
  if (!a || !b || a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

// --- canonical JSON (RFC 8785) -----------------------------------------------------------------

/**
 * RFC 8785 (JCS) text of a JSON value, as duet/protocol/canonical.py makes it. JCS was designed
 * on ECMAScript's own serialization: numbers and strings are exactly what JSON.stringify
 * prints; object members are sorted by their UTF-16 code units (Array.prototype.sort's order).
 * A value without a canonical form (a lone surrogate, a non-finite number, an integer past
 * 2^53 that JSON.parse already rounded) throws: it cannot be what the controller hashed.
 */
export function canonical(value) {
  switch (typeof value) {
    case 'string':
      if (/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(value)) {
        throw new VerificationFailure('no_canonical_form', 'a string holds a lone surrogate');
      }
      return JSON.stringify(value);
    case 'number':
      if (!Number.isFinite(value)) throw new VerificationFailure('no_canonical_form', 'a number is not finite');
      if (Number.isInteger(value) && Math.abs(value) > Number.MAX_SAFE_INTEGER && Math.abs(value) < 1e21) {
        throw new VerificationFailure('no_canonical_form', 'an integer beyond 2^53');
      }
      return JSON.stringify(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object':
      if (value === null) return 'null';
      if (Array.isArray(value)) return '[' + value.map(canonical).join(',') + ']';
      return (
        '{' +
        Object.keys(value)
          .sort()
          .map((key) => canonical(key) + ':' + canonical(value[key]))
          .join(',') +
        '}'
      );
    default:
      throw new VerificationFailure('no_canonical_form', `a ${typeof value} is not JSON`);
  }
}

export function canonicalBytes(value) {
  return utf8.encode(canonical(value));
}

// --- hashing (RFC 9162 §2.1) -------------------------------------------------------------------

export async function sha256(bytes) {
  return new Uint8Array(await subtle.digest('SHA-256', bytes));
}

export async function sha256Hex(bytes) {
  return hex(await sha256(bytes));
}

export async function sha512(bytes) {
  return new Uint8Array(await subtle.digest('SHA-512', bytes));
}

const LEAF = new Uint8Array([0]);
const NODE = new Uint8Array([1]);

/** SHA-256(0x00 ‖ data): the leaf of one ledger entry (data = its canonical JSON bytes). */
export async function leafHash(data) {
  return sha256(concat(LEAF, data));
}

/** SHA-256(0x01 ‖ left ‖ right). */
export async function nodeHash(left, right) {
  return sha256(concat(NODE, left, right));
}

export const EMPTY_ROOT = fromHex('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');

/** The leaf hash of an entry as served, SHA-256(0x00 ‖ JCS(entry)); null when it has no canonical form. */
export async function entryLeaf(entry) {
  let data;
  try {
    data = canonicalBytes(entry);
  } catch {
    return null;
  }
  return leafHash(data);
}

// Sizes and indexes are ordinary numbers: bit operators would cut them at 2^31.
const odd = (n) => n % 2 === 1;
const half = (n) => Math.floor(n / 2);
const isSize = (n) => Number.isSafeInteger(n) && n >= 0;
const isHash = (h) => h instanceof Uint8Array && h.length === 32;

function shiftWhileEven(fn, sn) {
  while (fn > 0 && !odd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  return [fn, sn];
}

/** RFC 9162 §2.1.3.2, as duet/ledger/merkle.py verify_inclusion: never throws, answers. */
export async function verifyInclusion(leaf, index, size, proof, root) {
  if (!isHash(leaf) || !isHash(root) || !Array.isArray(proof) || !proof.every(isHash)) return false;
  if (!isSize(index) || !isSize(size) || index >= size) return false;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      r = await nodeHash(p, r);
      [fn, sn] = shiftWhileEven(fn, sn);
    } else {
      r = await nodeHash(r, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && equalBytes(r, root);
}

/** RFC 9162 §2.1.4.2, extended to first == 0 and first == second as merkle.py does. */
export async function verifyConsistency(first, second, firstRoot, secondRoot, proof) {
  if (!isHash(firstRoot) || !isHash(secondRoot) || !Array.isArray(proof) || !proof.every(isHash)) return false;
  if (!isSize(first) || !isSize(second) || first > second) return false;
  if (first === 0) return proof.length === 0 && equalBytes(firstRoot, EMPTY_ROOT);
  if (first === second) return proof.length === 0 && equalBytes(firstRoot, secondRoot);
  if (!proof.length) return false;
  const path = isPowerOfTwo(first) ? [firstRoot, ...proof] : [...proof];
  let fn = first - 1;
  let sn = second - 1;
  while (odd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      [fn, sn] = shiftWhileEven(fn, sn);
    } else {
      sr = await nodeHash(sr, c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && equalBytes(fr, firstRoot) && equalBytes(sr, secondRoot);
}

/** Whether n (≥ 1) is a power of two; sizes stay numbers, so no bit operators. */
export function isPowerOfTwo(n) {
  while (n > 1 && !odd(n)) n = half(n);
  return n === 1;
}

export function popcount(n) {
  let count = 0;
  while (n > 0) {
    count += n % 2;
    n = half(n);
  }
  return count;
}

/**
 * The right edge of a tree of `size` leaves: one hash per set bit of size, largest subtree
 * first (duet/client/audit_tree.py Frontier). Appending a leaf merges like a binary counter,
 * so a root is recomputed from streamed entries without keeping them.
 */
export class Frontier {
  constructor(size = 0, nodes = []) {
    if (!isSize(size) || nodes.length !== popcount(size) || !nodes.every(isHash)) {
      throw new VerificationFailure('malformed', `a frontier of ${size} leaves has ${popcount(size)} hashes`);
    }
    this.size = size;
    this.nodes = [...nodes];
  }

  copy() {
    return new Frontier(this.size, this.nodes);
  }

  async append(leaf) {
    let node = leaf;
    let size = this.size;
    while (odd(size)) {
      node = await nodeHash(this.nodes.pop(), node);
      size = half(size);
    }
    this.nodes.push(node);
    this.size += 1;
  }

  /**
   * Append many leaves at once. The same tree as appending them one by one, but each level's
   * node hashes are computed together (WebCrypto digests run side by side), so a page of a
   * thousand leaves costs about ten rounds of hashing instead of a thousand in a row.
   */
  async extend(leaves) {
    const old = new Map(); // level -> the old frontier's node there (one per set bit of size)
    let level = 0;
    for (let n = this.size, i = this.nodes.length - 1; n > 0; n = half(n), level++) if (odd(n)) old.set(level, this.nodes[i--]);
    const kept = [];
    let carry = leaves;
    let size = this.size;
    for (level = 0; carry.length || size > 0; level++) {
      const run = odd(size) ? [old.get(level), ...carry] : carry;
      if (run.length % 2) kept.push(run[run.length - 1]); // unpaired: a node of the new frontier
      const pairs = [];
      for (let i = 0; i + 1 < run.length; i += 2) pairs.push(nodeHash(run[i], run[i + 1]));
      carry = await Promise.all(pairs);
      size = half(size);
    }
    this.size += leaves.length;
    this.nodes = kept.reverse();
  }

  async root() {
    if (!this.nodes.length) return EMPTY_ROOT;
    let acc = this.nodes[this.nodes.length - 1];
    for (let i = this.nodes.length - 2; i >= 0; i--) acc = await nodeHash(this.nodes[i], acc);
    return acc;
  }
}

/**
 * The frontier of the first `first` leaves as it appears in PROOF(first, second) (audit_tree.py
 * frontier_in_consistency_proof), for `first` not a power of two; null when the proof has not
 * the shape of one. It is true only once the proof verified against both signed roots.
 */
export function frontierInConsistencyProof(first, second, proof) {
  if (first <= 0 || first >= second || isPowerOfTwo(first) || !proof.length) return null;
  let fn = first - 1;
  let sn = second - 1;
  while (odd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  const left = [proof[0]];
  for (const node of proof.slice(1)) {
    if (sn === 0) return null;
    if (odd(fn) || fn === sn) {
      left.push(node);
      [fn, sn] = shiftWhileEven(fn, sn);
    }
    fn = half(fn);
    sn = half(sn);
  }
  left.reverse();
  return left.length === popcount(first) ? left : null;
}

/**
 * The true frontier of `size` leaves of a tree whose later head (secondSize, secondRoot) the
 * caller verified, given the consistency proof between the two (already verified): for a power
 * of two the root of `size` itself, else the frontier the proof carries.
 */
export function frontierFromConsistency(size, firstRoot, secondSize, proof) {
  if (size === 0) return new Frontier();
  if (isPowerOfTwo(size)) return new Frontier(size, [firstRoot]);
  const nodes = frontierInConsistencyProof(size, secondSize, proof);
  return nodes ? new Frontier(size, nodes) : null;
}

// --- keys and signatures (duet/keys.py) -----------------------------------------------------------

const ED25519_SPKI_PREFIX = fromHex('302a300506032b6570032100');
const OID_EC_PUBLIC_KEY = fromHex('06072a8648ce3d0201');
const OID_P256 = fromHex('06082a8648ce3d030107');
const OID_RSA = fromHex('06092a864886f70d010101');

function contains(haystack, needle) {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return true;
  }
  return false;
}

export function pemToDer(pem) {
  const body = String(pem)
    .replace(/-----BEGIN PUBLIC KEY-----/, '')
    .replace(/-----END PUBLIC KEY-----/, '')
    .replace(/\s+/g, '');
  return b64decode(body);
}

/** The SubjectPublicKeyInfo DER of a raw 32-byte Ed25519 key (what a C2SP vkey carries). */
export function ed25519Spki(raw) {
  return concat(ED25519_SPKI_PREFIX, raw);
}

/**
 * A controller's public key from its SPKI DER: {id, type, spki, key}. The id is SHA-256 of the
 * DER, the controller id `duet verify` prints (keys.key_id). Types as duet/keys.py accepts.
 */
export async function importPublicKey(spki) {
  const id = await sha256Hex(spki);
  let type;
  let algorithm;
  if (spki.length === 44 && equalBytes(spki.slice(0, 12), ED25519_SPKI_PREFIX)) {
    type = 'ed25519';
    algorithm = { name: 'Ed25519' };
  } else if (contains(spki, OID_EC_PUBLIC_KEY)) {
    if (!contains(spki, OID_P256)) throw new VerificationFailure('bad_key', 'only P-256 ECDSA keys are accepted');
    type = 'ecdsa';
    algorithm = { name: 'ECDSA', namedCurve: 'P-256' };
  } else if (contains(spki, OID_RSA)) {
    type = 'rsa';
    algorithm = { name: 'RSA-PSS', hash: 'SHA-256' };
  } else {
    throw new VerificationFailure('bad_key', 'not an Ed25519, ECDSA P-256 or RSA public key');
  }
  let key;
  try {
    key = await subtle.importKey('spki', spki, algorithm, false, ['verify']);
  } catch (error) {
    throw new VerificationFailure('bad_key', `the public key does not import (${error.message})`);
  }
  return { id, type, spki, key };
}

/** An ECDSA signature as cryptography writes it (DER SEQUENCE of two INTEGERs) to WebCrypto's r ‖ s. */
function ecdsaDerToRaw(der) {
  const fail = () => new VerificationFailure('bad_signature', 'the ECDSA signature is not DER');
  let at = 0;
  const read = () => {
    if (at >= der.length) throw fail();
    return der[at++];
  };
  const length = () => {
    let n = read();
    if (n & 0x80) {
      const count = n & 0x7f;
      n = 0;
      for (let i = 0; i < count; i++) n = n * 256 + read();
    }
    return n;
  };
  if (read() !== 0x30) throw fail();
  length();
  const out = new Uint8Array(64);
  for (let part = 0; part < 2; part++) {
    if (read() !== 0x02) throw fail();
    const n = length();
    let bytes = der.slice(at, at + n);
    at += n;
    while (bytes.length > 32 && bytes[0] === 0) bytes = bytes.slice(1);
    if (bytes.length > 32) throw fail();
    out.set(bytes, part * 32 + 32 - bytes.length);
  }
  return out;
}

/** Whether `signature` is the key's over `data` (keys.verify). Never throws for a bad signature. */
export async function verifySignature(publicKey, signature, data) {
  try {
    if (publicKey.type === 'ed25519') return await subtle.verify('Ed25519', publicKey.key, signature, data);
    if (publicKey.type === 'ecdsa') {
      return await subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, publicKey.key, ecdsaDerToRaw(signature), data);
    }
    // keys.sign uses PSS with the largest salt: emLen - hLen - 2 bytes.
    const saltLength = Math.ceil((publicKey.key.algorithm.modulusLength - 1) / 8) - 32 - 2;
    return await subtle.verify({ name: 'RSA-PSS', saltLength }, publicKey.key, signature, data);
  } catch {
    return false;
  }
}

// --- signed answers and heads (protocol/envelope.py, ledger/heads.py) -----------------------------

/** Python's urllib.parse.quote(text, safe): UTF-8, every byte but unreserved and `safe` escaped. */
function quote(text, safe) {
  let out = '';
  for (const byte of utf8.encode(text)) {
    const ch = String.fromCharCode(byte);
    if (/[A-Za-z0-9_.~-]/.test(ch) || safe.includes(ch)) out += ch;
    else out += '%' + (byte < 16 ? '0' : '') + byte.toString(16).toUpperCase();
  }
  return out;
}

/** canonical_target: `METHOD path?name=value&...`, pairs sorted, each part percent-encoded. */
export function canonicalTarget(method, path, query = {}) {
  const pairs = Object.entries(query)
    .filter(([, value]) => value !== undefined && value !== null)
    .map(([name, value]) => [String(name), String(value)])
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  let target = `${method.toUpperCase()} ${quote(path, '/')}`;
  if (pairs.length) target += '?' + pairs.map(([n, v]) => `${quote(n, '')}=${quote(v, '')}`).join('&');
  return target;
}

/** SHA-256 hex of the canonical target: the `request_target` a signed answer names. */
export async function requestTarget(method, path, query = {}) {
  return sha256Hex(utf8.encode(canonicalTarget(method, path, query)));
}

const ANSWER_FIELDS = ['controller', 'request_digest', 'result', 'result_sha256', 'signed_at', 'signature'];

/**
 * The result of a signed answer, once its signature, result digest and bindings hold
 * (envelope.verify_answer): signed by `publicKey` for `controller`, echoing `nonce`, naming
 * `target`. Throws VerificationFailure('bad_signature' | 'stale_answer' | 'answer_not_bound').
 * `resultText`, when given, is the canonical text of the result already made by the caller.
 */
export async function verifyAnswer(answer, { controller, publicKey, nonce = null, target = null, resultText = null }) {
  if (!answer || typeof answer !== 'object' || !ANSWER_FIELDS.every((name) => name in answer)) {
    throw new VerificationFailure('bad_signature', 'the answer is not a signed duet answer (fields missing)');
  }
  if (answer.controller !== controller) {
    throw new VerificationFailure(
      'bad_signature',
      `the answer is signed for controller ${String(answer.controller).slice(0, 16)}…, not the pinned ${controller.slice(0, 16)}…`,
    );
  }
  const signed = {};
  for (const [name, value] of Object.entries(answer)) if (name !== 'result' && name !== 'signature') signed[name] = value;
  let signature;
  let signedBytes;
  let resultBytes;
  try {
    signature = b64decode(answer.signature);
    signedBytes = canonicalBytes(signed);
    resultBytes = utf8.encode(resultText ?? canonical(answer.result));
  } catch {
    throw new VerificationFailure('bad_signature', 'the answer cannot be put in canonical form');
  }
  if (!(await verifySignature(publicKey, signature, signedBytes))) {
    throw new VerificationFailure('bad_signature', "the answer's signature does not verify with the pinned controller key");
  }
  if ((await sha256Hex(resultBytes)) !== answer.result_sha256) {
    throw new VerificationFailure('bad_signature', "the answer's result is not the one the controller signed (digest differs)");
  }
  if (nonce !== null && answer.nonce !== nonce) {
    throw new VerificationFailure('stale_answer', 'the answer does not echo the nonce sent: it may be replayed');
  }
  if (target !== null && answer.request_target !== target) {
    throw new VerificationFailure('answer_not_bound', 'the answer is for another request than the one sent (redirected or rewritten)');
  }
  return answer.result;
}

export const HEAD_FIELDS = ['tree_size', 'root_hash', 'timestamp', 'controller'];

/** A signed tree head {tree_size, root_hash, timestamp, controller, signature}, verified (heads.verify_head). */
export async function verifyHead(data, { controller, publicKey }) {
  const names = data && typeof data === 'object' ? Object.keys(data).sort().join(',') : '';
  if (names !== [...HEAD_FIELDS, 'signature'].sort().join(',') || !isSize(data.tree_size) || !isHex64(data.root_hash)) {
    throw new VerificationFailure('bad_head', 'the tree head is not a signed head {tree_size, root_hash, timestamp, controller, signature}');
  }
  if (data.controller !== controller) {
    throw new VerificationFailure('bad_signature', `the tree head names controller ${String(data.controller).slice(0, 16)}…, not the pinned one`);
  }
  const unsigned = {};
  for (const name of HEAD_FIELDS) unsigned[name] = data[name];
  let signature;
  try {
    signature = b64decode(data.signature);
  } catch {
    throw new VerificationFailure('bad_signature', "the tree head's signature is not base64");
  }
  if (!(await verifySignature(publicKey, signature, canonicalBytes(unsigned)))) {
    throw new VerificationFailure('bad_signature', "the tree head's signature does not verify with the pinned controller key");
  }
  return { tree_size: data.tree_size, root_hash: data.root_hash, timestamp: data.timestamp, controller, signature: data.signature };
}

// --- C2SP signed notes, checkpoints and entry bundles -----------------------------------------------

export const ORIGIN_PREFIX = 'duet.controller/';

async function noteKeyId(name, type, raw) {
  const digest = await sha256(concat(utf8.encode(name + '\n'), new Uint8Array([type]), raw));
  return ((digest[0] << 24) >>> 0) + (digest[1] << 16) + (digest[2] << 8) + digest[3];
}

/** The raw 32 bytes of an Ed25519 SPKI (a controller's checkpoints are Ed25519 notes). */
function rawEd25519(publicKey) {
  if (publicKey.type !== 'ed25519') {
    throw new VerificationFailure('bad_key', 'checkpoints are signed with Ed25519 keys; the pinned key is not one');
  }
  return publicKey.spki.slice(12);
}

/**
 * A controller's C2SP checkpoint note, verified with the pinned key under the origin
 * `duet.controller/<id>` (checkpoint.verify_checkpoint with controller_log_verifier):
 * {size, root (bytes), root_hash (hex), note}. Witness cosignatures are ignored, as any
 * signature line of a key the reader does not know.
 */
export async function verifyCheckpoint(text, { controller, publicKey }) {
  const origin = ORIGIN_PREFIX + controller;
  const split = text.lastIndexOf('\n\n');
  if (split < 0 || !text.endsWith('\n')) throw new VerificationFailure('bad_signature', 'the checkpoint is not a signed note');
  const body = text.slice(0, split + 1);
  const lines = text.slice(split + 2, -1).split('\n');
  const raw = rawEd25519(publicKey);
  const keyId = await noteKeyId(origin, 0x01, raw);
  let signed = false;
  for (const line of lines) {
    const match = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/.exec(line);
    if (!match) throw new VerificationFailure('bad_signature', 'the checkpoint has a malformed signature line');
    if (match[1] !== origin) continue;
    const blob = b64decode(match[2]);
    const id = ((blob[0] << 24) >>> 0) + (blob[1] << 16) + (blob[2] << 8) + blob[3];
    if (id !== keyId) continue;
    if (!(await verifySignature(publicKey, blob.slice(4), utf8.encode(body)))) {
      throw new VerificationFailure('bad_signature', "the checkpoint's signature does not verify with the pinned controller key");
    }
    signed = true;
  }
  if (!signed) throw new VerificationFailure('bad_signature', 'the checkpoint is not signed by the pinned controller key');
  const [first, sizeLine, rootLine] = body.split('\n');
  if (first !== origin) throw new VerificationFailure('bad_signature', `the checkpoint is of log ${first}, not ${origin}`);
  if (!/^(0|[1-9][0-9]*)$/.test(sizeLine || '') || !isSize(Number(sizeLine))) {
    throw new VerificationFailure('bad_head', 'the checkpoint size is not a number');
  }
  const root = b64decode(rootLine || '');
  if (root.length !== 32) throw new VerificationFailure('bad_head', 'the checkpoint root is not a SHA-256');
  return { tree_size: Number(sizeLine), root_hash: hex(root), controller, note: text };
}

/** `tile/<L>/<N>[.p/<W>]`, or `tile/entries/<N>[.p/<W>]` for level 'entries' (tiles.tile_path,
 * entries_path): N in three-digit groups, all but the last prefixed with x. */
export function tilePath(level, index, width = 256) {
  const groups = [String(index % 1000).padStart(3, '0')];
  let n = Math.floor(index / 1000);
  while (n > 0) {
    groups.push('x' + String(n % 1000).padStart(3, '0'));
    n = Math.floor(n / 1000);
  }
  return `tile/${level}/${groups.reverse().join('/')}${width === 256 ? '' : `.p/${width}`}`;
}

/** The entries of a C2SP entry bundle: each a big-endian uint16 length and its bytes. */
export function decodeEntryBundle(data, width, path) {
  const entries = [];
  let at = 0;
  while (at < data.length) {
    if (at + 2 > data.length) throw new VerificationFailure('malformed_tile', `${path} ends inside an entry's length`);
    const length = (data[at] << 8) | data[at + 1];
    if (at + 2 + length > data.length) throw new VerificationFailure('malformed_tile', `${path} ends inside an entry`);
    entries.push(data.slice(at + 2, at + 2 + length));
    at += 2 + length;
  }
  if (entries.length !== width) throw new VerificationFailure('malformed_tile', `${path} holds ${entries.length} entries, not ${width}`);
  return entries;
}
