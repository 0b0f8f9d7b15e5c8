/**
 * A small Redis client for Workers: RESP2 over TCP sockets from
 * `cloudflare:sockets`.
 *
 * A socket is I/O of the request that opened it, and Workers forbid using it
 * from another request. So there are two ways to talk to Redis:
 *
 * - `Redis.make(url)`: one connection per command, usable anywhere;
 * - `Redis.pooled(url, { max, idleTtl })`: an Effect `Pool` of warm
 *   connections, for a scope whose requests may share sockets: inside a
 *   Durable Object (an object's I/O is its own, across the requests it
 *   serves), or inside one request that sends many commands.
 *   `RedisPoolObject` is such an object, and `Redis.viaObject` its client:
 *   Workers send commands to the object, which keeps the connections warm.
 *
 * For Postgres or MySQL, Cloudflare's Hyperdrive keeps the pool on
 * Cloudflare's side and hands each request a fresh, cheap connection; use it
 * rather than pooling yourself.
 *
 * Commands are plain strings; replies are decoded to strings, numbers,
 * arrays and null. `REDIS_URL` (`redis://[[user]:password@]host:port[/db]`,
 * `rediss://` for TLS; default `redis://127.0.0.1:6379`) says where.
 */
import { connect } from "cloudflare:sockets"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Pool from "effect/Pool"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as Bindings from "./Bindings.ts"
import * as DurableObjects from "./DurableObjects.ts"

export type Reply = string | number | null | ReadonlyArray<Reply>

export class RedisError extends Schema.TaggedError<RedisError>()("meshwork/Redis/RedisError", {
  message: Schema.String
}) {}

const encoder = new TextEncoder()
const decoder = new TextDecoder()

const encode = (args: ReadonlyArray<string>): Uint8Array =>
  encoder.encode(`*${args.length}\r\n` + args.map((arg) => `$${encoder.encode(arg).byteLength}\r\n${arg}\r\n`).join(""))

/** Parses one reply from `buffer` at `offset`: the reply and where it ends, or undefined if incomplete. */
const parse = (buffer: Uint8Array, offset: number): { reply: Reply | RedisError; end: number } | undefined => {
  const lineEnd = buffer.indexOf(13, offset)
  if (lineEnd === -1 || lineEnd + 1 >= buffer.length) return undefined
  const line = decoder.decode(buffer.subarray(offset + 1, lineEnd))
  const next = lineEnd + 2
  switch (String.fromCharCode(buffer[offset]!)) {
    case "+":
      return { reply: line, end: next }
    case "-":
      return { reply: new RedisError({ message: line }), end: next }
    case ":":
      return { reply: Number(line), end: next }
    case "$": {
      const length = Number(line)
      if (length === -1) return { reply: null, end: next }
      if (next + length + 2 > buffer.length) return undefined
      return { reply: decoder.decode(buffer.subarray(next, next + length)), end: next + length + 2 }
    }
    case "*": {
      const count = Number(line)
      if (count === -1) return { reply: null, end: next }
      const items: Array<Reply> = []
      let failure: RedisError | undefined
      let at = next
      for (let i = 0; i < count; i++) {
        const item = parse(buffer, at)
        if (item === undefined) return undefined
        // An error inside an array (EXEC, a script's table) fails the reply, once the whole array is read.
        if (item.reply instanceof RedisError) failure ??= item.reply
        else items.push(item.reply)
        at = item.end
      }
      return { reply: failure ?? items, end: at }
    }
    default:
      // Not RESP: the connection is out of step, and is not used again.
      throw new Error(`Unexpected reply from Redis: ${line}`)
  }
}

interface Endpoint {
  readonly hostname: string
  readonly port: number
  readonly tls: boolean
  readonly username: string | undefined
  readonly password: string | undefined
  readonly database: number
}

const parseUrl = (url: string): Endpoint => {
  const parsed = new URL(url)
  return {
    hostname: parsed.hostname,
    port: Number(parsed.port || 6379),
    tls: parsed.protocol === "rediss:",
    username: parsed.username === "" ? undefined : decodeURIComponent(parsed.username),
    password: parsed.password === "" ? undefined : decodeURIComponent(parsed.password),
    database: Number(parsed.pathname.slice(1) || 0)
  }
}

/**
 * One open connection: commands are written and their replies read in turn.
 * Not safe for concurrent use; the pool hands it to one user at a time.
 */
export class Connection {
  readonly #socket: Socket
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>
  #buffer = new Uint8Array(0)
  #offset = 0
  /** Set once the connection failed; it must not be used again. */
  broken = false

