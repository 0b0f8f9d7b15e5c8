/**
 * The mesh console (src/services/docs/console.ts, served through the gateway; docs/console.md).
 *
 * Its static topology (src/services/docs/topology.ts) is checked against
 * the wrangler configs it was written from. Then, against the node project's
 * shared mesh (`npm start` on a free port, fresh state, test/node/mesh-setup.ts), a
 * real headless Chromium signs in as the demo admin, sees every Worker in the
 * graph, sends every user to green through the split form (confirming it),
 * sees requests move there, finds the change in the audit trail and rolls it
 * back; sees the live figures of the calls that moved; then sees the page,
 * refreshing itself, show what reads mirrored to green matched; injects
 * faults into green through the split form and sees its breaker open in the
 * live panels and the split roll itself back, and opens the waterfall of a
 * failed call's trace from its live row; the demo user who signs in sees
 * the admin API's refusal and no graph.
 * Screenshots go to .build/artifacts/.
 *
 * The browser test needs Debian's `chromium` (`apt-get install chromium`):
 * without it, it is skipped with one line saying so, except under CI=true,
 * where it fails.
 */
import { existsSync, mkdirSync } from "node:fs"
import { join } from "node:path"
import { type Browser, chromium, type Page } from "playwright-core"
import { unstable_readConfig } from "wrangler"
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest"
import { root, workers as meshWorkers } from "../../scripts/mesh.ts"
import { routes, workers } from "../../src/services/docs/topology.ts"
import { meshUrl } from "./mesh.ts"

const ci = process.env["CI"] === "true"
const chromiumPath = [process.env["CHROMIUM_PATH"], "/usr/bin/chromium", "/usr/bin/chromium-browser"]
  .find((path): path is string => path !== undefined && path !== "" && existsSync(path))
if (chromiumPath === undefined) {
  console.log(`chromium not found: the console's browser test ${ci ? "fails (CI needs it)" : "skips"} (apt-get install chromium)`)
}

const artifacts = join(root, ".build/artifacts")

describe("the console's topology", () => {
  it("is what the wrangler configs say", () => {
    interface Shape {
      readonly name: string
      readonly durable_objects: { readonly bindings: ReadonlyArray<{ readonly name: string; readonly class_name: string }> }
      readonly queues: {
        readonly producers?: ReadonlyArray<{ readonly queue: string }>
        readonly consumers?: ReadonlyArray<{ readonly queue: string }>
      }
      readonly services?: ReadonlyArray<{ readonly binding: string; readonly service: string }>
      readonly vars: Record<string, unknown>
    }
    const configs = meshWorkers.map((worker) => unstable_readConfig({ config: join(root, worker.config) }) as unknown as Shape)
    const fromConfigs = configs.map((config) => ({
      script: config.name,
      durableObjects: Object.fromEntries(config.durable_objects.bindings.map((binding) => [binding.name, binding.class_name])),
      produces: [...new Set((config.queues.producers ?? []).map((producer) => producer.queue))].sort(),
      consumes: (config.queues.consumers ?? []).map((consumer) => consumer.queue).sort(),
      calls: Object.fromEntries((config.services ?? []).map((service) => [service.binding, service.service]))
    }))
    const described = workers.map((worker) => ({ ...worker, produces: [...worker.produces].sort(), consumes: [...worker.consumes].sort() }))
    expect(described.toSorted((a, b) => a.script.localeCompare(b.script)))
      .toEqual(fromConfigs.toSorted((a, b) => a.script.localeCompare(b.script)))

    const router = configs.find((config) => config.name === "meshwork-router")!
    const bindings = Object.fromEntries((router.services ?? []).map((service) => [service.binding, service.service]))
    const table = router.vars["ROUTES"] as ReadonlyArray<{ service: string; prefix: string; binding: string; versions?: Record<string, string> }>
    expect(routes.map((route) => ({ ...route }))).toEqual(table.map((route) => {
      const versions = route.versions ?? { default: route.binding }
      const defaultVersion = Object.entries(versions).find(([, binding]) => binding === route.binding)?.[0]
      return {
        service: route.service,
        prefix: route.prefix,
        versions: Object.fromEntries(Object.entries(versions).map(([version, binding]) => [version, bindings[binding]])),
        ...(route.versions === undefined ? {} : { defaultVersion })
      }
    }))
  })
})


