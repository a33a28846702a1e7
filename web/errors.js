// @ts-check
// What the SDK's modules say of an error they caught.

/**
 * An error's message, whatever was thrown.
 * @param {unknown} err
 */
export function errorText(err) {
  return err instanceof Error ? err.message : String(err);
}
