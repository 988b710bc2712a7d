/**
 * Examples → flat token batches for the GPU, by padding or by packing.
 *
 * A batch is B rows of L tokens flattened to T = B·L (row-major), because the kernels work on
 * flat tokens. Each token carries:
 *   inputIds[t]   the token
 *   labels[t]     the token the model must predict AT position t (the next token of the same
 *                 example), −100 where there is none: already shifted, so the loss kernel is
 *                 `cross_entropy(logits[t], labels[t])` and never looks at a neighbour. An
 *                 example's last token and every pad have −100, so a target never crosses
 *                 an example boundary.
 *   positions[t]  RoPE position, restarting at 0 for every example (packed or not)
 *   seqIds[t]     which example the token belongs to, unique within the batch (0..numSequences-1),
 *                 −1 for pads. Attention: query t may see key s iff s ≤ t and seqIds[s] == seqIds[t] ≠ −1.
 *
 * Padding: one example per row, right-padded to the longest row of the batch (pad id, label −100,
 * seq −1, position 0). Packing: greedy first-fit of examples (in shuffled order) into rows of
 * `maxLength` tokens; rows are then grouped B at a time, and L is the longest row of the batch.
 *
 * Order is deterministic: epoch e visits examples in the permutation `Rng.derive(seed, "shuffle", e)`,
 * so a data position {epoch, step} fully names a batch and `seek` resumes exactly there.
 */
import { Rng } from "./rng.ts";
import { IGNORE_INDEX, type TokenizedExample } from "./tokenize-conversation.ts";

export interface Batch {
  /** (T,) T = rows · rowLength. */
  inputIds: Int32Array;
  /** (T,) shifted targets, −100 where no loss. */
  labels: Int32Array;
  /** (T,) position within its example. */
  positions: Int32Array;
  /** (T,) example index within the batch, −1 for padding. */
  seqIds: Int32Array;
  /** Tokens with a label ≠ −100: the divisor of the mean loss. */
  numTargets: number;
  /** Examples in the batch. */
  numSequences: number;
  /** Non-pad tokens. */
  numTokens: number;
  /** B. */
  rows: number;
  /** L. */
  rowLength: number;
}

/**
 * Lays rows of examples out into one flat batch. `rows[b]` lists the examples packed into row b
 * (one each when padding). `rowLength` defaults to the longest row, rounded up to `padToMultipleOf`.
 */
export function assembleBatch(
  rows: readonly (readonly TokenizedExample[])[],
  options: { padId: number; rowLength?: number; padToMultipleOf?: number },
): Batch {
  const used = rows.map((row) => row.reduce((n, ex) => n + ex.inputIds.length, 0));
  let L = options.rowLength ?? Math.max(1, ...used);
  const multiple = options.padToMultipleOf ?? 1;
  L = Math.ceil(L / multiple) * multiple;
  const B = rows.length;
  const T = B * L;
  const inputIds = new Int32Array(T).fill(options.padId);
  const labels = new Int32Array(T).fill(IGNORE_INDEX);
  const positions = new Int32Array(T);
  const seqIds = new Int32Array(T).fill(-1);
  let seq = 0;
  let numTargets = 0;
  let numTokens = 0;
  rows.forEach((row, b) => {
    if (used[b]! > L) throw new Error(`batch row ${b} holds ${used[b]} tokens, more than the row length ${L}`);
    let t = b * L;
    for (const ex of row) {
      const n = ex.inputIds.length;
      inputIds.set(ex.inputIds, t);
      for (let k = 0; k < n; k++) {
        positions[t + k] = k;
        seqIds[t + k] = seq;
        // Predict token k+1 at position k: the shift stays inside the example.
        const target = k + 1 < n ? ex.labels[k + 1]! : IGNORE_INDEX;
        labels[t + k] = target;
        if (target !== IGNORE_INDEX) numTargets++;
      }
      t += n;
      numTokens += n;
      seq++;
    }
  });
  return { inputIds, labels, positions, seqIds, numTargets, numSequences: seq, numTokens, rows: B, rowLength: L };
}

/**
 * Greedy first-fit: each length (in the given order) goes into the first row with room, else a
 * new row. A max segment tree over rows' free space makes it O(n log n). Returns, per row, the
 * indices into `lengths` in placement order.
 */
export function firstFitPack(lengths: readonly number[], capacity: number): number[][] {
  const n = lengths.length;
  let size = 1;
  while (size < Math.max(1, n)) size *= 2;
  const free = new Float64Array(2 * size).fill(capacity); // leaves: rows; inner: max of children
  const rows: number[][] = [];
  for (let i = 0; i < n; i++) {
    const len = lengths[i]!;
    if (len > capacity) throw new Error(`example ${i} has ${len} tokens, more than the packing length ${capacity}`);
    let node = 1;
    while (node < size) node = free[2 * node]! >= len ? 2 * node : 2 * node + 1;
    const row = node - size;
    (rows[row] ??= []).push(i);
    free[node] = free[node]! - len;
    for (node >>= 1; node >= 1; node >>= 1) free[node] = Math.max(free[2 * node]!, free[2 * node + 1]!);
  }
  return rows;
}

/** Where the data stream is: the next batch is batch `step` of epoch `epoch`. */
export interface DataPosition {
  epoch: number;
  step: number;
}

