/**
 * The admin API's audit trail (src/layers/release/Audit.ts): each change an
 * admin makes is recorded in MESH_CONFIG under audit/, newest first, at most
 * Audit.maxEntries, and served at GET /api/admin/audit to admins only.
 */
import { expect, it } from "@effect/vitest"
import { env } from "cloudflare:workers"
import { Effect } from "effect"
import { afterEach, describe } from "vitest"
import * as Audit from "../../src/layers/release/Audit.ts"
import { expectProblem, send, signedIn } from "../helpers.ts"

const kv = env.MESH_CONFIG

const clearTrail = async () => {
  const listed = await kv.list({ prefix: Audit.prefix })
  await Promise.all(listed.keys.map(({ name }) => kv.delete(name)))
}

interface Trail {
  readonly entries: ReadonlyArray<Audit.AuditEntry>
}

describe("the audit trail", () => {
  afterEach(async () => {
    await kv.delete("flags/audit-test")
    await clearTrail()
  })

  it("records who changed what and when, newest first, and only changes that were made", async () => {
    await clearTrail()
    const admin = await signedIn("admin")
    const member = await signedIn()
    const before = Date.now()
    expect((await send("PUT", "/api/admin/flags/audit-test", { enabled: true, percentage: 10 }, admin.token)).status).toBe(200)
    expect((await send("DELETE", "/api/admin/flags/audit-test", undefined, admin.token)).status).toBe(204)
    // Neither a refused change (400, 403) nor a read is a change.
    await expectProblem(await send("PUT", "/api/admin/flags/audit-test", { enabled: "yes" }, admin.token), 400)
    await expectProblem(await send("PUT", "/api/admin/flags/audit-test", { enabled: true, percentage: 5 }, member.token), 403)
    expect((await send("GET", "/api/admin/status", undefined, admin.token)).status).toBe(200)

    const response = await send("GET", "/api/admin/audit", undefined, admin.token)
    expect(response.status).toBe(200)
    expect(response.headers.get("cache-control")).toBe("no-store")
    const { entries } = await response.json() as Trail
    expect(entries.map((entry) => `${entry.method} ${entry.path} ${entry.status}`)).toEqual([
      "DELETE /api/admin/flags/audit-test 204",
      "PUT /api/admin/flags/audit-test 200"
    ])
    expect(entries[1]).toMatchObject({ by: admin.id, body: JSON.stringify({ enabled: true, percentage: 10 }) })
    expect(entries[0]!.body).toBeUndefined()
    expect(Date.parse(entries[1]!.at)).toBeGreaterThanOrEqual(before - 1000)

    await expectProblem(await send("GET", "/api/admin/audit", undefined, member.token), 403)
    await expectProblem(await send("POST", "/api/admin/audit", {}, admin.token), 405)
  })

  it("keeps the newest entries only, each with an expiry, and cuts long bodies in its listing", async () => {
    await clearTrail()
    const start = Date.UTC(2026, 0, 1)
    const total = Audit.maxEntries + 5
    for (let i = 0; i < total; i++) {
      await Effect.runPromise(Audit.record(kv, {
        at: new Date(start + i).toISOString(),
        by: "someone",
        method: "PUT",
        path: `/api/admin/flags/f${i}`,
        status: 200,
        body: i === total - 1 ? "x".repeat(Audit.maxBodyChars + 100) : "{}"
      }, start + i))
    }
    const listed = await kv.list({ prefix: Audit.prefix })
    expect(listed.keys).toHaveLength(Audit.maxEntries)
    expect(listed.keys.every((key) => typeof key.expiration === "number")).toBe(true)

    const entries = await Effect.runPromise(Audit.read(kv, 1000))
    expect(entries).toHaveLength(Audit.maxEntries)
    expect(entries[0]).toMatchObject({ path: `/api/admin/flags/f${total - 1}`, truncated: true })
    expect(entries[0]!.body).toHaveLength(Audit.maxBodyChars)
    expect(entries.at(-1)!.path).toBe("/api/admin/flags/f5")
    // The whole body stays in the entry's value.
    expect(JSON.parse((await kv.get(listed.keys[0]!.name))!).body).toHaveLength(Audit.maxBodyChars + 100)
  })
})
