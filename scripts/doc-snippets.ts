/**
 * Every ```ts block of README.md and docs/*.md claims to compile, so it is
 * compiled: each block becomes a module of its own under .build/doc-snippets
 * (importing `meshwork` as a user would), typechecked with the project's
 * strict settings. Errors point at the doc and the line. Blocks that are not
 * meant to compile are fenced as something else (```text, ```toml, ```sh).
 *
 *   node scripts/doc-snippets.ts     # part of npm run typecheck
 */
import { execFileSync } from "node:child_process"
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join, relative } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(import.meta.dirname, "..")

export interface Snippet {
  /** The document, from the repository root. */
  readonly doc: string
  /** The 1-based line of the block's first line of code. */
  readonly line: number
  readonly code: string
}

/** The ```ts blocks of a markdown text. */
export const snippetsOf = (doc: string, text: string): Array<Snippet> => {
  const snippets: Array<Snippet> = []
  const lines = text.split("\n")
  for (let i = 0; i < lines.length; i++) {
    if (!/^```ts\s*$/.test(lines[i]!)) continue
    const start = i + 1
    let end = start
    while (end < lines.length && !/^```\s*$/.test(lines[end]!)) end++
    snippets.push({ doc, line: start + 1, code: lines.slice(start, end).join("\n") })
    i = end
  }
  return snippets
}

const documents = (): Array<string> => {
  const docs = existsSync(join(root, "docs"))
    ? readdirSync(join(root, "docs")).filter((name) => name.endsWith(".md")).map((name) => `docs/${name}`)
    : []
  return ["README.md", ...docs.sort()]
}

const main = () => {
  const outdir = join(root, ".build/doc-snippets")
  rmSync(outdir, { recursive: true, force: true })
  mkdirSync(outdir, { recursive: true })
  const files = new Map<string, Snippet>()
  for (const doc of documents()) {
    for (const snippet of snippetsOf(doc, readFileSync(join(root, doc), "utf8"))) {
      const name = `${doc.replace(/[/.]/g, "_")}_${snippet.line}.ts`
      // `export {}` makes every block a module, so blocks never see each other's names.
      writeFileSync(join(outdir, name), `${snippet.code}\nexport {}\n`)
      files.set(name, snippet)
    }
  }
  writeFileSync(join(outdir, "tsconfig.json"), JSON.stringify({
    extends: "../../tsconfig.json",
    compilerOptions: { noUnusedLocals: false, noUnusedParameters: false },
    include: ["*.ts"]
  }))
  try {
    execFileSync(join(root, "node_modules/.bin/tsc"), ["--noEmit", "-p", outdir], { cwd: root, encoding: "utf8" })
  } catch (error) {
    const output = String((error as { stdout?: string }).stdout ?? error)
    // Point each error at its doc: `.build/doc-snippets/docs_x_md_12.ts(3,5)` -> `docs/x.md:14`.
    const mapped = output.replace(/(?:\.build\/doc-snippets\/)?([\w-]+\.ts)\((\d+),(\d+)\)/g, (whole, name: string, line: string) => {
      const snippet = files.get(name)
      return snippet === undefined ? whole : `${snippet.doc}:${snippet.line + Number(line) - 1}`
    })
    console.error(mapped.trim())
    console.error(`\n${relative(root, outdir)}: doc code blocks that do not compile (fence a block that is not meant to as \`\`\`text)`)
    process.exit(1)
  }
  console.log(`${files.size} doc code blocks compile`)
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main()
