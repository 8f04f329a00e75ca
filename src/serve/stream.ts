// the text of a streamed completion, delta by delta: what is safe to send after each new token.
// held back: a trailing U+FFFD (a character whose UTF-8 bytes are not all generated yet) and a
// tail that could still grow into a stop string (a stop string is never sent, nor what follows
// it). the deltas joined equal the final text (Engine's EngineResult.text).

export class TextDeltas {
  private sent = 0;

  constructor(private readonly stop: readonly string[]) {}

  /** given the whole text so far, the part not sent yet that can be sent now */
  next(text: string): string {
    let end = text.length;
    while (end > this.sent && text.charCodeAt(end - 1) === 0xfffd) end--;
    for (const s of this.stop) {
      if (!s) continue;
      const at = text.indexOf(s, Math.max(0, this.sent - s.length + 1));
      if (at >= 0) end = Math.min(end, at);
      // a suffix of the text that is a prefix of s
      for (let k = Math.min(s.length - 1, text.length); k > 0; k--) {
        if (text.endsWith(s.slice(0, k))) {
          end = Math.min(end, text.length - k);
          break;
        }
      }
    }
    if (end <= this.sent) return '';
    const d = text.slice(this.sent, end);
    this.sent = end;
    return d;
  }

  /** the rest of the final text */
  finish(text: string): string {
    const d = text.length > this.sent ? text.slice(this.sent) : '';
    this.sent = text.length;
    return d;
  }
}
