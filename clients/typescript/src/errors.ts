// Fenlo errors: a google.rpc.Status in the `grpc-status-details-bin` trailer
// (or in a Chat stream's TurnError) with exactly one google.rpc.ErrorInfo
// whose `reason` names an ErrorReason value without its ERROR_REASON_ prefix.
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorReason } from "./gen/fenlo/v1/errors_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

/** The fully-qualified name of google.rpc.ErrorInfo, as in a detail's type. */
export const ERROR_INFO_TYPE = "google.rpc.ErrorInfo";

/** google.rpc.ErrorInfo, decoded by hand (its .proto is not vendored). */
export interface ErrorInfo {
  /** The ErrorReason name without its prefix, e.g. `RESOURCE_NOT_FOUND`. */
  reason: string;
  /** `fenlo.ai` for every Fenlo error. */
  domain: string;
  /** Extra facts about the error, such as `correlation_id`. */
  metadata: Record<string, string>;
}

/** Decodes the wire form of a google.rpc.ErrorInfo. */
export function decodeErrorInfo(bytes: Uint8Array): ErrorInfo {
  const reader = new BinaryReader(bytes);
  const info: ErrorInfo = { reason: "", domain: "", metadata: {} };
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) {
      info.reason = reader.string();
    } else if (field === 2 && wireType === WireType.LengthDelimited) {
      info.domain = reader.string();
    } else if (field === 3 && wireType === WireType.LengthDelimited) {
      const entry = new BinaryReader(reader.bytes());
      let key = "";
      let value = "";
      while (entry.pos < entry.len) {
        const [entryField, entryWireType] = entry.tag();
        if (entryField === 1 && entryWireType === WireType.LengthDelimited) key = entry.string();
        else if (entryField === 2 && entryWireType === WireType.LengthDelimited) value = entry.string();
        else entry.skip(entryWireType);
      }
      info.metadata[key] = value;
    } else {
      reader.skip(wireType);
    }
  }
  return info;
}

/** The ErrorReason for a reason name (`UNSPECIFIED` for a name this SDK does not know). */
export function errorReasonFromName(name: string): ErrorReason {
  const value = (ErrorReason as unknown as Record<string, unknown>)[name];
  return typeof value === "number" ? (value as ErrorReason) : ErrorReason.UNSPECIFIED;
}

function typeName(typeUrl: string): string {
  return typeUrl.slice(typeUrl.lastIndexOf("/") + 1);
}

/**
 * An error from a Fenlo call, with the ErrorReason to branch on. `cause` is
 * the underlying ConnectError (use its `findDetails` for BadRequest,
 * RetryInfo or QuotaFailure details) or, for a failed chat turn, undefined.
 */
export class FenloError extends Error {
  override name = "FenloError";
  /** The gRPC status code. */
  readonly code: Code;
  /** The reason, from ErrorInfo; UNSPECIFIED when the error carried none. */
  readonly reason: ErrorReason;
  /** The reason as sent, e.g. `RESOURCE_NOT_FOUND` (empty when none was sent). */
  readonly reasonName: string;
  /** The ErrorInfo, when the error carried one. */
  readonly info: ErrorInfo | undefined;
  /** The server's message, without the code prefix. */
  readonly rawMessage: string;

  constructor(code: Code, rawMessage: string, info: ErrorInfo | undefined, cause?: unknown) {
    const label = info?.reason ? `${Code[code] ?? code} ${info.reason}` : `${Code[code] ?? code}`;
    super(`[${label}] ${rawMessage}`, cause === undefined ? undefined : { cause });
    this.code = code;
    this.rawMessage = rawMessage;
    this.info = info;
    this.reasonName = info?.reason ?? "";
    this.reason = errorReasonFromName(this.reasonName);
  }

  /** Wraps any error thrown by a call (a ConnectError, an abort, ...). */
  static from(err: unknown): FenloError {
    if (err instanceof FenloError) return err;
    const connectError = ConnectError.from(err);
    let info: ErrorInfo | undefined;
    for (const detail of connectError.details) {
      if ("type" in detail && detail.type === ERROR_INFO_TYPE) {
        info = decodeErrorInfo(detail.value);
        break;
      }
    }
    return new FenloError(connectError.code, connectError.rawMessage, info, connectError);
  }

  /** The error of a failed chat turn (TurnError.status). */
  static fromStatus(status: Status): FenloError {
    let info: ErrorInfo | undefined;
    for (const any of status.details) {
      if (typeName(any.typeUrl) === ERROR_INFO_TYPE) {
        info = decodeErrorInfo(any.value);
        break;
      }
    }
    const code = status.code in Code ? (status.code as Code) : Code.Unknown;
    return new FenloError(code, status.message, info);
  }
}

/** The ErrorReason of any error (UNSPECIFIED when it carries none). */
export function errorReason(err: unknown): ErrorReason {
  return FenloError.from(err).reason;
}
