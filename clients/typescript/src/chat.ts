// A chat session on one bidirectional ChatService.Chat stream.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { CallOptions, Client } from "@connectrpc/connect";
import {
  ChatRequestSchema,
  type ChatRequest,
  type ChatResponse,
  type ChatOptionsSchema,
  type ChatService,
  type SessionStarted,
  type StartChatSchema,
  type UserMessageSchema,
} from "./gen/fenlo/v1/chat_pb.js";
import type { Channel } from "./gen/fenlo/v1/conversation_pb.js";
import { FenloError } from "./errors.js";

/** What `start` takes: StartChat's fields, with `parent` (a new conversation) or `conversation` (resume). */
export type StartChatInit = {
  /** For a new conversation: where it takes place. */
  channel?: Channel;
  /** For a new conversation: the caller's id for the contact. */
  externalContactId?: string;
  /** For a new conversation: free-form labels. */
  metadata?: Record<string, string>;
  /** What the caller wants streamed (e.g. `{ sentenceEvents: true }`). */
  options?: MessageInitShape<typeof ChatOptionsSchema>;
} & ({ parent: string; conversation?: never } | { conversation: string; parent?: never });

/** What `send` takes: the text, or a whole UserMessage (with `clientMessageId`). */
export type UserMessageInit = string | MessageInitShape<typeof UserMessageSchema>;

/** Options of one chat session. */
export interface ChatSessionOptions {
  /** Deadline of the whole stream, in milliseconds (none by default). */
  timeoutMs?: number;
  /** Cancels the stream. */
  signal?: AbortSignal;
}

