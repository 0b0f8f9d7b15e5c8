/**
 * The headers of every page the gateway serves itself (the console, the API
 * reference): everything stays on this origin, nothing frames the page, no
 * referrer leaves it.
 */
export const pageHeaders = (sources: {
  /** `script-src` beyond `'self'`, e.g. the hash of an inline boot script. */
  readonly script?: string
  /** `style-src` beyond `'self'`. */
  readonly style?: string
  /** Whether fonts may come from this origin and data: URLs. */
  readonly fonts?: boolean
} = {}): Record<string, string> => ({
  "content-security-policy": [
    "default-src 'none'",
    `script-src 'self'${sources.script === undefined ? "" : ` ${sources.script}`}`,
    `style-src 'self'${sources.style === undefined ? "" : ` ${sources.style}`}`,
    "img-src 'self' data:",
    ...(sources.fonts === true ? ["font-src 'self' data:"] : []),
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'"
  ].join("; "),
  "referrer-policy": "no-referrer",
  "x-content-type-options": "nosniff"
})