  constructor(endpoint: Endpoint) {
    this.#socket = connect(
      { hostname: endpoint.hostname, port: endpoint.port },
      { secureTransport: endpoint.tls ? "on" : "off", allowHalfOpen: false }
    )
    this.#writer = this.#socket.writable.getWriter()
    this.#reader = this.#socket.readable.getReader()
  }

  /** Sends `commands` (pipelined) and returns their replies; a Redis error reply rejects. */
  async send(commands: ReadonlyArray<ReadonlyArray<string>>): Promise<Array<Reply>> {
    try {
      for (const command of commands) await this.#writer.write(encode(command))
      const replies: Array<Reply> = []
      let failure: RedisError | undefined
      let received = 0
      while (received < commands.length) {
        const parsed = parse(this.#buffer, this.#offset)
        if (parsed === undefined) {
          const { done, value } = await this.#reader.read()
          if (done) throw new RedisError({ message: "Connection closed before the reply" })
          const rest = this.#buffer.subarray(this.#offset)
          const grown = new Uint8Array(rest.length + value.byteLength)
          grown.set(rest)
          grown.set(value, rest.length)
          this.#buffer = grown
          this.#offset = 0
          continue
        }
        this.#offset = parsed.end
        received++
        if (parsed.reply instanceof RedisError) failure ??= parsed.reply
        else replies.push(parsed.reply)
      }
      if (failure !== undefined) throw failure
      return replies
    } catch (error) {
      // A Redis error reply leaves the connection in step; anything else does not.
      if (!(error instanceof RedisError) || error.message.startsWith("Connection closed")) this.broken = true
      throw error
    }
  }

  close(): Promise<void> {
    this.broken = true
    return this.#socket.close().catch(() => {})
  }
}

/** Sends `commands` on one new connection and returns the last reply. */
const exchange = async (endpoint: Endpoint, commands: ReadonlyArray<ReadonlyArray<string>>): Promise<Reply> => {
  const connection = new Connection(endpoint)
  try {
    return (await connection.send(commands)).at(-1)!
  } finally {
    void connection.close()
  }
}

const toRedisError = (error: unknown) => error instanceof RedisError ? error : new RedisError({ message: String(error) })

export interface PoolOptions {
  /** Most connections open at once. Default 4. */
  readonly max?: number | undefined
  /** A connection unused for this long is closed. Default 30 seconds. */
  readonly idleTtl?: Duration.Input | undefined
  /** The connections' client name in Redis (`CLIENT LIST` shows it). */
  readonly name?: string | undefined
  /** A command without a reply by then fails, and its connection is replaced. Default 5 seconds. */
  readonly commandTimeout?: Duration.Input | undefined
}

const isTimeout = (exit: Exit.Exit<unknown, RedisError>) =>
  Exit.isFailure(exit) && exit.cause.reasons.some((reason) => reason._tag === "Fail" && reason.error.message.startsWith("No reply within"))

