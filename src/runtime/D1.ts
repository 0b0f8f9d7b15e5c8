/**
 * An `effect/sql` SqlClient over a D1 binding.
 *
 * Effect 4 has no published D1 driver yet; this one is thin. D1 has no
 * interactive transactions: `sql.withTransaction` fails. Write several
 * statements atomically with `batch`, which D1 runs as one transaction.
 *
 * ```ts
 * const SqlLive = D1.layer("USERS_DB")
 * ```
 *
 * Schema changes are D1 migrations (`migrations/*.sql`), applied by
 * `wrangler d1 migrations apply`, never at request time.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import * as Reactivity from "effect/reactivity/Reactivity"
import * as SqlClient from "effect/sql/SqlClient"
import * as SqlConnection from "effect/sql/SqlConnection"
import * as SqlError from "effect/sql/SqlError"
import * as Statement from "effect/sql/Statement"
import * as Bindings from "./Bindings.ts"

const uniqueViolation = /UNIQUE constraint failed: ([^:]+)/

const toSqlError = (operation: string) => (cause: unknown): SqlError.SqlError => {
  const message = cause instanceof Error ? cause.message : String(cause)
  const unique = uniqueViolation.exec(message)
  const reason = unique !== null
    ? new SqlError.UniqueViolation({ cause, message, operation, constraint: unique[1]!.trim() })
    : SqlError.classifySqliteError(cause, { message, operation })
  return new SqlError.SqlError({ reason })
}

/** Runs D1 statements in one implicit transaction; all succeed or none apply. */
export class D1Batch extends Context.Service<D1Batch, {
  readonly batch: (
    statements: ReadonlyArray<Statement.Statement<unknown>>
  ) => Effect.Effect<ReadonlyArray<ReadonlyArray<unknown>>, SqlError.SqlError>
}>()("meshwork/runtime/D1/D1Batch") {}

type TransformRows = <A extends object>(rows: ReadonlyArray<A>) => ReadonlyArray<A>

const makeConnection = (db: D1Database): SqlConnection.Connection => {
  const all = (sql: string, params: ReadonlyArray<unknown>) =>
    Effect.tryPromise({
      try: () => db.prepare(sql).bind(...params).all(),
      catch: toSqlError("execute")
    })
  const rows = (sql: string, params: ReadonlyArray<unknown>, transformRows: TransformRows | undefined) =>
    Effect.map(all(sql, params), (result) => {
      const results = result.results as ReadonlyArray<object>
      return transformRows === undefined ? results : transformRows(results)
    })
  const values = (sql: string, params: ReadonlyArray<unknown>) =>
    Effect.tryPromise({
      try: () => db.prepare(sql).bind(...params).raw() as Promise<ReadonlyArray<ReadonlyArray<unknown>>>,
      catch: toSqlError("execute")
    })
  return {
    execute: rows,
    executeUnprepared: rows,
    executeRaw: all,
    executeValues: values,
    executeValuesUnprepared: values,
    executeStream: (sql, params, transformRows) =>
      Stream.fromIterableEffect(rows(sql, params, transformRows))
  }
}

/** A SqlClient (and a `D1Batch`) over the D1 database bound as `binding`. */
export const layer = (binding: string): Layer.Layer<SqlClient.SqlClient | D1Batch, Bindings.MissingBinding, Bindings.WorkerEnv> =>
  Layer.effectContext(Effect.gen(function*() {
    const db = yield* Bindings.d1(binding)
    const connection = makeConnection(db)
    const compiler = Statement.makeCompilerSqlite()
    const client = yield* SqlClient.make({
      acquirer: Effect.succeed(connection),
      borrower: (f) => f(connection),
      compiler,
      driver: "d1",
      spanAttributes: [["db.system.name", "sqlite"], ["db.namespace", binding]],
      beginTransaction: "BEGIN /* D1 has no interactive transactions: use D1Batch */"
    })
    const batch = (statements: ReadonlyArray<Statement.Statement<unknown>>) =>
      Effect.tryPromise({
        try: async () => {
          const results = await db.batch(statements.map((statement) => {
            const [sql, params] = statement.compile()
            return db.prepare(sql).bind(...params)
          }))
          return results.map((result) => result.results as ReadonlyArray<unknown>)
        },
        catch: toSqlError("batch")
      })
    return Context.make(SqlClient.SqlClient, client).pipe(Context.add(D1Batch, D1Batch.of({ batch })))
  })).pipe(Layer.provide(Reactivity.layer))