/** The requests of a stream: a queue the caller pushes to and the transport reads. */
class RequestQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private waiting: ((result: IteratorResult<T>) => void) | undefined;
  private closed = false;

  push(item: T): void {
    if (this.closed) throw new Error("fenlo: the chat stream's request side is closed");
    const waiting = this.waiting;
    if (waiting) {
      this.waiting = undefined;
      waiting({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }

  close(): void {
    this.closed = true;
    const waiting = this.waiting;
    if (waiting) {
      this.waiting = undefined;
      waiting({ value: undefined, done: true });
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Yields the pushed items until `close` (a generator, so the transport can `throw` and `return`). */
  async *[Symbol.asyncIterator](): AsyncGenerator<T, void, undefined> {
    try {
      for (;;) {
        const item = this.items.shift();
        if (item !== undefined) {
          yield item;
          continue;
        }
        if (this.closed) return;
        const result = await new Promise<IteratorResult<T>>((resolve) => {
          this.waiting = resolve;
        });
        if (result.done) return;
        yield result.value;
      }
    } finally {
      this.close();
    }
  }
}

/**
 * One Chat stream: `start` it, then `send` user messages one turn at a time
 * (iterate a turn's events to its end before sending the next message),
 * `interrupt` a running turn, and `end` the session. Stream failures throw
 * FenloError; a failed turn is an `error` event and the stream stays open.
 */
export class ChatSession {
  /** The SessionStarted event, once `start` resolved. */
  session: SessionStarted | undefined;
  /** The id of the turn that was started last. */
  lastTurnId: string | undefined;

  private readonly requests = new RequestQueue<ChatRequest>();
  private readonly responses: AsyncIterator<ChatResponse>;
  private readonly abort = new AbortController();
  private finished = false;

  constructor(chat: Client<typeof ChatService>, options: ChatSessionOptions = {}) {
    const signal = options.signal
      ? AbortSignal.any([options.signal, this.abort.signal])
      : this.abort.signal;
    const callOptions: CallOptions = { signal };
    if (options.timeoutMs !== undefined) callOptions.timeoutMs = options.timeoutMs;
    this.responses = chat.chat(this.requests, callOptions)[Symbol.asyncIterator]();
  }

  /** Opens the session on a new (`parent`) or existing (`conversation`) conversation. */
  async start(start: StartChatInit): Promise<SessionStarted> {
    const { parent, conversation, ...rest } = start;
    const target =
      conversation !== undefined
        ? { case: "conversation" as const, value: conversation }
        : { case: "parent" as const, value: parent ?? "" };
    const value: MessageInitShape<typeof StartChatSchema> = { target };
    if (rest.channel !== undefined) value.channel = rest.channel;
    if (rest.externalContactId !== undefined) value.externalContactId = rest.externalContactId;
    if (rest.metadata !== undefined) value.metadata = rest.metadata;
    if (rest.options !== undefined) value.options = rest.options;
    this.push({ kind: { case: "start", value } });
    const event = await this.next();
    if (event === undefined) throw new Error("fenlo: the chat stream closed before sessionStarted");
    if (event.kind.case !== "sessionStarted") {
      throw new Error(`fenlo: expected sessionStarted, got ${event.kind.case ?? "an empty event"}`);
    }
    this.session = event.kind.value;
    return event.kind.value;
  }

  /**
   * Sends a user message and yields the events of its turn: turnStarted,
   * annotations, delta..., sentence, citations, ..., and last turnCompleted
   * or error. Events between turns (agentMessage, handoff, draining) are
   * yielded too. The message is sent when iteration begins.
   */
  async *send(message: UserMessageInit): AsyncGenerator<ChatResponse, void, undefined> {
    const value = typeof message === "string" ? { text: message } : message;
    this.push({ kind: { case: "userMessage", value } });
    let turnId: string | undefined;
    for (;;) {
      const event = await this.next();
      if (event === undefined) throw new Error("fenlo: the chat stream closed in the middle of a turn");
      yield event;
      const kind = event.kind;
      if (kind.case === "turnStarted") {
        turnId = kind.value.turnId;
        this.lastTurnId = turnId;
      } else if (kind.case === "turnCompleted" && (turnId === undefined || kind.value.turnId === turnId)) {
        return;
      } else if (kind.case === "error" && (turnId === undefined || kind.value.turnId === turnId || kind.value.turnId === "")) {
        return;
      }
    }
  }

  /** Stops a running turn's answer; `deliveredCodePoints` is how much of it reached the user. */
  interrupt(turnId: string, deliveredCodePoints: number | bigint): void {
    this.push({
      kind: { case: "interrupt", value: { turnId, deliveredCodePoints: BigInt(deliveredCodePoints) } },
    });
  }

  /**
   * Ends the session: sends `end`, closes the request side and waits for
   * the server to finish the running and queued turns and close the stream.
   * Resolves with the events that arrived meanwhile.
   */
  async end(): Promise<ChatResponse[]> {
    const rest: ChatResponse[] = [];
    if (!this.requests.isClosed) {
      this.push({ kind: { case: "end", value: {} } });
      this.requests.close();
    }
    for (;;) {
      const event = await this.next();
      if (event === undefined) return rest;
      rest.push(event);
    }
  }

  /** Cancels the stream at once (no waiting for running turns). Safe to call after `end`. */
  close(): void {
    this.requests.close();
    if (this.finished) return;
    this.finished = true;
    this.abort.abort();
    // Connect releases the call (and its deadline timer, which would keep
    // Node alive) only once the response side has been read to its end.
    void (async () => {
      try {
        for (;;) if ((await this.responses.next()).done) return;
      } catch {
        // The cancellation itself.
      }
    })();
  }

  private push(init: MessageInitShape<typeof ChatRequestSchema>): void {
    this.requests.push(create(ChatRequestSchema, init));
  }

  private async next(): Promise<ChatResponse | undefined> {
    if (this.finished) return undefined;
    try {
      const result = await this.responses.next();
      if (result.done) {
        this.finished = true;
        return undefined;
      }
      return result.value;
    } catch (err) {
      this.finished = true;
      this.requests.close();
      throw FenloError.from(err);
    }
  }
}