export class Redis extends Context.Service<Redis, {
  /** One command. */
  readonly send: (...args: ReadonlyArray<string>) => Effect.Effect<Reply, RedisError>
  /** A Lua script, atomic in Redis. */
  readonly eval: (script: string, keys: ReadonlyArray<string>, args: ReadonlyArray<string>) => Effect.Effect<Reply, RedisError>
}>()("meshwork/runtime/Redis") {
  /** One connection per command. */
  static readonly make = (url: string): Redis["Service"] => {
    const endpoint = parseUrl(url)
    const preamble = preambleOf(endpoint)
    const send = (...args: ReadonlyArray<string>) =>
      Effect.tryPromise({ try: () => exchange(endpoint, [...preamble, args]), catch: toRedisError })
    return fromSend(send)
  }

  /**
   * A pool of at most `max` warm connections, closed after `idleTtl` unused,
   * for the life of the current scope (a Durable Object, or one request).
   * Users beyond `max` wait, first come first served. A connection that
   * fails (closed, reset, garbled), or whose command timed out or was
   * interrupted, is closed and replaced; the command that saw it fail fails,
   * since it may or may not have run.
   */
  static readonly pooled = (url: string, options: PoolOptions = {}): Effect.Effect<Redis["Service"], never, Scope.Scope> =>
    Effect.gen(function*() {
      const endpoint = parseUrl(url)
      const preamble = [...preambleOf(endpoint), ...(options.name === undefined ? [] : [["CLIENT", "SETNAME", options.name]])]
      const open = Effect.acquireRelease(
        Effect.tryPromise({
          try: async () => {
            const connection = new Connection(endpoint)
            try {
              if (preamble.length > 0) await connection.send(preamble)
            } catch (error) {
              await connection.close()
              throw error
            }
            return connection
          },
          catch: toRedisError
        }),
        (connection) => Effect.promise(() => connection.close())
      )
      const pool = yield* Pool.makeWithTTL({
        acquire: open,
        min: 0,
        max: options.max ?? 4,
        timeToLive: options.idleTtl ?? "30 seconds",
        timeToLiveStrategy: "usage"
      })
      const timeout = options.commandTimeout ?? "5 seconds"
      const send = (...args: ReadonlyArray<string>) =>
        Effect.scoped(
          Effect.flatMap(Pool.get(pool), (connection) =>
            Effect.tryPromise({ try: () => connection.send([args]), catch: toRedisError }).pipe(
              Effect.timeoutOrElse({
                duration: timeout,
                orElse: () => Effect.fail(new RedisError({ message: `No reply within ${Duration.format(Duration.fromInputUnsafe(timeout))}` }))
              }),
              Effect.map((replies) => replies[0]!),
              Effect.onExit((exit) => {
                // Interrupted or timed out mid-command, the connection may still be reading: it is not handed out again.
                if (Exit.isFailure(exit) && (Exit.hasInterrupts(exit) || !connection.broken && isTimeout(exit))) connection.broken = true
                return Exit.isFailure(exit) && connection.broken
                  ? Effect.andThen(Effect.promise(() => connection.close()), Pool.invalidate(pool, connection))
                  : Effect.void
              })
            ))
        )
      return fromSend(send)
    })

  /** Commands sent to a `RedisPoolObject`, which holds the connections. */
  static readonly viaObject = (namespace: DurableObjectNamespace, name = "redis"): Redis["Service"] => {
    const stub = () => namespace.get(namespace.idFromName(name)) as unknown as Pick<RedisPoolObject, "send">
    const send = (...args: ReadonlyArray<string>) =>
      Effect.tryPromise({
        try: () => stub().send(args),
        catch: (error) => new RedisError({ message: error instanceof Error ? error.message : String(error) })
      }).pipe(Effect.flatMap((answer) => "error" in answer ? Effect.fail(new RedisError({ message: answer.error })) : Effect.succeed(answer.reply)))
    return fromSend(send)
  }

  /**
   * From `REDIS_URL` (default `redis://127.0.0.1:6379`): through the
   * `RedisPoolObject` bound as REDIS_POOL when the Worker has that binding,
   * else one connection per command.
   */
  static readonly layer = Layer.effect(
    Redis,
    Effect.gen(function*() {
      const pool = yield* Effect.option(Bindings.durableObject("REDIS_POOL"))
      if (pool._tag === "Some") return Redis.viaObject(pool.value)
      return Redis.make(yield* Config.String("REDIS_URL").pipe(Config.withDefault("redis://127.0.0.1:6379")))
    })
  )
}

/** A client from its way of sending one command. */
const fromSend = (send: Redis["Service"]["send"]): Redis["Service"] =>
  Redis.of({ send, eval: (script, keys, args) => send("EVAL", script, String(keys.length), ...keys, ...args) })

const preambleOf = (endpoint: Endpoint): Array<Array<string>> => [
  ...(endpoint.password === undefined
    ? []
    : [endpoint.username === undefined ? ["AUTH", endpoint.password] : ["AUTH", endpoint.username, endpoint.password]]),
  ...(endpoint.database === 0 ? [] : [["SELECT", String(endpoint.database)]])
]

class PooledRedis extends Context.Service<PooledRedis, Redis["Service"]>()("meshwork/runtime/Redis/PooledRedis") {
  static readonly layer = Layer.effect(
    PooledRedis,
    Effect.gen(function*() {
      const url = yield* Config.String("REDIS_URL").pipe(Config.withDefault("redis://127.0.0.1:6379"))
      const max = yield* Config.Int("REDIS_POOL_MAX").pipe(Config.withDefault(4))
      return yield* Redis.pooled(url, { max, name: "meshwork-pool" })
    })
  )
}

/**
 * A Durable Object holding a pool of Redis connections across the requests
 * it serves. Export it and bind it as REDIS_POOL; `Redis.layer` then sends
 * every command through it. One object (`redis`) serves a Worker's commands.
 */
export class RedisPoolObject extends DurableObjects.make({ name: "RedisPoolObject", layer: PooledRedis.layer }) {
  /** A command's reply, or Redis's error as data (an RPC rejection is for the object failing). */
  send(args: ReadonlyArray<string>): Promise<{ readonly reply: Reply } | { readonly error: string }> {
    return this.run(PooledRedis.use((redis) =>
      Effect.match(redis.send(...args), { onSuccess: (reply) => ({ reply }), onFailure: (error) => ({ error: error.message }) })
    ))
  }
}
