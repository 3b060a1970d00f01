// The Fenlo client: typed access to every fenlo.v1 service over the gRPC
// protocol (HTTP/2), with the caller's token on every call and errors as
// FenloError with their ErrorReason.
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AnalyticsService } from "./gen/fenlo/v1/analytics_pb.js";
import { ChatService } from "./gen/fenlo/v1/chat_pb.js";
import { ConversationService } from "./gen/fenlo/v1/conversation_pb.js";
import { EventService } from "./gen/fenlo/v1/event_pb.js";
import { KnowledgeService } from "./gen/fenlo/v1/knowledge_pb.js";
import { LeadService } from "./gen/fenlo/v1/lead_pb.js";
import { WebhookService } from "./gen/fenlo/v1/webhook_pb.js";
import { WorkspaceService } from "./gen/fenlo/v1/workspace_pb.js";
import { ChatSession, type ChatSessionOptions } from "./chat.js";
import { FenloError } from "./errors.js";

/** A token, or a function that returns the current one (called for every call). */
export type TokenSource = string | (() => string | Promise<string>);

/** Options of createFenloClient. */
export interface FenloClientOptions {
  /** The server: `127.0.0.1:50051`, or a URL such as `http://127.0.0.1:50051` / `https://...`. */
  target: string;
  /** A Fenlo JWT or API key, sent as `authorization: Bearer <token>`. */
  token?: TokenSource;
  /** Default deadline of unary and server-streaming calls, in milliseconds. */
  defaultTimeoutMs?: number;
  /** More interceptors, run after the one that adds the token. */
  interceptors?: Interceptor[];
}

/** Typed clients of the fenlo.v1 services, plus the chat helper. */
export interface FenloClient {
  readonly workspaces: Client<typeof WorkspaceService>;
  readonly conversations: Client<typeof ConversationService>;
  readonly chatService: Client<typeof ChatService>;
  readonly knowledge: Client<typeof KnowledgeService>;
  readonly events: Client<typeof EventService>;
  readonly leads: Client<typeof LeadService>;
  readonly analytics: Client<typeof AnalyticsService>;
  readonly webhooks: Client<typeof WebhookService>;
  /** The transport, for createClient() with other services. */
  readonly transport: Transport;
  /** Opens a Chat stream; call `start` on the session next. */
  openChat(options?: ChatSessionOptions): ChatSession;
  /** Closes the HTTP/2 connection (running calls fail). */
  close(): void;
}

function baseUrlOf(target: string): string {
  return /^https?:\/\//.test(target) ? target : `http://${target}`;
}

/** Adds `authorization: Bearer <token>` to every call. */
export function bearerAuth(token: TokenSource): Interceptor {
  return (next) => async (req) => {
    const value = typeof token === "string" ? token : await token();
    req.header.set("authorization", `Bearer ${value}`);
    return next(req);
  };
}

async function* rethrowAsFenloErrors<T>(messages: AsyncIterable<T>): AsyncGenerator<T, void, undefined> {
  try {
    yield* messages;
  } catch (err) {
    throw FenloError.from(err);
  }
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as { then?: unknown } | null)?.then === "function";
}

function isAsyncIterable(value: unknown): value is AsyncIterable<unknown> {
  return typeof (value as { [Symbol.asyncIterator]?: unknown } | null)?.[Symbol.asyncIterator] === "function";
}

/**
 * The same client, whose calls reject (unary) or throw while iterating
 * (streams) with a FenloError instead of a ConnectError. (An interceptor
 * cannot do this: Connect wraps whatever an interceptor throws in a
 * ConnectError again.)
 */
export function withFenloErrors<T extends object>(client: T): T {
  return new Proxy(client, {
    get(target, property, receiver): unknown {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== "function") return value;
      return (...args: unknown[]): unknown => {
        let result: unknown;
        try {
          result = Reflect.apply(value, target, args);
        } catch (err) {
          throw FenloError.from(err);
        }
        if (isPromiseLike(result)) {
          return Promise.resolve(result).catch((err: unknown) => {
            throw FenloError.from(err);
          });
        }
        if (isAsyncIterable(result)) return rethrowAsFenloErrors(result);
        return result;
      };
    },
  });
}

/** A client of the Fenlo server at `target`. */
export function createFenloClient(options: FenloClientOptions): FenloClient {
  const baseUrl = baseUrlOf(options.target);
  const sessionManager = new Http2SessionManager(baseUrl);
  const interceptors: Interceptor[] = [];
  if (options.token !== undefined) interceptors.push(bearerAuth(options.token));
  interceptors.push(...(options.interceptors ?? []));
  const transport = createGrpcTransport({
    baseUrl,
    sessionManager,
    interceptors,
    ...(options.defaultTimeoutMs !== undefined ? { defaultTimeoutMs: options.defaultTimeoutMs } : {}),
  });
  const chatService = withFenloErrors(createClient(ChatService, transport));
  return {
    workspaces: withFenloErrors(createClient(WorkspaceService, transport)),
    conversations: withFenloErrors(createClient(ConversationService, transport)),
    chatService,
    knowledge: withFenloErrors(createClient(KnowledgeService, transport)),
    events: withFenloErrors(createClient(EventService, transport)),
    leads: withFenloErrors(createClient(LeadService, transport)),
    analytics: withFenloErrors(createClient(AnalyticsService, transport)),
    webhooks: withFenloErrors(createClient(WebhookService, transport)),
    transport,
    openChat: (chatOptions?: ChatSessionOptions) => new ChatSession(chatService, chatOptions),
    close: () => sessionManager.abort(),
  };
}
