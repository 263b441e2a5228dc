// The page's auditor: what `duet audit CVM_ID` checks (duet/client/audit.py), in the browser.
// It reads through api.js and decides through verify.js; it knows nothing of the DOM.
//
// * The signed tree head must verify with the pinned key, and extend the last head this browser
//   saw from this controller (kept in localStorage): a smaller one is a ROLLBACK, another root
//   for the same size a FORK, a larger one without a valid consistency proof an INCONSISTENT
//   history. Only a head that held is kept.
// * Every entry shown is proven in that head: where a CVM's entries (or the controller's own,
//   those about no CVM) are dense in the ledger, the range holding them is streamed and hashed
//   into a frontier that must give the signed root (which also proves none of them was left out
//   there); where they are sparse, each gets its own inclusion proof. Each entry must name the
//   previous one of its CVM (the controller's, the previous one about no CVM).
// * New heads (live) are proven to extend the one shown by a consistency proof, and the entries
//   between the two are streamed onto the frontier the proof carries: the new root must come out.
// * From published tiles, every entry bundle is hashed into the frontier, whose root must be the
//   checkpoint's; the root at the size seen before is taken on the way (no proof needed).

import { ControllerRefused, pageText } from './api.js';
import {
  Frontier,
  VerificationFailure,
  decodeEntryBundle,
  equalBytes,
  fromHex,
  frontierFromConsistency,
  frontierInConsistencyProof,
  hex,
  isHex64,
  isPowerOfTwo,
  leafHash,
  tilePath,
  verifyCheckpoint,
  verifyConsistency,
  verifyHead,
  verifyInclusion,
} from './verify.js';

export const PAGE = 1000;
/** The filtered view of the entries about no CVM (`GET /v1/ledger/entries?cvm=controller`). */
export const CONTROLLER_SCOPE = 'controller';
/** What a page of PAGE entries costs in inclusion proofs (a CVM streams its range when cheaper). */
export const PAGE_COST = 35;
/** Inclusion proofs in flight at once (a browser opens six connections per host). */
export const PROOFS_IN_FLIGHT = 6;

const utf8 = new TextEncoder();

/** The last head this browser accepted from each controller, kept in localStorage. */
export class HeadStore {
  constructor(kind, storage = globalThis.localStorage) {
    this.kind = kind;
    this.storage = storage;
  }

  key(controller) {
    return `duet.dashboard.head.${this.kind}.${controller}`;
  }

  last(controller) {
    try {
      const head = JSON.parse(this.storage.getItem(this.key(controller)) || 'null');
      return head && Number.isSafeInteger(head.tree_size) && isHex64(head.root_hash) ? head : null;
    } catch {
      return null;
    }
  }

  save(head) {
    this.storage.setItem(this.key(head.controller), JSON.stringify(head));
  }
}

/** A time as the viewer reads it (their zone); the signed head keeps it in UTC. */
function localTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

function rollback(previous, head, who) {
  return new VerificationFailure(
    'rollback',
    `${who} now shows ${head.tree_size} ledger entries, but this browser saw it sign a head of ${previous.tree_size}` +
      `${previous.timestamp ? ` on ${localTime(previous.timestamp)}` : ''}: its history was rolled back`,
  );
}

function fork(previous, head) {
  return new VerificationFailure(
    'fork',
    `two signed heads of ${head.tree_size} entries with different roots (${previous.root_hash.slice(0, 16)}… seen before, ` +
      `${head.root_hash.slice(0, 16)}… now): two histories under one key`,
  );
}

function inconsistent(previous, head, why = '') {
  return new VerificationFailure(
    'inconsistent_head',
    `the head of ${head.tree_size} entries does not extend the head of ${previous.tree_size} this browser saw${why}: ` +
      'the ledger was rolled back and rewritten, or forked',
  );
}

/** Entries each hashed once: the canonical text the answer was checked with gives the leaf. */
async function leavesOf(entries, texts) {
  return Promise.all(
    entries.map(async (entry) => {
      const text = texts.get(entry);
      return text === undefined ? null : leafHash(utf8.encode(text));
    }),
  );
}

