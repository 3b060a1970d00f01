// The Fenlo TypeScript SDK: the hand-written client and the generated
// fenlo.v1 messages and services (src/gen, from protos/ by `npm run generate`).
export { createFenloClient, bearerAuth, withFenloErrors } from "./client.js";
export type { FenloClient, FenloClientOptions, TokenSource } from "./client.js";
export { ChatSession } from "./chat.js";
export type { ChatSessionOptions, StartChatInit, UserMessageInit } from "./chat.js";
export { FenloError, errorReason, errorReasonFromName, decodeErrorInfo, ERROR_INFO_TYPE } from "./errors.js";
export type { ErrorInfo } from "./errors.js";
export * from "./gen/fenlo/v1/analysis_pb.js";
export * from "./gen/fenlo/v1/analytics_pb.js";
export * from "./gen/fenlo/v1/chat_pb.js";
export * from "./gen/fenlo/v1/conversation_pb.js";
export * from "./gen/fenlo/v1/errors_pb.js";
export * from "./gen/fenlo/v1/event_pb.js";
export * from "./gen/fenlo/v1/knowledge_pb.js";
export * from "./gen/fenlo/v1/lead_pb.js";
export * from "./gen/fenlo/v1/resources_pb.js";
export * from "./gen/fenlo/v1/webhook_pb.js";
export * from "./gen/fenlo/v1/workspace_pb.js";
