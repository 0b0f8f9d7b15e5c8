/**
 * Which Durable Object owns a key.
 *
 * One object is one thread: it serialises everything sent to it, which is
 * what makes it a coordinator, and also what caps it (roughly a thousand
 * small requests a second). Work scales by spreading keys over objects:
 *
 * - `perKey`: every key its own object (`<prefix>/<key>`). Unbounded spread,
 *   and the right choice when keys never need to be read together: a
 *   session, a lock.
 * - `shards(n)`: keys hashed onto `n` objects (`<prefix>/<shard>`). Each
 *   object holds many keys, so a question about all keys ("the most viewed
 *   products") is `n` calls rather than one per key.
 *
 * The sharding rule: `shard = jump(fnv1a64(utf8(key)), n)`, where `fnv1a64`
 * is 64-bit FNV-1a and `jump` is Lamping and Veach's jump consistent hash.
 * It needs no table, spreads keys evenly, and when `n` grows to `n + 1` only
 * the keys that land on the new shard move (about `1 / (n + 1)` of them);
 * no key moves between old shards. The data of a moved key stays in its old
 * object, so changing `n` needs a migration of those keys (not automated).
 */

export interface PerKey {
  readonly _tag: "PerKey"
}
export interface Shards {
  readonly _tag: "Shards"
  readonly count: number
}
export type Placement = PerKey | Shards

export const perKey: PerKey = { _tag: "PerKey" }

export const shards = (count: number): Shards => {
  if (!Number.isInteger(count) || count < 1 || count > 65_536) {
    throw new RangeError(`A shard count is an integer from 1 to 65536, not ${count}`)
  }
  return { _tag: "Shards", count }
}

const mask64 = (1n << 64n) - 1n
const fnvOffset = 0xcbf29ce484222325n
const fnvPrime = 0x100000001b3n
const encoder = new TextEncoder()

/** 64-bit FNV-1a of the key's UTF-8 bytes. */
export const fnv1a64 = (key: string): bigint => {
  let hash = fnvOffset
  for (const byte of encoder.encode(key)) {
    hash = ((hash ^ BigInt(byte)) * fnvPrime) & mask64
  }
  return hash
}

const jumpMultiplier = 2862933555777941757n
const twoTo31 = 2 ** 31

/** Jump consistent hash: a bucket in `[0, buckets)` for a 64-bit key. */
export const jump = (key: bigint, buckets: number): number => {
  let state = key
  let bucket = -1
  let next = 0
  while (next < buckets) {
    bucket = next
    state = (state * jumpMultiplier + 1n) & mask64
    next = Math.floor((bucket + 1) * (twoTo31 / (Number(state >> 33n) + 1)))
  }
  return bucket
}

/** The shard of `key` among `count` shards. */
export const shardOf = (key: string, count: number): number => jump(fnv1a64(key), count)

/** The name of the object that owns `key` under `placement`. */
export const objectName = (prefix: string, placement: Placement, key: string): string =>
  placement._tag === "PerKey" ? `${prefix}/${key}` : `${prefix}/${shardOf(key, placement.count)}`

/** Every object of a sharded placement, to ask a question of all keys. */
export const allObjectNames = (prefix: string, placement: Shards): ReadonlyArray<string> =>
  Array.from({ length: placement.count }, (_, shard) => `${prefix}/${shard}`)

/** The stub of the object that owns `key`. */
export const objectFor = <T extends Rpc.DurableObjectBranded | undefined>(
  namespace: DurableObjectNamespace<T>,
  prefix: string,
  placement: Placement,
  key: string
): DurableObjectStub<T> => namespace.get(namespace.idFromName(objectName(prefix, placement, key)))