/** A run of async jobs, `width` at a time, in order of results. */
async function pool(items, width, job) {
  const results = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await job(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
  return results;
}

/**
 * One CVM's view (cvm null: the controller's own entries), as proven so far: entries by seq with
 * their leaf hashes; `proven` the seqs verified in the head; `findings` what did not hold
 * (VerificationFailure, each with its seq). Each entry must name the one shown before it
 * (`cvm_prev`; the first, none): an entry hidden between two shown is MISSING.
 */
export class Timeline {
  constructor(cvm) {
    this.cvm = cvm;
    this.entries = [];
    this.leaves = new Map();
    this.proven = new Set();
    this.findings = [];
    this.last = null; // seq of the last entry of this CVM shown, for the cvm_prev links
  }

  add(entry, leaf) {
    if (entry.cvm_prev !== undefined && entry.cvm_prev !== this.last) {
      const whose = this.cvm === null ? 'about no CVM, like it' : 'of this CVM';
      const before = this.last === null ? 'none was shown before it' : `the previous one shown is ${this.last}`;
      this.findings.push(
        new VerificationFailure(
          'entry_missing',
          `entry ${entry.seq} follows entry ${entry.cvm_prev} ${whose}, which was not shown (${before}): entries were hidden or deleted`,
          entry.seq,
        ),
      );
    }
    this.last = entry.seq;
    this.entries.push(entry);
    this.leaves.set(entry.seq, leaf);
  }
}

/** The ledger of a controller, read through its API (a ControllerApi with a pinned key). */
export class ControllerLedger {
  constructor(api, store = new HeadStore('controller')) {
    this.api = api;
    this.store = store;
    this.head = null;
    this.who = 'the controller';
    /** Entries the verified identity names ({seq, event, what}: the owner set's and the policy's),
     * which the controller's own view must show. */
    this.anchors = [];
  }

  get controller() {
    return this.api.pin.controller;
  }

  async consistencyProof(first, second) {
    const answer = await this.api.get('/v1/ledger/proof/consistency', { first, second });
    if (!answer || answer.first !== first || answer.second !== second || !Array.isArray(answer.proof) || !answer.proof.every(isHex64)) {
      throw new VerificationFailure('no_inclusion_proof', `the controller's consistency proof from ${first} entries is malformed`);
    }
    return answer.proof.map(fromHex);
  }

  /** Throws unless `head` extends `previous`; returns the consistency proof that shows it. */
  async extends(previous, head) {
    if (head.tree_size < previous.tree_size) throw rollback(previous, head, this.who);
    if (head.tree_size === previous.tree_size) {
      if (head.root_hash === previous.root_hash) return [];
      throw fork(previous, head);
    }
    let proof = null;
    try {
      proof = await this.consistencyProof(previous.tree_size, head.tree_size);
    } catch (error) {
      if (!(error instanceof ControllerRefused) && error.code !== 'no_inclusion_proof') throw error;
      throw inconsistent(previous, head, ` (no consistency proof: ${error.message})`);
    }
    if (!(await verifyConsistency(previous.tree_size, head.tree_size, fromHex(previous.root_hash), fromHex(head.root_hash), proof))) {
      throw inconsistent(previous, head);
    }
    return proof;
  }

  /**
   * The controller's current head, verified and held to the last head this browser saw and to
   * the head shown so far, then kept. Returns {head, previous, frontier}: `frontier` is the true
   * frontier of the previous head (from the consistency proof), to stream what came after it.
   */
  async advance() {
    const head = await verifyHead(await this.api.get('/v1/ledger/head'), this.api.pin);
    const stored = this.store.last(this.controller);
    const shown = this.head;
    if (stored && !(shown && stored.tree_size === shown.tree_size && stored.root_hash === shown.root_hash)) {
      await this.extends(stored, head);
    }
    let frontier = null;
    if (shown) {
      const proof = await this.extends(shown, head);
      frontier =
        head.tree_size === shown.tree_size
          ? null
          : frontierFromConsistency(shown.tree_size, fromHex(shown.root_hash), head.tree_size, proof);
    }
    this.store.save(head);
    this.head = head;
    return { head, previous: shown, frontier, seen: stored };
  }

  /** A page of entries [start, end) (of one CVM, or all), answer verified; each entry's leaf. */
  async page(start, end, cvm) {
    const texts = new Map();
    const query = { start, end, ...(cvm ? { cvm } : {}) };
    const page = await this.api.get('/v1/ledger/entries', query, (result) => pageText(result, texts));
    if (!page || !Array.isArray(page.entries) || !Number.isSafeInteger(page.end) || page.end <= start || page.end > end) {
      throw new VerificationFailure('entry_missing', `the controller's page of entries from ${start} is malformed`);
    }
    return { entries: page.entries, leaves: await leavesOf(page.entries, texts), stop: page.end };
  }

  /**
   * The pages of the whole ledger [start, end), in order; the next page is asked for while this
   * one is checked (pages are PAGE entries, so where the next starts is known in advance).
   */
  async *pages(start, end) {
    const ask = (at) => {
      const pending = this.page(at, end, null);
      pending.catch(() => {}); // a page asked for ahead and then not used must not be an unhandled rejection
      return { at, pending };
    };
    let current = start < end ? ask(start) : null;
    while (current) {
      const ahead = current.at + PAGE < end ? ask(current.at + PAGE) : null;
      const page = await current.pending;
      yield page;
      current = page.stop >= end ? null : ahead && ahead.at === page.stop ? ahead : ask(page.stop);
    }
  }

  /** The true frontier of the first `size` entries of `head`'s tree, or null where no proof carries it. */
  async frontierAt(size, head) {
    if (size === 0) return new Frontier();
    const carrier = isPowerOfTwo(size) ? size + 1 : size;
    if (isPowerOfTwo(carrier) || carrier >= head.tree_size) return null;
    const proof = await this.consistencyProof(carrier, head.tree_size);
    const nodes = frontierInConsistencyProof(carrier, head.tree_size, proof);
    if (!nodes) throw new VerificationFailure('no_inclusion_proof', `the consistency proof from ${carrier} entries has not the shape of one`);
    const found = new Frontier(carrier, nodes);
    if (!(await verifyConsistency(carrier, head.tree_size, await found.root(), fromHex(head.root_hash), proof))) {
      throw new VerificationFailure('no_inclusion_proof', `the consistency proof from ${carrier} entries does not verify`);
    }
    return carrier === size ? found : new Frontier(size, nodes.slice(0, -1));
  }

  /**
   * One CVM's timeline in the tree of `head` (cvm null: the controller's own entries, those
   * about no CVM), every entry proven; `progress(done, total)` as it goes.
   *
   * Where the CVM's entries are dense in the ledger, the range from its first entry to the head
   * is streamed and hashed onto the true frontier before it: the signed root must come out, and
   * the CVM's entries are taken from that stream, so none can be left out (the first must link
   * to no earlier one). Where they are sparse, its own entries are read and each is proven by an
   * inclusion proof. Which way is cheaper is read from the CVM's state answer (its first seq and
   * its number of entries), for the controller's own entries from their view itself: the
   * controller's word, used only to choose, never to judge.
   */
  async timeline(cvm, head, progress = () => {}) {
    if (cvm === null) return this.controllerTimeline(head, progress);
    const hint = await this.api.get(`/v1/cvms/${encodeURIComponent(cvm)}`).catch(() => null);
    const first = hint && hint.history ? hint.history.first_seq : null;
    const count = hint ? hint.entry_count : null;
    const streamed = await this.streamIfDense(cvm, first, count, head, progress);
    return streamed || this.proveView(cvm, await this.view(cvm, head), head, progress);
  }

  /** Whether proving `count` entries from seq `first` to the head one by one costs more than
   * streaming that range. */
  static dense(first, count, size) {
    return Number.isSafeInteger(first) && first >= 0 && first < size && Number.isSafeInteger(count) && count > 2 + PAGE_COST * Math.ceil((size - first) / PAGE);
  }

  /** The timeline streamed from (about) `first` to the head where that is cheaper; else null. */
  async streamIfDense(cvm, first, count, head, progress) {
    if (!ControllerLedger.dense(first, count, head.tree_size)) return null;
    const start = first <= PAGE ? 0 : first;
    const frontier = start === 0 ? new Frontier() : await this.frontierAt(start, head).catch(() => null);
    if (!frontier) return null;
    const timeline = new Timeline(cvm);
    return (await this.stream(timeline, start, head, frontier, progress)) ? timeline : null;
  }

  /**
   * The controller's own entries (owner sets, approval policies, proposals on no CVM, starts),
   * read through their view (`cvm=controller`); that view also says whether they are dense. A
   * streamed range that does not verify is proven entry by entry, to name what was altered.
   * The entries the verified identity names (`anchors`) must be among them.
   */
  async controllerTimeline(head, progress) {
    const shown = await this.view(null, head);
    const seqs = shown.map(([entry]) => (entry && typeof entry === 'object' ? entry.seq : null));
    const timeline =
      (await this.streamIfDense(null, seqs.length ? seqs[0] : null, shown.length, head, progress)) ||
      (await this.proveView(null, shown, head, progress));
    const have = new Map(timeline.entries.map((entry) => [entry.seq, entry]));
    for (const anchor of this.anchors) {
      if (!Number.isSafeInteger(anchor.seq) || anchor.seq >= head.tree_size) continue;
      const entry = have.get(anchor.seq);
      if (!entry || entry.event !== anchor.event) {
        timeline.findings.push(
          new VerificationFailure(
            'entry_missing',
            `the controller's identity says entry ${anchor.seq} (${anchor.event}) put ${anchor.what} in force, but ${
              entry ? `entry ${anchor.seq} is ${entry.event}` : "it is not among the controller's entries shown"
            }: entries were hidden`,
            entry ? anchor.seq : null,
          ),
        );
      }
    }
    return timeline;
  }

  /** The entries as the view of `cvm` serves them (null: the controller's own), each with its leaf. */
  async view(cvm, head) {
    const size = head.tree_size;
    const shown = [];
    for (let position = 0; position < size; ) {
      const { entries, leaves, stop } = await this.page(position, size, cvm === null ? CONTROLLER_SCOPE : cvm);
      entries.forEach((entry, i) => shown.push([entry, leaves[i]]));
      position = stop;
    }
    return shown;
  }

  /** The entries of a view, each proven by an inclusion proof (which also names each altered
   * entry when a streamed range did not verify) and linked to the one before it. */
  async proveView(cvm, shown, head, progress) {
    const timeline = new Timeline(cvm);
    const size = head.tree_size;
    let expected = 0;
    for (const [entry, leaf] of shown) {
      const seq = entry && typeof entry === 'object' ? entry.seq : undefined;
      if (!Number.isSafeInteger(seq) || seq < expected || seq >= size) {
        timeline.findings.push(new VerificationFailure('entry_misplaced', `an entry with seq ${JSON.stringify(seq)} is out of place`, null));
        continue;
      }
      if (entry.cvm !== cvm) {
        timeline.findings.push(new VerificationFailure('wrong_cvm', `entry ${seq} belongs to another CVM`, seq));
      }
      expected = seq + 1;
      timeline.add(entry, leaf);
    }
    await this.prove(timeline, timeline.entries, head, progress);
    return timeline;
  }

  /** One inclusion proof per entry, several in flight. */
  async prove(timeline, entries, head, progress) {
    const root = fromHex(head.root_hash);
    let done = 0;
    await pool(entries, PROOFS_IN_FLIGHT, async (entry) => {
      const leaf = timeline.leaves.get(entry.seq);
      let proven = false;
      try {
        const answer = await this.api.get('/v1/ledger/proof/inclusion', { index: entry.seq, tree_size: head.tree_size });
        const path = answer && Array.isArray(answer.audit_path) && answer.audit_path.every(isHex64) ? answer.audit_path.map(fromHex) : null;
        if (!path) throw new VerificationFailure('no_inclusion_proof', `the inclusion proof of entry ${entry.seq} is malformed`, entry.seq);
        proven = leaf !== null && (await verifyInclusion(leaf, entry.seq, head.tree_size, path, root));
      } catch (error) {
        if (error instanceof ControllerRefused) {
          timeline.findings.push(new VerificationFailure('no_inclusion_proof', `no inclusion proof for entry ${entry.seq}: ${error.message}`, entry.seq));
          return;
        }
        throw error;
      }
      if (proven) timeline.proven.add(entry.seq);
      else {
        timeline.findings.push(
          new VerificationFailure('entry_altered', `entry ${entry.seq} (${entry.event}) is not in the signed ledger as shown: it was altered`, entry.seq),
        );
      }
      progress(++done, entries.length);
    });
  }

  /**
   * Stream the ledger [start, head) onto `frontier` (true at `start`): the root must be the
   * signed one. Then the entries of the timeline's CVM in that range are added to it, proven.
   * False when the range did not verify (nothing is added: the caller names what was altered).
   */
  async stream(timeline, start, head, frontier, progress) {
    const size = head.tree_size;
    const mine = [];
    let position = start;
    for await (const { entries, leaves, stop } of this.pages(start, size)) {
      for (let i = 0; i < entries.length; i++) {
        const entry = entries[i];
        if (!entry || entry.seq !== position + i) {
          timeline.findings.push(new VerificationFailure('entry_misplaced', `expected entry ${position + i}, the controller served another`, position + i));
          return false;
        }
        if (entry.cvm === timeline.cvm) mine.push([entry, leaves[i]]);
      }
      if (stop !== position + entries.length) return false;
      await frontier.extend(leaves.map((leaf) => leaf || new Uint8Array(32)));
      position = stop;
      progress(position - start, size - start);
    }
    if (hex(await frontier.root()) !== head.root_hash) return false;
    if (!mine.length || (mine[0][0].cvm_prev !== null && mine[0][0].cvm_prev < start)) {
      return false; // the CVM has entries before the range streamed (a wrong hint): read its own view instead
    }
    for (const [entry, leaf] of mine) {
      timeline.add(entry, leaf);
      timeline.proven.add(entry.seq);
    }
    return true;
  }

  /**
   * The entries [previous, head) streamed onto `frontier` (the true frontier of the previous
   * head): every one of them proven at once, whatever CVM it is about.
   */
  async grow(previous, head, frontier) {
    const copy = frontier ? frontier.copy() : await this.frontierAt(previous.tree_size, head);
    if (!copy) throw new VerificationFailure('no_inclusion_proof', `no proof carries the tree of ${previous.tree_size} entries`);
    const all = [];
    let position = previous.tree_size;
    for await (const { entries, leaves, stop } of this.pages(previous.tree_size, head.tree_size)) {
      for (let i = 0; i < entries.length; i++) {
        if (!entries[i] || entries[i].seq !== position + i) {
          throw new VerificationFailure('entry_misplaced', `expected entry ${position + i}, the controller served another`, position + i);
        }
        all.push([entries[i], leaves[i]]);
      }
      if (stop !== position + entries.length) throw new VerificationFailure('entry_missing', 'the controller served fewer entries than asked');
      await copy.extend(leaves.map((leaf) => leaf || new Uint8Array(32)));
      position = stop;
    }
    if (hex(await copy.root()) !== head.root_hash) {
      throw new VerificationFailure(
        'entry_altered',
        `the new entries ${previous.tree_size} to ${head.tree_size - 1} do not hash to the signed root: they were altered`,
      );
    }
    return all;
  }
}

/** A controller's published tiled log, read from a bucket (TilesSource) with a pinned key. */
export class TilesLedger {
  constructor(source, pin, store = new HeadStore('tiles')) {
    this.source = source;
    this.pin = pin;
    this.store = store;
    this.head = null;
    this.frontier = null;
    this.entries = [];
    this.who = 'the published log';
  }

  get controller() {
    return this.pin.controller;
  }

  async checkpoint() {
    return verifyCheckpoint(await this.source.checkpoint(), this.pin);
  }

  async bundle(index, width) {
    let data = await this.source.file(tilePath('entries', index, width), { optional: width < 256 });
    let path = tilePath('entries', index, width);
    if (data === null) {
      path = tilePath('entries', index, 256); // the log grew past the checkpoint: the full bundle replaces it
      data = await this.source.file(path);
      return { path, entries: decodeEntryBundle(data, 256, path).slice(0, width) };
    }
    return { path, entries: decodeEntryBundle(data, width, path) };
  }

  /**
   * Read the checkpoint and every entry after what was read before, each hashed into the
   * frontier; the root must be the checkpoint's, and the root at the size this browser saw
   * before must be that head's. Returns the new entries (decoded) and the checkpoint.
   */
  async advance(progress = () => {}) {
    const head = await this.checkpoint();
    const stored = this.store.last(this.controller);
    const previous = this.head;
    for (const seen of [stored, previous]) {
      if (!seen) continue;
      if (head.tree_size < seen.tree_size) throw rollback(seen, head, this.who);
      if (head.tree_size === seen.tree_size && head.root_hash !== seen.root_hash) throw fork(seen, head);
    }
    if (previous && head.tree_size === previous.tree_size) return { head, previous, fresh: [] }; // same tree, checked above
    const start = previous ? previous.tree_size : 0;
    const frontier = previous ? this.frontier.copy() : new Frontier();
    const checkAt = stored && !previous && stored.tree_size > 0 ? stored.tree_size : null;
    const fresh = [];
    let position = start;
    const size = head.tree_size;
    for (let index = Math.floor(start / 256); index * 256 < size; index++) {
      const width = Math.min(256, size - index * 256);
      const { path, entries } = await this.bundle(index, width);
      const leaves = [];
      for (let i = 0; i < entries.length; i++) {
        const seq = index * 256 + i;
        if (seq < position) continue;
        const data = entries[i];
        let entry;
        try {
          entry = JSON.parse(new TextDecoder().decode(data));
        } catch {
          entry = { seq, event: '(not JSON)', raw: new TextDecoder().decode(data) };
        }
        if (!entry || entry.seq !== seq) {
          throw new VerificationFailure('entry_misplaced', `entry ${seq} in ${path} says it is seq ${JSON.stringify(entry && entry.seq)}`, seq);
        }
        fresh.push(entry);
        leaves.push(leafHash(data));
      }
      const hashed = await Promise.all(leaves);
      const split = checkAt !== null && checkAt > position && checkAt <= position + hashed.length ? checkAt - position : null;
      if (split !== null) {
        await frontier.extend(hashed.slice(0, split)); // the tree this browser saw before must be a prefix
        if (hex(await frontier.root()) !== stored.root_hash) throw inconsistent(stored, head, ' (its first entries hash to another root)');
        await frontier.extend(hashed.slice(split));
      } else {
        await frontier.extend(hashed);
      }
      position += hashed.length;
      progress(position - start, size - start);
    }
    if (hex(await frontier.root()) !== head.root_hash) throw await this.altered(start, size);
    this.store.save(head);
    this.head = head;
    this.frontier = frontier;
    this.entries.push(...fresh);
    return { head, previous, fresh };
  }

  /** The bundles do not hash to the checkpoint: name the first entry whose leaf hash differs
   * from its level-0 hash tile (a hint; the failure itself is proven by the root). */
  async altered(start, size) {
    for (let index = Math.floor(start / 256); index * 256 < size; index++) {
      const width = Math.min(256, size - index * 256);
      const { path, entries } = await this.bundle(index, width);
      const tile =
        (await this.source.file(tilePath(0, index, width), { optional: true })) || (await this.source.file(tilePath(0, index, 256), { optional: true }));
      if (!tile) continue;
      for (let i = 0; i < entries.length; i++) {
        if (!equalBytes(await leafHash(entries[i]), tile.slice(i * 32, i * 32 + 32))) {
          return new VerificationFailure('entry_altered', `entry ${index * 256 + i} in ${path} does not match its leaf hash: the entry bundle was altered`, index * 256 + i);
        }
      }
    }
    return new VerificationFailure('entry_altered', "the published entries do not hash to the checkpoint's root: the log was altered");
  }
}

/**
 * What the entries say about each CVM (for the list in tiles mode, and the verified mode of the
 * CVM shown): type, provider, mode, final, lockdown, latest attestation. Display only: the rules
 * themselves are `duet audit`'s (protocol/lifecycle.py).
 */
export function summarize(entries) {
  const cvms = new Map();
  for (const entry of entries) {
    if (!entry || typeof entry.cvm !== 'string') continue;
    let cvm = cvms.get(entry.cvm);
    if (!cvm) {
      cvm = { cvm_id: entry.cvm, created_at: entry.time, mode: null, final: false, lockdown: null, attestation: null, type: null, provider: null };
      cvms.set(entry.cvm, cvm);
    }
    cvm.updated_at = entry.time;
    cvm.last_seq = entry.seq;
    switch (entry.event) {
      case 'cvm.provisioning':
        Object.assign(cvm, { mode: 'provisioning', type: entry.type ?? null, provider: entry.provider ?? null });
        break;
      case 'cvm.ready':
        cvm.mode = entry.mode || 'in-update';
        break;
      case 'mode.changed':
        cvm.mode = entry.mode;
        cvm.final = Boolean(entry.final);
        break;
      case 'cvm.failed':
        cvm.mode = 'failed';
        break;
      case 'cvm.stopping':
        cvm.mode = 'stopping';
        break;
      case 'cvm.stopped':
        cvm.mode = 'stopped';
        break;
      case 'cvm.locked':
        if (entry.ok !== false) cvm.lockdown = 'done';
        break;
      case 'cvm.attested':
        cvm.attestation = { last: entry };
        break;
      default:
    }
  }
  return [...cvms.values()];
}