describe.skipIf(chromiumPath === undefined && !ci)("GET /console in a browser", { timeout: 180_000 }, () => {
  let browser: Browser | undefined
  // The node project's shared mesh (test/node/mesh-setup.ts).
  const base = inject("meshUrl")

  beforeAll(async () => {
    if (chromiumPath === undefined) throw new Error("chromium not found, and CI needs the browser test (apt-get install chromium)")
    await meshUrl()
    browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] })
    mkdirSync(artifacts, { recursive: true })
  }, 240_000)

  afterAll(async () => {
    await browser?.close()
  }, 30_000)

  const login = async (email: string, password: string) => {
    const response = await fetch(`${base}/api/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email, password })
    })
    expect(response.status).toBe(200)
    return (await response.json() as { access_token: string }).access_token
  }

  /** Which version of users answers the demo user. */
  const usersVersion = async (token: string) => {
    const response = await fetch(`${base}/api/users/0195f3a0-0000-7000-8000-000000000002`, { headers: { authorization: `Bearer ${token}` } })
    await response.body?.cancel()
    return response.headers.get("x-meshwork-version")
  }

  const openConsole = async (email: string, password: string) => {
    const page = await browser!.newPage({ viewport: { width: 1200, height: 1100 } })
    const errors: Array<string> = []
    const elsewhere: Array<string> = []
    page.on("pageerror", (error) => errors.push(error.message))
    page.on("console", (message) => {
      // The refused sign-in's 403 is logged by the browser as a failed resource load, and so is the
      // health report of a degraded mesh (503, while a breaker is open), which the page shows.
      const degraded = /status of 503/.test(message.text()) && message.location().url.endsWith("/api/admin/health")
      if (message.type() === "error" && !/status of 403/.test(message.text()) && !degraded) errors.push(`${message.text()} (${message.location().url})`)
    })
    page.on("request", (request) => {
      if (!request.url().startsWith(base) && !request.url().startsWith("data:")) elsewhere.push(request.url())
    })
    await page.goto(`${base}/console`)
    await page.fill("#email", email)
    await page.fill("#password", password)
    await page.click("#signin button[type=submit]")
    return { page, errors, elsewhere }
  }

  /** Every user to green through the split form, with `abort` percent of green's calls aborted, confirmed. */
  const everyoneToGreen = async (page: Page, abort: string, shot: string) => {
    await page.selectOption("#split-service", "users")
    await page.selectOption("#split-stable", "blue")
    await page.selectOption("#split-canary", "green")
    await page.fill("#split-weight", "100")
    await page.fill("#split-faults", abort)
    await page.click("#set-split")
    await confirm(page, "PUT /api/admin/traffic/users", shot)
  }

  /** Sets users' split through the admin API, as `npm run mesh` would. */
  const putUsersSplit = async (token: string, split: Record<string, unknown>) => {
    const answer = await fetch(`${base}/api/admin/traffic/users`, {
      method: "PUT",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(split)
    })
    expect(answer.status, await answer.text()).toBe(200)
  }

  /** Reads `selector`'s text, having asked the page to reload the mesh's state (it would every 5 s anyway). */
  const refreshed = (page: Page, selector: string) => async () => {
    await page.click("#refresh")
    return page.textContent(selector)
  }

  const confirm = async (page: Page, request: string, shot: string) => {
    await page.locator("#confirm").waitFor()
    await expect.poll(() => page.textContent("#confirm-request")).toContain(request)
    await page.screenshot({ path: join(artifacts, shot) })
    await page.click("#confirm-yes")
    // The change itself may take a few seconds on a loaded machine (the full suite runs beside it).
    await expect.poll(() => page.textContent("#message"), { timeout: 15_000 }).toBe(`Done: ${request}`)
  }

  it("shows an admin the mesh, and steers users to green and back, with an audit trail", async () => {
    const { page, errors, elsewhere } = await openConsole("ada@meshwork.dev", "ada-local-password")
    await page.locator("#mesh").waitFor()
    for (const worker of workers) {
      expect(await page.locator(`#graph [data-worker="${worker.script}"]`).count(), worker.script).toBe(1)
    }
    await expect.poll(() => page.textContent("#graph")).toContain("SessionObject")
    await page.screenshot({ path: join(artifacts, "console.png"), fullPage: true })
    expect(await page.textContent(`[data-edge="users@blue"]`)).toContain("100%")
    expect(await page.textContent(`#breakers [data-upstream="users@green"]`)).toContain("Closed")

    const member = await login("uma@meshwork.dev", "uma-local-password")
    expect(await usersVersion(member)).toBe("blue")

    await everyoneToGreen(page, "0", "console-confirm.png")
    await expect.poll(() => page.textContent(`[data-edge="users@green"]`)).toContain("100%")
    // Routers keep a split up to TRAFFIC_CACHE_SECONDS (1 s under npm start).
    await expect.poll(() => usersVersion(member), { timeout: 30_000, interval: 500 }).toBe("green")

    // The live figures, every isolate's, show the calls that moved (the page refreshes itself every 5 s).
    await expect.poll(refreshed(page, `#live [data-series="users@green"]`), { timeout: 30_000, interval: 500 }).toMatch(/users@green\s*router/)
    await expect.poll(refreshed(page, `[data-rate="users@green"]`), { timeout: 30_000, interval: 500 }).toMatch(/\/s/)

    const audit = page.locator("#audit .audit-entry").first()
    await expect.poll(() => audit.textContent()).toContain("PUT /api/admin/traffic/users")
    expect(await audit.textContent()).toContain(`"canary":"green"`)
    await page.screenshot({ path: join(artifacts, "console-green.png"), fullPage: true })

    await page.click("#rollback")
    await confirm(page, "POST /api/admin/traffic/users/rollback", "console-confirm-rollback.png")
    await expect.poll(() => usersVersion(member), { timeout: 30_000, interval: 500 }).toBe("blue")
    // The page reloads the mesh's state after a change: the trail shows it once that is done.
    await expect.poll(() => page.locator("#audit .audit-entry").first().textContent()).toContain("POST /api/admin/traffic/users/rollback")
    await expect.poll(() => page.textContent(`[data-split="users"]`)).toContain("manual")
    await page.screenshot({ path: join(artifacts, "console-rolled-back.png"), fullPage: true })

    // Mirroring, set through the admin API as `npm run mesh -- mirror` does: the page shows what the
    // canary's copies matched without a click, refreshing itself every 5 s.
    const admin = await login("ada@meshwork.dev", "ada-local-password")
    await putUsersSplit(admin, { stable: "blue", canary: "green", weight: 0, mirror: { percentage: 100 } })
    await expect.poll(async () => {
      expect(await usersVersion(member)).toBe("blue")
      return page.textContent(`[data-split="users"] .mirror`)
    }, { timeout: 30_000, interval: 1_000 }).toMatch(/^100% to green: [1-9]\d* matched, 0 mismatched$/)
    await page.screenshot({ path: join(artifacts, "console-mirror.png"), fullPage: true })

    // Faults: every call to green aborted with 503 (npm start's router has FAULT_INJECTION on), until
    // green's breaker opens. The split's automatic rollback would usually act first (it needs a fifth of
    // 20 calls failed, the breaker three quarters of its last 50): it is set out of reach here, through
    // the admin API as `npm run mesh` would, and the form keeps it.
    await putUsersSplit(admin, { stable: "blue", canary: "green", weight: 0, autoRollback: { minRequests: 100_000 } })
    await expect.poll(refreshed(page, `[data-split="users"] .mirror`), { timeout: 30_000, interval: 500 }).toBe("")
    await everyoneToGreen(page, "100", "console-confirm-faults.png")
    await expect.poll(() => page.textContent(`[data-split="users"] .faults`)).toBe("green: 100% aborted")
    // Everyone is on green (the gateway's own user checks too) by the next call after the routers' 1 s.
    await new Promise((resolve) => setTimeout(resolve, 1_500))
    // Each request fails at green (the gateway's own check of the user's status goes there too), then
    // is refused at once by the open breaker.
    for (let i = 0; i < 60; i++) {
      const response = await fetch(`${base}/api/users/0195f3a0-0000-7000-8000-000000000002`, { headers: { authorization: `Bearer ${member}` } })
      expect(response.status).toBeGreaterThanOrEqual(500)
      await response.body?.cancel()
    }
    await expect.poll(refreshed(page, `#transitions`), { timeout: 30_000, interval: 500 }).toMatch(/users@green\s*Closed\s*Open/)
    await expect.poll(() => page.getAttribute(`#live [data-series="users@green"]`, "class")).toBe("failing")
    await page.screenshot({ path: join(artifacts, "console-breaker.png"), fullPage: true })

    // From the failing row to its traces, kept by the mesh: the newest one's waterfall shows the injected 503.
    await page.click(`#live [data-series="users@green"] button[data-traces]`)
    await expect.poll(() => page.textContent("#traces-filter")).toBe("failed calls to users@green")
    await page.locator("#waterfall svg").waitFor()
    expect(await page.locator("#waterfall g.span.error").count()).toBeGreaterThan(0)
    expect(await page.textContent("#waterfall")).toContain("router: GET users@green")
    await page.locator("#waterfall").screenshot({ path: join(artifacts, "console-trace.png") })
    await page.click("#traces-all")
    await expect.poll(() => page.locator("#traces-all").isHidden()).toBe(true)

    await page.click("#rollback")
    await confirm(page, "POST /api/admin/traffic/users/rollback", "console-confirm-rollback-faults.png")
    await expect.poll(() => usersVersion(member), { timeout: 30_000, interval: 500 }).toBe("blue")

    expect(errors).toEqual([])
    expect(elsewhere).toEqual([])
    await page.close()
  })

  it("shows a non-admin the refusal and nothing of the mesh", async () => {
    const { page, errors } = await openConsole("uma@meshwork.dev", "uma-local-password")
    await page.locator("#refusal").waitFor()
    expect(await page.textContent("#refusal-detail")).toContain("403")
    expect(await page.locator("#mesh").isHidden()).toBe(true)
    expect(await page.locator("[data-worker]").count()).toBe(0)
    await page.screenshot({ path: join(artifacts, "console-refused.png"), fullPage: true })
    expect(errors).toEqual([])
    await page.close()
  })
})