export interface DataLoaderOptions {
  /** "pad": one example per row. "pack": first-fit into rows of maxLength. */
  mode: "pad" | "pack";
  /** Rows per batch (B). */
  batchSize: number;
  /** Packing row length; in pad mode, a check that no example is longer. */
  maxLength: number;
  seed: number;
  /** Shuffle each epoch (default true). */
  shuffle?: boolean;
  padId: number;
  padToMultipleOf?: number;
  /** Drop an epoch's last batch when it has fewer than batchSize rows (default false). */
  dropLast?: boolean;
}

/** Batches, epoch after epoch, resumable at any {epoch, step}. */
export class DataLoader {
  private readonly examples: readonly TokenizedExample[];
  private readonly options: Required<Omit<DataLoaderOptions, "padToMultipleOf">> & { padToMultipleOf: number };
  private planEpoch = -1;
  private plan: number[][][] = []; // batch → row → example indices
  private cursor: DataPosition = { epoch: 0, step: 0 };

  constructor(examples: readonly TokenizedExample[], options: DataLoaderOptions) {
    if (examples.length === 0) throw new Error("DataLoader needs at least one example");
    if (!(Number.isInteger(options.batchSize) && options.batchSize >= 1)) throw new Error(`batchSize must be a positive integer, got ${options.batchSize}`);
    const longest = examples.reduce((m, ex) => Math.max(m, ex.inputIds.length), 0);
    if (longest > options.maxLength) throw new Error(`an example has ${longest} tokens, more than maxLength ${options.maxLength}; tokenize with the same maxLength`);
    this.examples = examples;
    this.options = { shuffle: true, dropLast: false, padToMultipleOf: 1, ...options };
    if (this.options.dropLast && this.batchesInEpoch(0) === 0) {
      throw new Error(`dropLast with batchSize ${options.batchSize} leaves no batch: the data makes fewer rows than that`);
    }
  }

  /** Example order of an epoch. */
  epochOrder(epoch: number): number[] {
    const n = this.examples.length;
    return this.options.shuffle ? Rng.derive(this.options.seed, "shuffle", epoch).permutation(n) : Array.from({ length: n }, (_, i) => i);
  }

  private planFor(epoch: number): number[][][] {
    if (epoch === this.planEpoch) return this.plan;
    const order = this.epochOrder(epoch);
    const rows =
      this.options.mode === "pack"
        ? firstFitPack(order.map((i) => this.examples[i]!.inputIds.length), this.options.maxLength).map((r) => r.map((k) => order[k]!))
        : order.map((i) => [i]);
    const B = this.options.batchSize;
    const batches: number[][][] = [];
    for (let i = 0; i < rows.length; i += B) batches.push(rows.slice(i, i + B));
    if (this.options.dropLast && batches.length > 0 && batches.at(-1)!.length < B) batches.pop();
    this.planEpoch = epoch;
    this.plan = batches;
    return batches;
  }

  /** Batches in an epoch (packing can give a slightly different count each epoch). */
  batchesInEpoch(epoch: number): number {
    return this.planFor(epoch).length;
  }

  /** Optimizer-free count of batches over `epochs` epochs, for the LR schedule. */
  totalBatches(epochs: number): number {
    let total = 0;
    for (let e = 0; e < epochs; e++) total += this.batchesInEpoch(e);
    return total;
  }

  get position(): DataPosition {
    return { ...this.cursor };
  }

  /** Continue from a saved position. */
  seek(position: DataPosition): void {
    const { epoch, step } = position;
    if (!(Number.isInteger(epoch) && epoch >= 0 && Number.isInteger(step) && step >= 0)) {
      throw new Error(`invalid data position ${JSON.stringify(position)}`);
    }
    const count = this.batchesInEpoch(epoch);
    if (step > count) throw new Error(`data position ${JSON.stringify(position)} is past the end of epoch ${epoch} (${count} batches); was the data or batch size changed?`);
    this.cursor = step === count ? { epoch: epoch + 1, step: 0 } : { epoch, step };
  }

  /** The batch at a position, without moving. */
  batchAt(position: DataPosition): Batch {
    const plan = this.planFor(position.epoch);
    const rows = plan[position.step];
    if (!rows) throw new Error(`no batch ${position.step} in epoch ${position.epoch} (${plan.length} batches)`);
    return assembleBatch(
      rows.map((row) => row.map((i) => this.examples[i]!)),
      { padId: this.options.padId, padToMultipleOf: this.options.padToMultipleOf },
    );
  }

  /** The next batch and where it was; the position moves past it (into the next epoch at the end). */
  next(): { batch: Batch; position: DataPosition } {
    const position = this.position;
    const batch = this.batchAt(position);
    this.skip();
    return { batch, position };
  }

  /** Moves past the next batch without assembling it (another data-parallel rank's). */
  skip(): void {
    const position = this.cursor;
    const count = this.batchesInEpoch(position.epoch);
    this.cursor = position.step + 1 >= count ? { epoch: position.epoch + 1, step: 0 } : { epoch: position.epoch, step: position.step + 1 };
  }

  /** Every batch of one pass over the data in file order, unshuffled: for evaluation. */
  static evalBatches(examples: readonly TokenizedExample[], options: Omit<DataLoaderOptions, "seed" | "shuffle">): Batch[] {
    const loader = new DataLoader(examples, { ...options, seed: 0, shuffle: false, dropLast: false });
    return Array.from({ length: loader.batchesInEpoch(0) }, (_, step) => loader.batchAt({ epoch: 0, step }));
  }
}
