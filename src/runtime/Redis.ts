/**
 * A small Redis client for Workers: RESP2 over a TCP socket from
 * `cloudflare:sockets`, one connection per command.
 *
 * One connection per command, because a socket is request I/O and Workers
 * forbid sharing it between requests; a Worker that needs a warm connection
 * holds it in a Durable Object. Commands are plain strings; replies are
 * decoded to strings, numbers, arrays and null. `REDIS_URL`
 * (`redis://[[user]:password@]host:port[/db]`, `rediss://` for TLS; default
 * `redis://127.0.0.1:6379`) says where.
 */
import { connect } from "cloudflare:sockets"
import { Config, Context, Effect, Layer, Schema } from "effect"

export type Reply = string | number | null | ReadonlyArray<Reply>

export class RedisError extends Schema.TaggedError<RedisError>()("RedisError", {
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
      let at = next
      for (let i = 0; i < count; i++) {
        const item = parse(buffer, at)
        if (item === undefined) return undefined
        if (item.reply instanceof RedisError) return item
        items.push(item.reply)
        at = item.end
      }
      return { reply: items, end: at }
    }
    default:
      return { reply: new RedisError({ message: `Unexpected reply: ${line}` }), end: buffer.length }
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

/** Sends `commands` on one new connection and returns the last reply. */
const exchange = async (endpoint: Endpoint, commands: ReadonlyArray<ReadonlyArray<string>>): Promise<Reply> => {
  const socket = connect({ hostname: endpoint.hostname, port: endpoint.port }, { secureTransport: endpoint.tls ? "on" : "off", allowHalfOpen: false })
  try {
    const writer = socket.writable.getWriter()
    for (const command of commands) await writer.write(encode(command))
    writer.releaseLock()
    const reader = socket.readable.getReader()
    let buffer = new Uint8Array(0)
    let offset = 0
    const replies: Array<Reply> = []
    while (replies.length < commands.length) {
      const parsed = parse(buffer, offset)
      if (parsed !== undefined) {
        if (parsed.reply instanceof RedisError) throw parsed.reply
        replies.push(parsed.reply)
        offset = parsed.end
        continue
      }
      const { done, value } = await reader.read()
      if (done) throw new RedisError({ message: "Connection closed before the reply" })
      const grown = new Uint8Array(buffer.length + value.byteLength)
      grown.set(buffer)
      grown.set(value, buffer.length)
      buffer = grown
    }
    return replies.at(-1)!
  } finally {
    void socket.close().catch(() => {})
  }
}

export class Redis extends Context.Service<Redis, {
  /** One command, on its own connection. */
  readonly send: (...args: ReadonlyArray<string>) => Effect.Effect<Reply, RedisError>
  /** A Lua script, atomic in Redis. */
  readonly eval: (script: string, keys: ReadonlyArray<string>, args: ReadonlyArray<string>) => Effect.Effect<Reply, RedisError>
}>()("meshwork/runtime/Redis") {
  static readonly make = (url: string): Redis["Service"] => {
    const endpoint = parseUrl(url)
    const preamble: Array<Array<string>> = [
      ...(endpoint.password === undefined
        ? []
        : [endpoint.username === undefined ? ["AUTH", endpoint.password] : ["AUTH", endpoint.username, endpoint.password]]),
      ...(endpoint.database === 0 ? [] : [["SELECT", String(endpoint.database)]])
    ]
    const send = (...args: ReadonlyArray<string>) =>
      Effect.tryPromise({
        try: () => exchange(endpoint, [...preamble, args]),
        catch: (error) => error instanceof RedisError ? error : new RedisError({ message: String(error) })
      })
    return Redis.of({
      send,
      eval: (script, keys, args) => send("EVAL", script, String(keys.length), ...keys, ...args)
    })
  }

  /** From `REDIS_URL` (default `redis://127.0.0.1:6379`). */
  static readonly layer = Layer.effect(
    Redis,
    Effect.map(Config.String("REDIS_URL").pipe(Config.withDefault("redis://127.0.0.1:6379")), Redis.make)
  )
}
