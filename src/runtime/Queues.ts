/**
 * Cloudflare Queues with typed messages, per-message outcomes and the trace
 * carried along.
 *
 * ```ts
 * // producer, in a service layer
 * const jobs = yield* Queues.producer("IMPORTS", ImportItem)
 * yield* jobs.sendBatch(items)
 *
 * // consumer, in the Worker
 * Worker.make({
 *   ...,
 *   queue: Queues.route({
 *     "product-imports": Queues.consumer({ name: "product-imports", body: ImportItem, handle, isPermanent, deadLetter: "IMPORTS_DLQ" })
 *   })
 * })
 * ```
 *
 * Every message travels in an envelope `{ id, body, traceparent, sentAt }`.
 * `id` is the producer's id for the message: it stays the same across
 * redeliveries and across a producer that sends the same message twice, so
 * it is the key to deduplicate on (Queues deliver at least once). `once`
 * below does that in D1, in the same transaction as the message's writes.
 *
 * The consumer decides per message:
 * - handled: `ack`;
 * - failed with an error `isPermanent` says no retry can fix, or a body that
 *   does not decode: sent to the dead-letter queue at once (when `deadLetter`
 *   names its producer binding) and acked;
 * - any other failure, defects included: `retry` with exponential backoff
 *   (`backoff`); after the consumer's `max_retries` the platform moves the
 *   message to the queue's `dead_letter_queue`.
 * A batch never fails as a whole, so one poison message does not redeliver
 * its neighbours.
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Random from "effect/Random"
import * as Schema from "effect/Schema"
import type { SqlError, Statement } from "effect/sql"
import * as SqlClient from "effect/sql/SqlClient"
import * as Telemetry from "./Telemetry.ts"
import * as Bindings from "./Bindings.ts"
import { D1Batch } from "./D1.ts"

/** A message as it travels: the encoded body, the producer's id for it, and the trace it belongs to. */
export const Envelope = Schema.Struct({
  id: Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(128)),
  body: Schema.Unknown,
  /** W3C trace context of the span that sent it. */
  traceparent: Schema.optionalKey(Schema.String),
  /** Epoch milliseconds. */
  sentAt: Schema.Number
})
export type Envelope = typeof Envelope.Type

/** Sending failed; the first `sent` messages (whole batches of 100) were sent before it did. */
export class QueueSendFailed extends Schema.TaggedError<QueueSendFailed>()("meshwork/Queues/QueueSendFailed", {
  queue: Schema.String,
  sent: Schema.Number,
  cause: Schema.Defect()
}) {}

export interface Producer<A> {
  /** Sends one message; succeeds with its id. */
  readonly send: (body: A, options?: { readonly id?: string; readonly delaySeconds?: number }) => Effect.Effect<string, QueueSendFailed>
  /** Sends messages in batches of 100 (the platform's limit); succeeds with their ids, in order. */
  readonly sendBatch: (bodies: ReadonlyArray<A>, options?: { readonly delaySeconds?: number }) => Effect.Effect<ReadonlyArray<string>, QueueSendFailed>
}

/** Largest batch `sendBatch` hands the platform at once. */
export const maxSendBatch = 100

/** A producer over a Queue binding, for messages of `schema`. */
export const makeProducer = <A>(queue: Queue, name: string, schema: Schema.Codec<A, any>): Producer<A> => {
  const encode = Schema.encodeEffect(schema)
  const failed = (cause: unknown, sent = 0) => new QueueSendFailed({ queue: name, sent, cause })
  const envelope = (body: A, id: string | undefined, trace: string | undefined) =>
    Effect.all([Effect.mapError(encode(body), (cause) => failed(cause)), Clock.currentTimeMillis]).pipe(
      Effect.map(([encoded, sentAt]): Envelope => ({
        id: id ?? crypto.randomUUID(),
        body: encoded,
        sentAt,
        ...(trace === undefined ? {} : { traceparent: trace })
      }))
    )
  const delay = (delaySeconds: number | undefined) => delaySeconds === undefined ? undefined : { delaySeconds }
  return {
    send: (body, options) =>
      Effect.gen(function*() {
        const message = yield* envelope(body, options?.id, yield* Telemetry.traceparent)
        yield* Effect.tryPromise({ try: () => queue.send(message, delay(options?.delaySeconds)), catch: (cause) => failed(cause) })
        return message.id
      }).pipe(Effect.withSpan("queue.send", { kind: "producer", attributes: { "messaging.destination.name": name } })),
    sendBatch: (bodies, options) =>
      Effect.gen(function*() {
        const trace = yield* Telemetry.traceparent
        const messages = yield* Effect.forEach(bodies, (body) => envelope(body, undefined, trace))
        for (let start = 0; start < messages.length; start += maxSendBatch) {
          const chunk = messages.slice(start, start + maxSendBatch).map((body) => ({ body }))
          yield* Effect.tryPromise({
            try: () => queue.sendBatch(chunk, delay(options?.delaySeconds)),
            catch: (cause) => failed(cause, start)
          })
        }
        return messages.map((message) => message.id)
      }).pipe(Effect.withSpan("queue.sendBatch", {
        kind: "producer",
        attributes: { "messaging.destination.name": name, "messaging.batch.message_count": bodies.length }
      }))
  }
}

