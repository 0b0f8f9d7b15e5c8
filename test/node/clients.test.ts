/**
 * The mesh as its clients meet it, against the node project's shared mesh
 * (`npm start` on a free port, fresh state, test/node/mesh-setup.ts): `curl /api/openapi.json`
 * is a valid OpenAPI 3.1 document whose operations are exactly the routes
 * docs/api.md lists; `/api/docs`, opened in a real headless Chromium, shows
 * the users and products operations and runs "try it" against the mesh,
 * loading nothing from another origin (screenshots in .build/artifacts/);
 * and `npm run mesh -- keys` issues, lists and revokes an API key that works
 * until it is revoked.
 *
 * The browser test needs Debian's `chromium` (`apt-get install chromium`):
 * without it, it is skipped with one line saying so, except under CI=true,
 * where it fails.
 */
import { Validator } from "@seriousme/openapi-schema-validator"
import { spawnSync } from "node:child_process"
import { existsSync, mkdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { type Browser, chromium } from "playwright-core"
import { afterAll, describe, expect, it } from "vitest"
import { root } from "../../scripts/mesh.ts"
import { meshUrl } from "./mesh.ts"

const ci = process.env["CI"] === "true"
const chromiumPath = [process.env["CHROMIUM_PATH"], "/usr/bin/chromium", "/usr/bin/chromium-browser"]
  .find((path): path is string => path !== undefined && path !== "" && existsSync(path))
if (chromiumPath === undefined) {
  console.log(`chromium not found: the browser test ${ci ? "fails (CI needs it)" : "skips"} (apt-get install chromium)`)
}

const artifacts = join(root, ".build/artifacts")

// The node project's shared mesh (test/node/mesh-setup.ts), once it is up.
const base = await meshUrl()

interface Document {
  readonly paths: Record<string, Record<string, unknown>>
}

const fetchDocument = async (): Promise<Document> => {
  const response = await fetch(`${base}/api/openapi.json`)
  expect(response.status).toBe(200)
  return await response.json() as Document
}

const operationsOf = (document: Document) =>
  new Set(Object.entries(document.paths).flatMap(([path, item]) => Object.keys(item).map((method) => `${method.toUpperCase()} ${path}`)))

/** Every route docs/api.md lists: the first cell of its tables' rows, `METHOD /path` (query strings dropped). */
const routesInApiDoc = () => {
  const routes = new Set<string>()
  for (const line of readFileSync(join(root, "docs/api.md"), "utf8").split("\n")) {
    const match = /^\| `(GET|HEAD|POST|PUT|PATCH|DELETE) (\/[^`?\s]*)/.exec(line)
    if (match !== null) routes.add(`${match[1]} ${match[2]}`)
  }
  return routes
}

describe("GET /api/openapi.json", { timeout: 60_000 }, () => {
  it("is a valid OpenAPI 3.1 document", async () => {
    const document = await fetchDocument()
    const validator = new Validator()
    const result = await validator.validate(document as unknown as Record<string, unknown>)
    expect(result.errors ?? []).toEqual([])
    expect(result.valid).toBe(true)
    expect(validator.version).toBe("3.1")
  })

  it("lists exactly the routes docs/api.md describes", async () => {
    const documented = operationsOf(await fetchDocument())
    const described = routesInApiDoc()
    expect(described.size).toBeGreaterThan(30)
    expect([...described].filter((route) => !documented.has(route)), "in docs/api.md, not in the document").toEqual([])
    expect([...documented].filter((route) => !described.has(route)), "in the document, not in docs/api.md").toEqual([])
  })
})

describe("GET /api/docs in a browser", { timeout: 120_000 }, () => {
  let browser: Browser | undefined
  afterAll(() => browser?.close())

  it.skipIf(chromiumPath === undefined && !ci)("shows the users and products operations and runs 'try it', all from this origin", async () => {
    if (chromiumPath === undefined) throw new Error("chromium not found, and CI needs the browser test (apt-get install chromium)")
    browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] })
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } })
    const elsewhere: Array<string> = []
    const errors: Array<string> = []
    page.on("requestfinished", (request) => {
      if (!request.url().startsWith(base) && !request.url().startsWith("data:")) elsewhere.push(request.url())
    })
    page.on("pageerror", (error) => errors.push(error.message))
    page.on("console", (message) => {
      // Scalar asks for its web fonts before it reads withDefaultFonts: the page's CSP refuses them (docs.ts).
      if (message.type() === "error" && !/fonts\.scalar\.com.*Content Security Policy/.test(message.text())) errors.push(message.text())
    })
    mkdirSync(artifacts, { recursive: true })

    await page.goto(`${base}/api/docs`)
    await page.getByText("/api/auth/login").first().waitFor({ timeout: 30_000 })
    for (const path of ["/api/users", "/api/users/{id}", "/api/products", "/api/products/{id}"]) {
      await expect.poll(() => page.locator("a", { hasText: path }).count(), { message: path }).toBeGreaterThan(0)
    }
    await page.locator("a", { hasText: "/api/users/{id}" }).first().scrollIntoViewIfNeeded()
    await page.screenshot({ path: join(artifacts, "api-docs.png") })

    // "Try it" on a public route: the JWKS, through the gateway, from the page.
    const tryIt = page.locator("button", { hasText: "Test Request" }).filter({ hasText: "get /api/auth/.well-known/jwks.json" }).first()
    await tryIt.scrollIntoViewIfNeeded()
    await tryIt.click()
    const answered = page.waitForResponse((response) => response.url() === `${base}/api/auth/.well-known/jwks.json`)
    await page.getByRole("button", { name: /^Send/ }).first().click()
    expect((await answered).status()).toBe(200)
    await page.getByText("200 OK").first().waitFor()
    await page.getByText(`"ES256"`).first().waitFor()
    // Let the client's panel finish its transition, for a screenshot a person can read.
    await page.waitForTimeout(500)
    await page.screenshot({ path: join(artifacts, "api-docs-try-it.png") })

    expect(elsewhere).toEqual([])
    expect(errors).toEqual([])
  })
})

