/**
 * Queues end to end in workerd: a real queue with a dead-letter queue,
 * consumed by the runner (test/fixtures/worker.ts), and the products
 * Worker's import jobs through the gateway.
 */
import { env } from "cloudflare:workers"
import { beforeAll, describe, expect, it } from "vitest"
import { eventually, expectProblem, send, signedIn, unique } from "../helpers.ts"

const db = env.QUEUE_TEST_DB

beforeAll(async () => {
  await db.batch([
    db.prepare("CREATE TABLE IF NOT EXISTS queue_processed (id TEXT PRIMARY KEY, queue TEXT NOT NULL, outcome TEXT NOT NULL, processed_at TEXT NOT NULL)"),
    db.prepare("CREATE TABLE IF NOT EXISTS deliveries (id TEXT NOT NULL, queue TEXT NOT NULL, attempts INTEGER NOT NULL)"),
    db.prepare("CREATE TABLE IF NOT EXISTS undecodable (message_id TEXT PRIMARY KEY, body TEXT NOT NULL)")
  ])
})

describe("product imports through the gateway", () => {
  interface ImportJob {
    readonly id: string
    readonly status: string
    readonly total: number
    readonly imported: number
    readonly failed: number
    readonly dead: number
    readonly failures: ReadonlyArray<{ readonly item: number; readonly outcome: string; readonly reason: string }>
  }

  it("imports a batch asynchronously; items that cannot be created are failed, each counted once", async () => {
    const admin = await signedIn("admin")
    const seller = await signedIn()
    const tag = unique().toUpperCase()
    const product = (n: number | string, sellerId = seller.id) => ({ sku: `IMP-${tag}-${n}`, name: `Imported ${n}`, priceCents: 100, sellerId })
    // A product that exists before the import, so the import's copy of its SKU fails.
    expect((await send("POST", "/api/products", product("EXISTING"), admin.token)).status).toBe(201)
    const products = [
      ...Array.from({ length: 6 }, (_, n) => product(n)),
      product(0), // the same SKU as item 0: one of the two imports
      product("GHOST", crypto.randomUUID()), // no such seller
      product("EXISTING")
    ]

    const started = await send("POST", "/api/products/imports", { products }, admin.token)
    expect(started.status).toBe(202)
    const job = await started.json() as ImportJob
    expect(started.headers.get("location")).toBe(`/api/products/imports/${job.id}`)
    expect(job).toMatchObject({ total: 9, status: "running" })

    let status = job
    await eventually(async () => {
      status = await (await send("GET", `/api/products/imports/${job.id}`, undefined, admin.token)).json() as ImportJob
      return status.status === "done"
    })
    expect(status).toMatchObject({ total: 9, imported: 6, failed: 3, dead: 0 })
    const failedItems = status.failures.map((failure) => failure.item)
    expect(failedItems).toHaveLength(3)
    expect(failedItems).toEqual(expect.arrayContaining([7, 8]))
    expect(failedItems.filter((item) => item === 0 || item === 6)).toHaveLength(1)
    expect(status.failures.find((failure) => failure.item === 7)?.reason).toMatch(/Unknown seller/)
    expect(status.failures.find((failure) => failure.item === 8)?.reason).toMatch(/already in use/)

    const created = await env.PRODUCTS_DB.prepare("SELECT COUNT(*) AS count FROM products WHERE sku LIKE ?").bind(`IMP-${tag}-%`).first<{ count: number }>()
    expect(created?.count).toBe(7) // the six imported and the one made before
  })

  it("counts a dead-lettered item against its job even when its product no longer decodes", async () => {
    const admin = await signedIn("admin")
    const started = await send("POST", "/api/products/imports", {
      products: [{ sku: `DEAD-${unique().toUpperCase()}`, name: "Dead", priceCents: 1, sellerId: admin.id }]
    }, admin.token)
    const job = await started.json() as ImportJob
    // As if item 1 of the job had been sent with a product a later deploy cannot read.
    await env.PRODUCTS_DB.prepare("UPDATE import_jobs SET total = 2 WHERE id = ?").bind(job.id).run()
    await env.IMPORTS_DLQ.send({ id: `dead-${unique()}`, body: { jobId: job.id, item: 1, product: { sku: 42 } }, sentAt: Date.now() })
    let status = job
    await eventually(async () => {
      status = await (await send("GET", `/api/products/imports/${job.id}`, undefined, admin.token)).json() as ImportJob
      return status.status === "done"
    })
    expect(status).toMatchObject({ total: 2, imported: 1, failed: 0, dead: 1 })
    expect(status.failures).toEqual([{ item: 1, outcome: "dead", reason: "The item could not be read" }])
  }, 30_000)

  it("lets only admins import, checks the payload, and answers 404 for an unknown job", async () => {
    const user = await signedIn()
    const admin = await signedIn("admin")
    const products = [{ sku: "NOPE-1", name: "Nope", priceCents: 1, sellerId: user.id }]
    await expectProblem(await send("POST", "/api/products/imports", { products }, user.token), 403)
    await expectProblem(await send("POST", "/api/products/imports", { products: [] }, admin.token), 400)
    await expectProblem(await send("POST", "/api/products/imports", { products: [{ sku: "bad sku" }] }, admin.token), 400)
    await expectProblem(await send("GET", `/api/products/imports/${crypto.randomUUID()}`, undefined, admin.token), 404)
  })
})
