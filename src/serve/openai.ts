// the OpenAI-compatible request bodies (zod schemas), OpenAI's error shape, and how a chat
// becomes a prompt.
//
// what engram takes: n = 1 only (one choice; n > 1 is refused, not silently ignored); no logprobs,
// tools or response formats (refused when asked for); unknown fields are ignored, as OpenAI's own
// clients send many. `memory` (engram's own field; openai-node passes it through as an extra body
// field) turns explicit-memory reading on or off for one request; the server's --memory decides
// otherwise. max_tokens defaults to 16 for completions (OpenAI's default) and to the room left in the
// context for chat.
//
// chat templates (a base model has none of its own): `qa`, the form the corpus trains ("Q: ... A:"
// per turn, the system message first as plain text; a turn ends at a newline, so "\n" is added to
// the stops); `plain` ("System: / User: / Assistant:" lines; "\nUser:" is added to the stops).

import { z } from 'zod';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = 'invalid_request_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

/** OpenAI's error body */
export const errorBody = (e: ApiError) => ({ error: { message: e.message, type: e.type, param: e.param, code: e.code } });

const stop = z.union([z.string(), z.array(z.string()).max(4)]).nullish();
const common = {
  model: z.string().min(1),
  max_tokens: z.number().int().positive().nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  n: z.literal(1).nullish(),
  stream: z.boolean().nullish(),
  stop,
  seed: z.number().int().nullish(),
  user: z.string().nullish(),
  memory: z.boolean().nullish(),
  logprobs: z.union([z.null(), z.literal(false)]).optional(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
};

export const CompletionBody = z.object({
  ...common,
  prompt: z.union([z.string(), z.array(z.string()).length(1)]),
  echo: z.literal(false).nullish(),
  suffix: z.null().optional(),
  best_of: z.literal(1).nullish(),
});
export type CompletionBody = z.infer<typeof CompletionBody>;

const textPart = z.object({ type: z.literal('text'), text: z.string() });
const message = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant']),
  content: z.union([z.string(), z.array(textPart)]),
  name: z.string().optional(),
});

export const ChatBody = z.object({
  ...common,
  messages: z.array(message).min(1),
  max_completion_tokens: z.number().int().positive().nullish(),
  tools: z.undefined({ error: 'tools are not supported' }).optional(),
  response_format: z.union([z.null(), z.object({ type: z.literal('text') })]).optional(),
});
export type ChatBody = z.infer<typeof ChatBody>;

export const MemoryAddBody = z.object({ text: z.string().trim().min(1), id: z.string().min(1).optional() });
export const MemorySearchQuery = z.object({ q: z.string().min(1), k: z.coerce.number().int().min(1).max(100).default(5) });
export const MemoryListQuery = z.object({ offset: z.coerce.number().int().min(0).default(0), limit: z.coerce.number().int().min(1).max(1000).default(20) });

/** the body parsed by `schema`, or an ApiError (400) naming the first bad field */
export function parse<T>(schema: z.ZodType<T>, body: unknown): T {
  if (body === undefined || body === null || typeof body !== 'object') throw new ApiError(400, 'the request body must be a JSON object');
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const param = issue.path.join('.') || null;
  throw new ApiError(400, `${param ? `'${param}': ` : ''}${issue.message}`, 'invalid_request_error', param, 'invalid_value');
}

export type ChatTemplate = 'qa' | 'plain';

/** a chat as a prompt, and the stops that end the assistant's turn */
export function renderChat(messages: ChatBody['messages'], template: ChatTemplate): { prompt: string; stop: string[] } {
  const text = (m: ChatBody['messages'][number]) => (typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join('')).trim();
  const lines: string[] = [];
  if (template === 'qa') {
    for (const m of messages) {
      if (m.role === 'system' || m.role === 'developer') lines.push(text(m));
      else if (m.role === 'user') lines.push(`Q: ${text(m)}`);
      else lines.push(`A: ${text(m)}`);
    }
    return { prompt: `${lines.join('\n')}\nA:`, stop: ['\n'] };
  }
  const who = { system: 'System', developer: 'System', user: 'User', assistant: 'Assistant' } as const;
  for (const m of messages) lines.push(`${who[m.role]}: ${text(m)}`);
  return { prompt: `${lines.join('\n')}\nAssistant:`, stop: ['\nUser:'] };
}