/** A producer over the Queue bound as `binding`. */
export const producer = <A>(binding: string, schema: Schema.Codec<A, any>) =>
  Effect.map(Bindings.queue(binding), (queue) => makeProducer(queue, binding, schema))

/** What a handler knows about the message it handles. */
export interface Delivery {
  /** The producer's id: the same for every delivery of the message. */
  readonly id: string
  /** The queue's id for the message. */
  readonly messageId: string
  /** 1 on the first delivery. */
  readonly attempts: number
  readonly sentAt: number
  readonly queue: string
}

export interface Backoff {
  /** The delay after the first failure; doubled after each further one. Default 2 seconds. */
  readonly base?: Duration.Input | undefined
  /** The longest delay. Default 5 minutes (the platform allows 12 hours). */
  readonly max?: Duration.Input | undefined
}

const maxDelaySeconds = 12 * 60 * 60

/**
 * Seconds to wait before redelivering a message that failed on delivery
 * `attempts`: `base * 2^(attempts - 1)`, capped at `max`, with jitter
 * between half and all of it so messages that failed together do not
 * come back together.
 */
export const backoff = (attempts: number, options: Backoff = {}): Effect.Effect<number> => {
  const base = Duration.toSeconds(options.base ?? "2 seconds")
  const max = Math.min(Duration.toSeconds(options.max ?? "5 minutes"), maxDelaySeconds)
  const delay = Math.min(max, base * 2 ** Math.max(0, Math.min(attempts - 1, 30)))
  return Effect.map(Random.next, (random) => Math.ceil(delay * (0.5 + random / 2)))
}

export interface ConsumerOptions<A, E, R> {
  /** The queue's name, for logs and spans. */
  readonly name: string
  /** The schema of message bodies. */
  readonly body: Schema.Codec<A, any>
  readonly handle: (body: A, delivery: Delivery) => Effect.Effect<void, E, R>
  /** Failures that no retry can fix: dead-lettered at once. Default: none; every failure retries. */
  readonly isPermanent?: ((error: E) => boolean) | undefined
  /**
   * The producer binding of the dead-letter queue, for undecodable messages
   * and permanent failures. Without it they are retried until the platform
   * dead-letters them after `max_retries`.
   */
  readonly deadLetter?: string | undefined
  /**
   * What to do with a message whose envelope or body does not decode, instead
   * of dead-lettering it (a dead-letter queue's own consumer stores it).
   */
  readonly onUndecodable?: ((message: Message<unknown>) => Effect.Effect<void, unknown, R>) | undefined
  readonly backoff?: Backoff | undefined
  /** Messages of one batch handled at once. Default 8. */
  readonly concurrency?: number | undefined
}

type Outcome = "ack" | "retry" | "dead-letter"

