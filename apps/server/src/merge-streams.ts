/**
 * Several async iterables read together: yields [source index, value] in the order values
 * arrive. Returning early (or a throw from any source) closes every source still open.
 */
export async function* merge<T>(sources: readonly AsyncIterable<T>[]): AsyncGenerator<[number, T]> {
  const iterators = sources.map((s) => s[Symbol.asyncIterator]());
  const next = (i: number) => iterators[i]!.next().then((result) => ({ i, result }));
  const pending = new Map(iterators.map((_, i) => [i, next(i)]));
  try {
    while (pending.size > 0) {
      const { i, result } = await Promise.race(pending.values());
      if (result.done) {
        pending.delete(i);
        continue;
      }
      pending.set(i, next(i));
      yield [i, result.value];
    }
  } finally {
    for (const i of pending.keys()) void iterators[i]!.return?.(undefined)?.catch(() => {});
  }
}
