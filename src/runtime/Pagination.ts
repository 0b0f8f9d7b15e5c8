/**
 * Keyset pagination shared by every list endpoint: `?limit=&cursor=` in,
 * `{ items, nextCursor }` out. The cursor is opaque to clients (base64url of
 * the last id returned); `nextCursor: null` means there is nothing more.
 */
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import * as Base64Url from "effect/encoding/Base64Url"
import * as HttpApiError from "effect/http-api/HttpApiError"

export const defaultLimit = 20
export const maxLimit = 100

export const PageQuery = {
  limit: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: maxLimit }))),
  cursor: Schema.optional(Schema.String.check(Schema.isPattern(/^[A-Za-z0-9_-]{1,128}$/)))
}

export const Page = <S extends Schema.Top>(item: S) =>
  Schema.Struct({
    items: Schema.Array(item),
    nextCursor: Schema.NullOr(Schema.String)
  })

export const encodeCursor = (id: string): string => Base64Url.encode(id)

/** The id a cursor stands for; `undefined` for a cursor that is not one of ours. */
export const decodeCursor = (cursor: string): string | undefined => Result.getOrUndefined(Base64Url.decodeString(cursor))

/**
 * Given rows fetched with `limit + 1`, the page to return: the extra row only
 * tells that another page exists.
 */
export const toPage = <A extends { readonly id: string }>(rows: ReadonlyArray<A>, limit: number) => {
  const items = rows.slice(0, limit)
  const last = items.at(-1)
  return { items, nextCursor: rows.length > limit && last !== undefined ? encodeCursor(last.id) : null }
}

export class InvalidCursor extends HttpApiError.Problem<InvalidCursor>()("InvalidCursor", {
  type: "urn:meshwork:problem:invalid-cursor",
  status: 400,
  title: "Invalid pagination cursor"
}) {}
