/** Small helpers shared by the services' D1 stores. */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"

/** The current time as an ISO 8601 string, from Effect's Clock (so TestClock controls it). */
export const nowIso: Effect.Effect<string> = Effect.map(Clock.currentTimeMillis, (millis) => new Date(millis).toISOString())

/** Decodes raw rows with `row` and maps each to the API shape. A row that does not decode is a defect. */
export const decodeRows = <Row, Encoded, A>(row: Schema.Codec<Row, Encoded>, toApi: (row: Row) => A) => {
  const decode = Schema.decodeUnknownEffect(Schema.Array(row))
  return <E, R>(query: Effect.Effect<ReadonlyArray<unknown>, E, R>): Effect.Effect<ReadonlyArray<A>, E, R> =>
    query.pipe(Effect.flatMap((rows) => Effect.orDie(decode(rows))), Effect.map((rows) => rows.map(toApi)))
}

/** The first row, or `orElse()` as a failure. */
export const first = <E>(orElse: () => E) => <A>(rows: ReadonlyArray<A>): Effect.Effect<A, E> =>
  rows[0] === undefined ? Effect.fail(orElse()) : Effect.succeed(rows[0])
