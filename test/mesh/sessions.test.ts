/** Sessions (a state coordinator per session) through the gateway. */
import { expect, it } from "@effect/vitest"
import { env } from "cloudflare:workers"
import { describe } from "vitest"
import * as Sharding from "../../src/layers/state/Sharding.ts"
import type { StorageStats } from "../../src/layers/state/StateCoordinator.ts"
import { expectProblem, gateway, signedIn } from "../helpers.ts"

interface SessionView {
  readonly id: string
  readonly version: number
  readonly attributes: Record<string, unknown>
  readonly cart: Record<string, number>
  readonly counters: Record<string, number>
}

const request = (method: string, path: string, token: string, body?: unknown, headers: Record<string, string> = {}) =>
  gateway(path, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
      ...headers
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })

const createSession = async (token: string, body: unknown = {}) => {
  const response = await request("POST", "/api/sessions", token, body)
  expect(response.status).toBe(201)
  return { response, session: await response.json() as SessionView }
}

const patch = (token: string, id: string, changes: ReadonlyArray<unknown>, ifMatch?: string) =>
  request("PATCH", `/api/sessions/${id}`, token, { changes }, ifMatch === undefined ? {} : { "if-match": ifMatch })

describe("sessions through the gateway", () => {
  it("creates, reads, changes and deletes a session, with its version as the ETag", async () => {
    const user = await signedIn()
    const { response, session } = await createSession(user.token, { attributes: { theme: "dark" } })
    expect(response.headers.get("etag")).toBe('"1"')
    expect(response.headers.get("location")).toBe(`/api/sessions/${session.id}`)
    expect(session).toEqual({ id: session.id, version: 1, attributes: { theme: "dark" }, cart: {}, counters: {} })

    const read = await request("GET", `/api/sessions/${session.id}`, user.token)
    expect(read.status).toBe(200)
    expect(read.headers.get("etag")).toBe('"1"')

    const changed = await patch(user.token, session.id, [
      { _tag: "SetCartItem", productId: "p1", quantity: 2 },
      { _tag: "SetCartItem", productId: "p2", quantity: 1 },
      { _tag: "SetCartItem", productId: "p2", quantity: 0 },
      { _tag: "Increment", counter: "views" },
      { _tag: "Increment", counter: "views", by: 4 },
      { _tag: "SetAttribute", name: "theme", value: null },
      { _tag: "SetAttribute", name: "lang", value: "fr" }
    ], '"1"')
    expect(changed.status).toBe(200)
    // One request is one atomic write: one version, however many changes it carries.
    expect(changed.headers.get("etag")).toBe('"2"')
    expect(await changed.json()).toEqual({
      id: session.id,
      version: 2,
      attributes: { lang: "fr" },
      cart: { p1: 2 },
      counters: { views: 5 }
    })

    const removed = await request("DELETE", `/api/sessions/${session.id}`, user.token, undefined, { "if-match": '"2"' })
    expect(removed.status).toBe(204)
    await expectProblem(await request("GET", `/api/sessions/${session.id}`, user.token), 404)
  })

  it("shows a session to its owner only", async () => {
    const [owner, other, admin] = await Promise.all([signedIn(), signedIn(), signedIn("admin")])
    const { session } = await createSession(owner.token)
    for (const intruder of [other, admin]) {
      await expectProblem(await request("GET", `/api/sessions/${session.id}`, intruder.token), 404)
      await expectProblem(await patch(intruder.token, session.id, [{ _tag: "Increment", counter: "x" }]), 404)
      await expectProblem(await request("DELETE", `/api/sessions/${session.id}`, intruder.token), 404)
    }
    await expectProblem(await gateway(`/api/sessions/${session.id}`), 401)
    // With If-Match, someone else's session is as absent as a missing one: 412, current version 0.
    expect(await expectProblem(await patch(other.token, session.id, [{ _tag: "Increment", counter: "x" }], "*"), 412))
      .toMatchObject({ currentVersion: 0 })
    expect(await expectProblem(await patch(other.token, crypto.randomUUID(), [{ _tag: "Increment", counter: "x" }], '"1"'), 412))
      .toMatchObject({ currentVersion: 0 })
    // Nothing the others did touched it.
    const read = await request("GET", `/api/sessions/${session.id}`, owner.token)
    expect(await read.json()).toMatchObject({ version: 1, counters: {} })
  })

  it("serves concurrent increments from many requests without losing one", async () => {
    const user = await signedIn()
    const { session } = await createSession(user.token)
    const responses = await Promise.all(
      Array.from({ length: 100 }, () => patch(user.token, session.id, [{ _tag: "Increment", counter: "clicks" }]))
    )
    expect(responses.map((response) => response.status)).toEqual(Array.from({ length: 100 }, () => 200))
    await Promise.all(responses.map((response) => response.body?.cancel()))
    const final = await (await request("GET", `/api/sessions/${session.id}`, user.token)).json() as SessionView
    expect(final.counters).toEqual({ clicks: 100 })
    expect(final.version).toBe(101)
  })

  it("lets exactly one of the writes sent with the same If-Match succeed, version after version", async () => {
    const user = await signedIn()
    const { session } = await createSession(user.token)
    for (let version = 1; version <= 5; version++) {
      const responses = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          patch(user.token, session.id, [{ _tag: "SetAttribute", name: "writer", value: i }], `"${version}"`))
      )
      const ok = responses.filter((response) => response.status === 200)
      expect(ok).toHaveLength(1)
      expect(ok[0]!.headers.get("etag")).toBe(`"${version + 1}"`)
      for (const response of responses.filter((response) => response.status !== 200)) {
        const problem = await expectProblem(response, 412)
        expect(problem).toMatchObject({ sessionId: session.id, currentVersion: version + 1 })
      }
      await Promise.all(ok.map((response) => response.body?.cancel()))
    }
    const final = await (await request("GET", `/api/sessions/${session.id}`, user.token)).json() as SessionView
    expect(final.version).toBe(6)
  })

  it("takes If-Match as RFC 9110 has it: *, lists, weak tags never match, malformed is 400, nothing applied when refused", async () => {
    const user = await signedIn()
    const { session } = await createSession(user.token)
    const increment = [{ _tag: "Increment", counter: "n" }]
    expect((await patch(user.token, session.id, increment, "*")).status).toBe(200) // -> 2
    expect((await patch(user.token, session.id, increment, '"7", "2"')).status).toBe(200) // -> 3
    await expectProblem(await patch(user.token, session.id, increment, 'W/"3"'), 412)
    await expectProblem(await patch(user.token, session.id, increment, "3"), 400)
    const read = await request("GET", `/api/sessions/${session.id}`, user.token)
    expect(await read.json()).toMatchObject({ version: 3, counters: { n: 2 } })
  })

  it("replaces a whole session only with If-Match (428 without, 412 when stale)", async () => {
    const user = await signedIn()
    const { session } = await createSession(user.token)
    const state = { attributes: { a: 1 }, cart: { p: 3 }, counters: {} }
    await expectProblem(await request("PUT", `/api/sessions/${session.id}`, user.token, state), 428)
    await expectProblem(await request("PUT", `/api/sessions/${session.id}`, user.token, state, { "if-match": '"9"' }), 412)
    const replaced = await request("PUT", `/api/sessions/${session.id}`, user.token, state, { "if-match": '"1"' })
    expect(replaced.status).toBe(200)
    expect(replaced.headers.get("etag")).toBe('"2"')
    expect(await replaced.json()).toEqual({ id: session.id, version: 2, ...state })
    await expectProblem(await request("DELETE", `/api/sessions/${session.id}`, user.token, undefined, { "if-match": '"1"' }), 412)
    // The limits hold for whole states too.
    const tooBig = { ...state, cart: Object.fromEntries(Array.from({ length: 101 }, (_, i) => [`p${i}`, 1])) }
    await expectProblem(await request("PUT", `/api/sessions/${session.id}`, user.token, tooBig, { "if-match": "*" }), 400)
    await expectProblem(await request("POST", "/api/sessions", user.token, { cart: tooBig.cart }), 400)
  })

  it("refuses a change it cannot apply, leaving the session untouched", async () => {
    const user = await signedIn()
    const { session } = await createSession(user.token)
    // A batch whose last change breaks the cart limit: nothing of it is applied.
    const lines = Array.from({ length: 100 }, (_, i) => ({ _tag: "SetCartItem", productId: `p${i}`, quantity: 1 }))
    expect((await patch(user.token, session.id, lines)).status).toBe(200)
    const refused = await expectProblem(
      await patch(user.token, session.id, [{ _tag: "Increment", counter: "n" }, { _tag: "SetCartItem", productId: "one-more", quantity: 1 }]),
      422
    )
    expect(refused).toMatchObject({ sessionId: session.id, reason: "A session holds at most 100 cart lines" })
    // Changes that do not match the schema never reach the object.
    await expectProblem(await patch(user.token, session.id, [{ _tag: "SetCartItem", productId: "p", quantity: -1 }]), 400)
    await expectProblem(await patch(user.token, session.id, [{ _tag: "Explode" }]), 400)
    await expectProblem(await patch(user.token, session.id, []), 400)
    const read = await (await request("GET", `/api/sessions/${session.id}`, user.token)).json() as SessionView
    expect(read.version).toBe(2)
    expect(read.counters).toEqual({})
    expect(Object.keys(read.cart)).toHaveLength(100)
  })

  it("leaves no storage behind for 100 reads of sessions that do not exist", async () => {
    const user = await signedIn()
    /** What the session's object stores (its read-only diagnostic). */
    const stored = (id: string) => {
      const stub = env.SESSIONS.get(env.SESSIONS.idFromName(Sharding.objectName("session", Sharding.perKey, id)))
      return (stub as unknown as { stats(): Promise<StorageStats> }).stats()
    }
    const ids = Array.from({ length: 100 }, () => crypto.randomUUID())
    const read = async (id: string, i: number) => {
      const path = i % 5 === 1 ? `/api/sessions/${id}/cart` : `/api/sessions/${id}`
      const response = await request(i % 10 === 2 ? "DELETE" : "GET", path, user.token)
      await response.body?.cancel()
      return response.status
    }
    // One first (the gateway warms up: its signing keys), then 50 at a time, as a client hammering
    // the API would: GET, its cart, and now and then a DELETE.
    const statuses = [await read(ids[0]!, 0)]
    for (let start = 1; start < ids.length; start += 50) {
      statuses.push(...await Promise.all(ids.slice(start, start + 50).map((id, i) => read(id, start + i))))
    }
    expect(new Set(statuses)).toEqual(new Set([404]))
    const stats: Array<StorageStats> = []
    for (let start = 0; start < ids.length; start += 50) stats.push(...await Promise.all(ids.slice(start, start + 50).map(stored)))
    // No table and no row in any of the 100 objects asked: none of them is kept.
    expect({
      tables: stats.reduce((sum, object) => sum + object.tables, 0),
      rows: stats.reduce((sum, object) => sum + object.rows, 0)
    }).toEqual({ tables: 0, rows: 0 })
    // The measure sees storage: a session that exists is one table and one row.
    const { session } = await createSession(user.token)
    expect(await stored(session.id)).toMatchObject({ tables: 1, rows: 1 })
  }, 180_000)
})
