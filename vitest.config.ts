/**
 * Tests run inside workerd. The runner Worker (test/fixtures/worker.ts) holds
 * the test files; the five mesh Workers run beside it as real Workers, bundled
 * from source and configured from their own wrangler files, so black-box tests
 * go through the gateway exactly as a client would.
 */
import { cloudflareTest, readD1Migrations } from "@cloudflare/vitest-plugin"
import { join } from "node:path"
import { defineConfig } from "vitest/config"
import { buildMesh, root } from "./scripts/mesh.ts"

export default defineConfig({
  plugins: [
    cloudflareTest(async () => {
      const mesh = await buildMesh(join(root, ".build/test"))
      const d1 = (name: string) => mesh.find((options) => options.name === `meshwork-${name}`)?.d1Databases ?? {}
      return {
        main: "test/fixtures/worker.ts",
        miniflare: {
          compatibilityDate: "2026-11-01",
          serviceBindings: { GATEWAY: "meshwork-gateway" },
          d1Databases: { ...d1("users"), ...d1("products") },
          durableObjects: { COUNTER: { className: "Counter", useSQLite: true } },
          bindings: {
            USERS_MIGRATIONS: await readD1Migrations(join(root, "src/services/users/migrations")),
            PRODUCTS_MIGRATIONS: await readD1Migrations(join(root, "src/services/products/migrations"))
          },
          workers: mesh
        }
      }
    })
  ],
  test: {
    setupFiles: ["test/setup.ts"],
    include: ["test/**/*.test.ts"]
  }
})
