/**
 * The command-line tools guide a newcomer: --help answers, a misuse is one
 * line and exit code 2, a developer's own .dev.vars lines survive `npm
 * start`, and the tour runs what the README shows, status checks included.
 */
import { spawnSync } from "node:child_process"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { currentVersion } from "../../scripts/gradual.ts"
import { mergeDevVars } from "../../scripts/keys.ts"
import { root } from "../../scripts/mesh.ts"
import { checked, tourBlocks } from "../../scripts/tour.ts"

const run = (script: string, ...args: Array<string>) => {
  const result = spawnSync(process.execPath, [join(root, "scripts", script), ...args], { cwd: root, encoding: "utf8" })
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}

// Each case starts a Node process (none of them loads wrangler for help or a usage error).
describe.concurrent("the command-line tools", { timeout: 60_000 }, () => {
  it.each([
    ["start.ts"], ["keys.ts"], ["mesh-cli.ts"], ["deploy.ts"], ["tour.ts"], ["traces.ts"], ["soak.ts"]
  ])("%s answers --help with its usage and exit code 0", (script) => {
    const { status, stdout, stderr } = run(script, "--help")
    expect(stderr).toBe("")
    expect(status).toBe(0)
    expect(stdout).toMatch(/^npm (start|run \w+)/)
  })

  it.each([
    ["keys.ts", [], /which command\?/],
    ["keys.ts", ["activate"], /activate needs a key id/],
    ["keys.ts", ["frobnicate"], /unknown command "frobnicate"/],
    ["keys.ts", ["show", "--worker", "nobody"], /no Worker "nobody"/],
    ["mesh-cli.ts", ["bogus"], /unknown command "bogus"/],
    ["mesh-cli.ts", ["gradual", "nope", "10", "--dry-run"], /no Worker "nope"/],
    ["mesh-cli.ts", ["gradual", "users", "0", "--dry-run"], /percentage must be a whole number from 1 to 100/],
    ["mesh-cli.ts", ["traffic", "users", "green", "120"], /weight .* from 0 to 100, not "120"/],
    ["mesh-cli.ts", ["mirror"], /mirror <service>/],
    ["mesh-cli.ts", ["mirror", "users", "green", "150"], /percentage of requests mirrored must be a whole number from 0 to 100/],
    ["mesh-cli.ts", ["faults", "users"], /faults <service> <version> <percent>/],
    ["mesh-cli.ts", ["faults", "users", "green", "101"], /percentage of calls aborted must be a whole number from 0 to 100/],
    ["mesh-cli.ts", ["live", "--minutes", "60"], /--minutes must be a whole number from 1 to 15/],
    ["soak.ts", ["--minutes", "0"], /--minutes must be a whole number from 1 to 120/],
    ["start.ts", ["--port", "x"], /--port must be a whole number/],
    ["start.ts", ["--nonsense"], /Unknown option '--nonsense'/],
    ["deploy.ts", ["--worker", "nope", "--dry-run"], /no Worker "nope"/],
    ["deploy.ts", ["--color", "green"], /--color needs --worker/]
  ] as const)("%s %j is a usage error: one line, exit code 2, no stack", (script, args, message) => {
    const { status, stdout, stderr } = run(script, ...args)
    expect(status).toBe(2)
    expect(stdout).toBe("")
    expect(stderr.trim().split("\n")).toHaveLength(1)
    expect(stderr).toMatch(message)
    expect(stderr).toMatch(/-- --help\)$/m)
  })
})

describe("npm run mesh -- gradual", () => {
  it("finds the version serving most of the traffic in wrangler's latest deployment", () => {
    const listing = JSON.stringify([
      { versions: [{ version_id: "old", percentage: 100 }] },
      { versions: [{ version_id: "canary", percentage: 10 }, { version_id: "stable", percentage: 90 }] }
    ])
    expect(currentVersion(listing)).toBe("stable")
    expect(() => currentVersion("[]")).toThrow(/no deployment yet/)
  })

  it("prints, offline, the wrangler commands a gradual step would run", { timeout: 60_000 }, () => {
    const { status, stdout } = run("mesh-cli.ts", "gradual", "users", "10", "--dry-run")
    expect(status).toBe(0)
    expect(stdout).toContain("wrangler versions upload -c src/services/users/wrangler.toml")
    expect(stdout).toContain("wrangler versions deploy <new version>@10% <current version>@90%")
  })
})

describe("a .dev.vars, as npm start writes it", () => {
  it("rewrites the managed block and keeps every line of the developer's, which win", () => {
    const first = mergeDevVars("", { MESH_SIGNING_KEY: "one" })
    const edited = first + "FAULT_INJECTION=true\nOTLP_ENDPOINT=http://127.0.0.1:4318\n"
    const second = mergeDevVars(edited, { MESH_SIGNING_KEY: "two" })
    expect(second).toContain("MESH_SIGNING_KEY=two")
    expect(second).not.toContain("MESH_SIGNING_KEY=one")
    expect(second.indexOf("FAULT_INJECTION=true")).toBeGreaterThan(second.indexOf("MESH_SIGNING_KEY=two"))
    expect(second).toContain("OTLP_ENDPOINT=http://127.0.0.1:4318")
    // Merging again changes nothing.
    expect(mergeDevVars(second, { MESH_SIGNING_KEY: "two" })).toBe(second)
  })

  it("adopts a file from before the managed block, keeping the lines it does not manage", () => {
    const merged = mergeDevVars("MESH_SIGNING_KEY=old\nMESH_IDENTITY_SECRET=shared\nFAULT_INJECTION=true\n", { MESH_SIGNING_KEY: "new" })
    expect(merged).toContain("MESH_SIGNING_KEY=new")
    expect(merged).not.toContain("=old")
    // The shared secret of earlier versions is gone for good.
    expect(merged).not.toContain("MESH_IDENTITY_SECRET")
    expect(merged).toContain("FAULT_INJECTION=true")
  })
})

describe("the tour", () => {
  it("takes the ```sh tour blocks only, and checks the statuses their comments promise", () => {
    const blocks = tourBlocks("README.md", "```sh\nnot this\n```\n```sh tour\ncurl -s \\\n  http://127.0.0.1:8787/x   # 412: stale\necho ok\n```\n")
    expect(blocks).toEqual([{ doc: "README.md", line: 5, code: "curl -s \\\n  http://127.0.0.1:8787/x   # 412: stale\necho ok" }])
    const script = checked(blocks[0]!.code, 9999)
    expect(script).toContain("http://127.0.0.1:9999/x")
    expect(script).toMatch(/grep -q "412"/)
    const failing = spawnSync("bash", ["-c", `set -euo pipefail\n${checked("echo 200   # 412: stale", 1)}`], { encoding: "utf8" })
    expect(failing.status).not.toBe(0)
    expect(failing.stderr).toContain("expected 412")
  })
})
