/**
 * Scalar's API reference UI (its standalone browser bundle, 3.2 MB), served
 * by the gateway itself so that the docs page loads nothing from a CDN.
 *
 * The bundle is the one Effect ships for `HttpApiScalar.layer` (Scalar
 * 1.43.5, pinned with `effect`). Effect's package exports do not name its
 * internal modules, and their typings do not declare this one, so it is
 * imported by path and typed here. `HttpApiScalar.layer` would inline the
 * same script into every page; the gateway serves it once, cached (docs.ts).
 */
import * as bundle from "../../../node_modules/effect/dist/http-api/internal/httpApiScalar.js"

export const javascript: string = (bundle as unknown as { readonly javascript: string }).javascript

/** Scalar's version, from the bundle's banner, for cache busting (`"unknown"` if it has none). */
export const version: string = /@scalar\/api-reference@([0-9][0-9A-Za-z.+-]*)/.exec(javascript.slice(0, 500))?.[1] ?? "unknown"