describe("npm run mesh -- keys", { timeout: 60_000 }, () => {
  const mesh = (...args: Array<string>) => {
    const result = spawnSync(process.execPath, [join(root, "scripts/mesh-cli.ts"), ...args, "--url", base], { cwd: root, encoding: "utf8" })
    expect(result.status, result.stderr).toBe(0)
    return result
  }
  const withKey = (key: string) => fetch(`${base}/api/users?limit=1`, { headers: { authorization: `ApiKey ${key}` } })

  it.each([
    [["keys"], /keys needs create, list or revoke/],
    [["keys", "rotate"], /unknown keys command "rotate"/],
    [["keys", "create"], /keys create <name>/],
    [["keys", "revoke"], /keys revoke <id>/],
    [["keys", "create", "job", "--per-minute", "0"], /--per-minute must be/]
  ])("%j is a usage error: one line, exit code 2", (args, message) => {
    const result = spawnSync(process.execPath, [join(root, "scripts/mesh-cli.ts"), ...args, "--url", base], { cwd: root, encoding: "utf8" })
    expect(result.status).toBe(2)
    expect(result.stderr.trim().split("\n")).toHaveLength(1)
    expect(result.stderr).toMatch(message)
  })

  it("issues a key shown once, lists it without the key, and revokes it", async () => {
    const created = mesh("keys", "create", "ci job", "--roles", "admin", "--expires-in", "7")
    const issued = JSON.parse(created.stdout) as { id: string; key: string; roles: Array<string>; expiresAt: string }
    expect(created.stderr).toContain("not shown again")
    expect(issued.roles).toEqual(["admin"])
    expect(Date.parse(issued.expiresAt) - Date.now()).toBeGreaterThan(6 * 86_400_000)
    const answer = await withKey(issued.key)
    expect(answer.status).toBe(200)
    expect(answer.headers.get("ratelimit")).toContain(`"key-minute";r=59`)

    const listed = JSON.parse(mesh("keys", "list").stdout) as { items: Array<Record<string, unknown>> }
    expect(listed.items.find((item) => item["id"] === issued.id)).toMatchObject({ name: "ci job", revokedAt: null })
    expect(JSON.stringify(listed)).not.toContain(issued.key)

    expect(mesh("keys", "revoke", issued.id).stdout).toContain(`revoked ${issued.id}`)
    const deadline = Date.now() + 15_000
    while ((await withKey(issued.key)).status !== 401) {
      expect(Date.now()).toBeLessThan(deadline)
      await new Promise((resolve) => setTimeout(resolve, 250))
    }
  })
})

describe("npm run mesh -- live", { timeout: 60_000 }, () => {
  it("prints the mesh's live figures across isolates: the calls it just got, by series", async () => {
    // Public routes through the gateway and the router: counted as calls to the router and to auth.
    for (let i = 0; i < 3; i++) await (await fetch(`${base}/api/auth/.well-known/jwks.json`)).body?.cancel()
    const deadline = Date.now() + 30_000
    for (;;) {
      const result = spawnSync(process.execPath, [join(root, "scripts/mesh-cli.ts"), "live", "--minutes", "2", "--url", base], { cwd: root, encoding: "utf8" })
      expect(result.status, result.stderr).toBe(0)
      const lines = result.stdout.split("\n")
      expect(lines[1]).toMatch(/^calls to\s+from\s+calls\s+per s\s+failed\s+p50 ms\s+p99 ms$/)
      if (lines.some((line) => /^auth\s+router\s+[1-9]\d*\s/.test(line)) && lines.some((line) => /^router\s+gateway\s+[1-9]\d*\s/.test(line))) return
      // Isolates report at most every second under npm start: the next request carries it.
      expect(Date.now(), result.stdout).toBeLessThan(deadline)
      await (await fetch(`${base}/api/auth/.well-known/jwks.json`)).body?.cancel()
      await new Promise((resolve) => setTimeout(resolve, 500))
    }
  })
})