/** A queue handler that acks, retries or dead-letters each message of a batch on its own. */
export const consumer = <A, E, R>(options: ConsumerOptions<A, E, R>) => {
  const decode = (body: unknown) =>
    Effect.flatMap(Schema.decodeUnknownEffect(Envelope)(body), (envelope) =>
      Effect.map(decodeBody(envelope.body), (decoded) => ({ ...envelope, body: decoded })))
  const decodeBody = Schema.decodeUnknownEffect(options.body)
  const isPermanent = options.isPermanent ?? (() => false)

  const outcome = (message: Message<unknown>): Effect.Effect<Outcome, never, R> =>
    Effect.flatMap(Effect.exit(decode(message.body)), (decoded) => {
      if (Exit.isFailure(decoded)) {
        const undecodable = options.onUndecodable
        return Effect.andThen(
          Effect.logError("Undecodable message", decoded.cause),
          undecodable === undefined ? Effect.succeed<Outcome>("dead-letter") : undecodable(message).pipe(
            Effect.as<Outcome>("ack"),
            Effect.catchCause((cause) => Effect.as(Effect.logError("Storing an undecodable message failed", cause), "retry" as const))
          )
        ).pipe(Effect.annotateLogs({ queue: options.name, messageId: message.id }))
      }
      const envelope = decoded.value
      const delivery: Delivery = {
        id: envelope.id,
        messageId: message.id,
        attempts: message.attempts,
        sentAt: envelope.sentAt,
        queue: options.name
      }
      const parent = Telemetry.parseTraceparent(envelope.traceparent)
      return options.handle(envelope.body, delivery).pipe(
        Effect.withSpan(`queue.process ${options.name}`, {
          ...(parent === undefined ? {} : { parent }),
          kind: "consumer",
          attributes: {
            "messaging.destination.name": options.name,
            "messaging.message.id": envelope.id,
            "messaging.message.delivery_attempts": message.attempts
          }
        }),
        Effect.exit,
        Effect.flatMap((exit): Effect.Effect<Outcome> => {
          if (Exit.isSuccess(exit)) return Effect.succeed("ack")
          const permanent = exit.cause.reasons.some((reason) => Cause.isFailReason(reason) && isPermanent(reason.error))
          return Effect.as(
            Effect.logWarning(permanent ? "Message failed for good" : "Message failed; it will be retried", exit.cause),
            permanent ? "dead-letter" : "retry"
          )
        }),
        Effect.annotateLogs({ queue: options.name, messageId: envelope.id, attempts: message.attempts })
      )
    })

  const settle = (message: Message<unknown>, result: Outcome): Effect.Effect<void, never, Bindings.WorkerEnv> => {
    switch (result) {
      case "ack":
        return Effect.sync(() => message.ack())
      case "retry":
        return Effect.flatMap(backoff(message.attempts, options.backoff), (delaySeconds) =>
          Effect.sync(() => message.retry({ delaySeconds })))
      case "dead-letter":
        if (options.deadLetter === undefined) return settle(message, "retry")
        return Bindings.queue(options.deadLetter).pipe(
          Effect.flatMap((dlq) => Effect.tryPromise(() => dlq.send(message.body))),
          Effect.matchEffect({
            onSuccess: () => Effect.sync(() => message.ack()),
            // Not dead-lettered: retry, and the platform's own dead-letter queue takes it in the end.
            onFailure: (error): Effect.Effect<void, never, Bindings.WorkerEnv> =>
              Effect.andThen(Effect.logError("Dead-lettering failed", error), settle(message, "retry"))
          })
        )
    }
  }

  return (batch: MessageBatch<unknown>): Effect.Effect<void, never, R | Bindings.WorkerEnv> =>
    Effect.forEach(
      batch.messages,
      (message) => Effect.flatMap(outcome(message), (result) => settle(message, result)),
      { concurrency: options.concurrency ?? 8, discard: true }
    )
}

/** One queue handler for a Worker that consumes several queues, by queue name. */
export const route = <R>(
  consumers: Readonly<Record<string, (batch: MessageBatch<unknown>) => Effect.Effect<void, never, R>>>
) =>
(batch: MessageBatch<unknown>): Effect.Effect<void, never, R> => {
  const handle = consumers[batch.queue]
  if (handle !== undefined) return handle(batch)
  return Effect.andThen(
    Effect.logError(`No consumer for queue ${batch.queue}; the batch will be retried`),
    Effect.sync(() => batch.retryAll())
  )
}

/** What `once` found: the message's writes applied now, or already by an earlier delivery. */
export type Once = "processed" | "duplicate"

/**
 * Applies `statements` and records message `delivery.id` as done, in one D1
 * transaction: either both happen or neither. A message seen before changes
 * nothing and answers `"duplicate"`. Needs the table
 *
 * ```sql
 * CREATE TABLE queue_processed (id TEXT PRIMARY KEY, queue TEXT NOT NULL, outcome TEXT NOT NULL, processed_at TEXT NOT NULL);
 * ```
 *
 * in the same database (a migration of the consuming service). A message
 * has one row whichever queue handled it, so one that was processed and
 * then also dead-lettered is counted once.
 */
export const once = (
  delivery: Pick<Delivery, "id" | "queue">,
  outcome: string,
  statements: ReadonlyArray<Statement.Statement<unknown>>
): Effect.Effect<Once, SqlError.SqlError, SqlClient.SqlClient | D1Batch> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const d1 = yield* D1Batch
    const at = new Date(yield* Clock.currentTimeMillis).toISOString()
    const marker = sql`INSERT INTO queue_processed (id, queue, outcome, processed_at)
      VALUES (${delivery.id}, ${delivery.queue}, ${outcome}, ${at})`
    return yield* d1.batch([marker, ...statements]).pipe(
      Effect.as<Once>("processed"),
      Effect.catchIf(
        (error) => error.reason._tag === "UniqueViolation" && error.reason.constraint === "queue_processed.id",
        () => Effect.succeed<Once>("duplicate")
      )
    )
  })

/**
 * Deletes `queue_processed` rows older than `olderThan` (default 14 days,
 * longer than Queues keep a message, so a redelivery can no longer come):
 * without it the table only grows. Run it from a cron trigger.
 */
export const pruneProcessed = (olderThan: Duration.Input = "14 days") =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const cutoff = new Date((yield* Clock.currentTimeMillis) - Duration.toMillis(olderThan)).toISOString()
    const deleted = yield* sql<{ id: string }>`DELETE FROM queue_processed WHERE processed_at < ${cutoff} RETURNING id`
    return deleted.length
  })
