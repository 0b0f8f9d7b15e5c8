/**
 * What every `npm run` command of the project shares: `--help`, usage errors
 * as one line with exit code 2, any other failure as one line with exit code
 * 1 (the stack only with DEBUG=1).
 */
import { parseArgs, type ParseArgsConfig } from "node:util"

/** A mistake in how the command was called: exit code 2, with a pointer to --help. */
export class UsageError extends Error {}

/** Fails the command as misused. */
export const usage = (message: string): never => {
  throw new UsageError(message)
}

export interface Command<Options extends NonNullable<ParseArgsConfig["options"]>> {
  /** How it is called, e.g. `npm run keys`. */
  readonly name: string
  /** The text --help prints. */
  readonly help: string
  readonly options: Options
  readonly run: (
    args: ReturnType<typeof parseArgs<{ options: Options; allowPositionals: true; strict: true }>>
  ) => Promise<void> | void
}

/** Runs a command with its arguments (default: the process's), handling --help and errors. */
export const main = async <Options extends NonNullable<ParseArgsConfig["options"]>>(
  command: Command<Options>,
  argv: ReadonlyArray<string> = process.argv.slice(2)
): Promise<void> => {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(command.help.trim())
    return
  }
  try {
    let parsed
    try {
      parsed = parseArgs({ args: [...argv], options: command.options, allowPositionals: true, strict: true })
    } catch (error) {
      // node:util's messages are long; its first sentence says what was wrong.
      throw new UsageError(String((error as Error).message).split(/\. |\n/)[0]!)
    }
    await command.run(parsed)
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`${command.name}: ${error.message} (${command.name} -- --help)`)
      process.exit(2)
    }
    if (process.env["DEBUG"] === "1") console.error(error)
    else console.error(`${command.name}: ${error instanceof Error ? error.message : String(error)}`)
    process.exit(1)
  }
}

/** A whole positive number, or a usage error naming `what`. */
export const integer = (value: string | undefined, what: string, range: { min?: number; max?: number } = {}): number => {
  const parsed = Number(value)
  const { min = 0, max = Number.MAX_SAFE_INTEGER } = range
  if (value === undefined || value.trim() === "" || !Number.isInteger(parsed) || parsed < min || parsed > max) {
    return usage(`${what} must be a whole number from ${min} to ${max}${value === undefined ? "" : `, not "${value}"`}`)
  }
  return parsed
}
