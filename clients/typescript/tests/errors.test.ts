// FenloError without a server: a google.rpc.Status with an ErrorInfo detail.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { AnySchema } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { decodeErrorInfo, ErrorReason, FenloError } from "../src/index.js";
import { StatusSchema } from "../src/gen/google/rpc/status_pb.js";

function errorInfoBytes(reason: string, domain: string, metadata: Record<string, string>): Uint8Array {
  const writer = new BinaryWriter();
  writer.tag(1, 2).string(reason);
  writer.tag(2, 2).string(domain);
  for (const [key, value] of Object.entries(metadata)) {
    writer.tag(3, 2).fork().tag(1, 2).string(key).tag(2, 2).string(value).join();
  }
  return writer.finish();
}

test("decodeErrorInfo reads reason, domain and metadata", () => {
  const info = decodeErrorInfo(errorInfoBytes("TURN_QUEUE_FULL", "fenlo.ai", { limit: "8", scope: "chat" }));
  assert.deepEqual(info, { reason: "TURN_QUEUE_FULL", domain: "fenlo.ai", metadata: { limit: "8", scope: "chat" } });
});

test("FenloError.fromStatus maps a TurnError's status to its ErrorReason", () => {
  const status = create(StatusSchema, {
    code: Code.Unavailable,
    message: "no LLM provider is available",
    details: [
      create(AnySchema, { typeUrl: "type.googleapis.com/google.rpc.RetryInfo", value: new Uint8Array() }),
      create(AnySchema, {
        typeUrl: "type.googleapis.com/google.rpc.ErrorInfo",
        value: errorInfoBytes("LLM_UNAVAILABLE", "fenlo.ai", {}),
      }),
    ],
  });
  const err = FenloError.fromStatus(status);
  assert.equal(err.code, Code.Unavailable);
  assert.equal(err.reason, ErrorReason.LLM_UNAVAILABLE);
  assert.equal(err.reasonName, "LLM_UNAVAILABLE");
  assert.equal(err.rawMessage, "no LLM provider is available");
  assert.match(err.message, /LLM_UNAVAILABLE/);
});

test("a reason this SDK does not know is UNSPECIFIED but keeps its name", () => {
  const status = create(StatusSchema, {
    code: Code.Internal,
    message: "x",
    details: [
      create(AnySchema, {
        typeUrl: "type.googleapis.com/google.rpc.ErrorInfo",
        value: errorInfoBytes("SOMETHING_NEW", "fenlo.ai", {}),
      }),
    ],
  });
  const err = FenloError.fromStatus(status);
  assert.equal(err.reason, ErrorReason.UNSPECIFIED);
  assert.equal(err.reasonName, "SOMETHING_NEW");
});
