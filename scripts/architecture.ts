/**
 * The project's dependency rules, checked over the import graph of `src/`
 * and `examples/` (test/node/architecture.test.ts runs it under `npm test`):
 *
 * - services -> layers -> runtime: `src/runtime` imports nothing of
 *   `src/layers` or `src/services`, and `src/layers` nothing of `src/services`;
 * - the reference mesh (`src/services`) and the examples reach the framework
 *   only through its public surface, the package name `meshwork`
 *   (`src/index.ts`); the framework never imports itself by that name;
 * - no import cycles;
 * - Effect is imported module by module (`effect/Schema`,
 *   `effect/http-api/HttpApiBuilder`), never through a barrel (`effect`,
 *   `effect/http-api`) except for types: esbuild keeps every export of a
 *   namespace re-exported by a barrel, so `import { Schema } from "effect"`
 *   alone puts all of Schema, with its crypto and network schemas, into the
 *   bundle (docs/deploy.md, "Bundle size").
 */
import { readdirSync, readFileSync } from "node:fs"
import { dirname, join, normalize } from "node:path"

/** A source file and the specifiers it imports (static, re-exports, dynamic). */
export interface SourceFile {
  /** Path from the repository root, with `/` separators. */
  readonly path: string
  readonly imports: ReadonlyArray<string>
  /** Effect barrels it imports values from (`effect`, `effect/http`, ...). */
  readonly barrels?: ReadonlyArray<string>
}

export interface Violation {
  readonly rule: "direction" | "public-surface" | "cycle" | "barrel"
  readonly message: string
}

const specifiers = /(?:^|[\s;])(?:import|export)\s[^"'`;]*?from\s*["']([^"']+)["']|(?:^|[\s;])import\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)/g

/** The specifiers a module's text imports. Comments are skipped line by line (good enough for this codebase). */
export const importsOf = (text: string): Array<string> => {
  const code = text
    .replace(/\/\*[\s\S]*?\*\//g, "")
    .split("\n")
    .filter((line) => !line.trimStart().startsWith("//"))
    .join("\n")
  const found: Array<string> = []
  for (const match of code.matchAll(specifiers)) found.push((match[1] ?? match[2] ?? match[3])!)
  return found
}

const barrelImports = /(?:^|[\s;])import\s+(?!type\s)[^"'`;]*?from\s*["'](effect(?:\/[a-z-]+)?)["']/g

/** The Effect barrels a module's text imports values from (type-only imports aside). */
export const barrelsOf = (text: string): Array<string> =>
  [...text.matchAll(barrelImports)].map((match) => match[1]!)

/** Every `.ts` file under `dirs` (relative to `root`), with its imports. */
export const readSources = (root: string, dirs: ReadonlyArray<string>): Array<SourceFile> => {
  const files: Array<SourceFile> = []
  const walk = (dir: string) => {
    let entries: Array<import("node:fs").Dirent>
    try {
      entries = readdirSync(join(root, dir), { withFileTypes: true })
    } catch {
      return
    }
    for (const entry of entries) {
      const path = `${dir}/${entry.name}`
      if (entry.isDirectory()) walk(path)
      else if (entry.name.endsWith(".ts") && !entry.name.endsWith(".d.ts")) {
        const text = readFileSync(join(root, path), "utf8")
        files.push({ path, imports: importsOf(text), barrels: barrelsOf(text) })
      }
    }
  }
  for (const dir of dirs) walk(dir)
  return files
}

const publicEntry = "src/index.ts"

/** The file an import resolves to, for imports inside the project; `undefined` for packages. */
const resolveImport = (from: string, specifier: string): string | undefined => {
  if (specifier === "meshwork") return publicEntry
  if (!specifier.startsWith(".")) return undefined
  return normalize(join(dirname(from), specifier)).split("\\").join("/")
}

const area = (path: string): "runtime" | "layers" | "services" | "examples" | "index" | "other" =>
  path === publicEntry
    ? "index"
    : path.startsWith("src/runtime/")
    ? "runtime"
    : path.startsWith("src/layers/")
    ? "layers"
    : path.startsWith("src/services/")
    ? "services"
    : path.startsWith("examples/")
    ? "examples"
    : "other"

/** The rules broken by `files`; empty when the graph is sound. */
export const check = (files: ReadonlyArray<SourceFile>): Array<Violation> => {
  const violations: Array<Violation> = []
  const graph = new Map<string, Array<string>>()
  for (const file of files) {
    const from = area(file.path)
    const edges: Array<string> = []
    for (const specifier of file.imports) {
      const target = resolveImport(file.path, specifier)
      if (target === undefined) continue
      edges.push(target)
      const to = area(target)
      const says = `${file.path} imports ${specifier}`
      if (from === "runtime" && (to === "layers" || to === "services" || to === "index")) {
        violations.push({ rule: "direction", message: `${says}: the runtime imports no policy and no service` })
      } else if (from === "layers" && (to === "services" || to === "index")) {
        violations.push({ rule: "direction", message: `${says}: a layer imports no service, nor the public surface` })
      } else if ((from === "services" || from === "examples") && (to === "runtime" || to === "layers")) {
        violations.push({ rule: "public-surface", message: `${says}: import the framework as "meshwork"` })
      } else if (from === "examples" && to === "services") {
        violations.push({ rule: "public-surface", message: `${says}: an example stands on the framework alone` })
      }
    }
    for (const barrel of file.barrels ?? []) {
      violations.push({
        rule: "barrel",
        message: `${file.path} imports values from "${barrel}": import each module by its path (e.g. "effect/Effect"), so the bundle keeps only what is used`
      })
    }
    graph.set(file.path, edges)
  }
  for (const cycle of cycles(graph)) violations.push({ rule: "cycle", message: `import cycle: ${cycle.join(" -> ")}` })
  return violations
}

/** One cycle per strongly connected part of the graph that has one, as the files along it. */
const cycles = (graph: ReadonlyMap<string, ReadonlyArray<string>>): Array<Array<string>> => {
  const found: Array<Array<string>> = []
  const state = new Map<string, "open" | "done">()
  const stack: Array<string> = []
  const visit = (node: string) => {
    state.set(node, "open")
    stack.push(node)
    for (const next of graph.get(node) ?? []) {
      if (!graph.has(next)) continue
      const seen = state.get(next)
      if (seen === "open") found.push([...stack.slice(stack.indexOf(next)), next])
      else if (seen === undefined) visit(next)
    }
    stack.pop()
    state.set(node, "done")
  }
  for (const node of [...graph.keys()].sort()) if (!state.has(node)) visit(node)
  return found
}

/** The project's own files, as the check reads them. */
export const projectSources = (root: string) => readSources(root, ["src", "examples"])

