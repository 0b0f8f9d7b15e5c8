/**
 * `npm run tour`: runs every ```sh tour block of README.md and docs/*.md, in
 * order and in one bash (so variables carry over), against a mesh of its own
 * (`npm start` on a free port, with its state in .build/tour-state, fresh).
 * A command that fails fails the tour; a line whose comment names a status
 * (`# 412: ...`) must print that status. The docs' promises are thereby
 * checked the way a reader would try them.
 *
 *   npm run tour
 *   npm run tour -- --keep     # leave the mesh running afterwards, for a look
 */
import { spawn } from "node:child_process"
import { startLocalMesh } from "./local-mesh.ts"
import { existsSync, readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { main } from "./cli.ts"
import { root } from "./mesh.ts"

const help = `
npm run tour: runs the \`\`\`sh tour blocks of README.md and docs/*.md against a mesh of its own.

  npm run tour
  npm run tour -- --keep     leave that mesh running afterwards
`

export interface Block {
  readonly doc: string
  readonly line: number
  readonly code: string
}

/** The ```sh tour blocks of a markdown text. */
export const tourBlocks = (doc: string, text: string): Array<Block> => {
  const blocks: Array<Block> = []
  const lines = text.split("\n")
  for (let i = 0; i < lines.length; i++) {
    if (!/^```sh tour\s*$/.test(lines[i]!)) continue
    let end = i + 1
    while (end < lines.length && !/^```\s*$/.test(lines[end]!)) end++
    blocks.push({ doc, line: i + 2, code: lines.slice(i + 1, end).join("\n") })
    i = end
  }
  return blocks
}

/**
 * A block as the tour runs it: its commands joined across `\` continuations,
 * each line whose comment names a status checked to print it.
 */
export const checked = (code: string, port: number): string => {
  const commands: Array<string> = []
  let pending = ""
  for (const line of code.replaceAll("127.0.0.1:8787", `127.0.0.1:${port}`).split("\n")) {
    if (line.endsWith("\\")) {
      pending += line.slice(0, -1) + " "
      continue
    }
    commands.push(pending + line)
    pending = ""
  }
  return commands.map((command) => {
    const expect = /\s#\s*(\d{3})\b[^'"]*$/.exec(command)
    if (expect === null) return command
    const bare = command.slice(0, expect.index)
    return `out=$(${bare}); echo "$out"; grep -q "${expect[1]}" <<<"$out" || { echo "expected ${expect[1]}" >&2; exit 1; }`
  }).join("\n")
}

const documents = () => [
  "README.md",
  ...(existsSync(join(root, "docs")) ? readdirSync(join(root, "docs")).filter((f) => f.endsWith(".md")).sort().map((f) => `docs/${f}`) : [])
]

const run = async (keep: boolean) => {
  const blocks = documents().flatMap((doc) => tourBlocks(doc, readFileSync(join(root, doc), "utf8")))
  if (blocks.length === 0) throw new Error("no ```sh tour blocks in README.md or docs/")
  const mesh = await startLocalMesh(join(root, ".build/tour-state"), { timeoutMs: 120_000 })
  const port = Number(new URL(mesh.base).port)
  try {
    console.log(`mesh up on 127.0.0.1:${port}; ${blocks.length} tour blocks`)
    const script = ["set -euo pipefail", ...blocks.map((block) =>
      `echo "::: ${block.doc}:${block.line}"\n${checked(block.code, port)}`)].join("\n")
    const code = await new Promise<number | null>((resolve) => {
      const bash = spawn("bash", ["-c", script], {
        cwd: root,
        stdio: "inherit",
        env: { ...process.env, MESH_URL: `http://127.0.0.1:${port}` }
      })
      bash.on("exit", resolve)
    })
    if (code !== 0) throw new Error(`the tour failed (exit ${code}) in the block named last above`)
    console.log(`tour: ${blocks.length} blocks passed`)
  } finally {
    if (!keep) await mesh.stop()
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await main({
    name: "npm run tour",
    help,
    options: { keep: { type: "boolean" } },
    run: ({ values }) => run(values.keep ?? false)
  })
}
