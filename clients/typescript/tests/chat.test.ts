// The SDK against a real Fenlo server that the test starts itself: a
// conversation, a two-turn chat with streamed tokens, an interrupt in the
// middle of the second answer, the messages read back, and errors with their
// ErrorReason. Everything stays on 127.0.0.1.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  Channel,
  createFenloClient,
  ErrorReason,
  FenloError,
  MessageRole,
  type ChatResponse,
  type FenloClient,
} from "../src/index.js";
import { startServer, type FenloServer } from "./server.js";

describe("Fenlo TypeScript SDK against fenlo serve", { timeout: 180_000 }, () => {
  let server: FenloServer | undefined;
  let client: FenloClient | undefined;
  let workspaceId = "";
  let token = "";

  before(
    async () => {
      server = await startServer();
      workspaceId = await server.cli(["workspace", "create", "TypeScript SDK test"]);
      token = await server.cli(["token", "create", "--workspace", workspaceId]);
      client = createFenloClient({ target: server.target, token, defaultTimeoutMs: 15_000 });
    },
    { timeout: 120_000 },
  );

  after(
    async () => {
      client?.close();
      await server?.stop();
    },
    { timeout: 30_000 },
  );

  test("a two-turn chat streams tokens, and an interrupt cuts the second answer", { timeout: 60_000 }, async () => {
    assert.ok(client);
    const workspace = `workspaces/${workspaceId}`;
    const conversation = await client.conversations.createConversation({
      parent: workspace,
      conversation: { channel: Channel.WEB },
    });
    assert.match(conversation.name, new RegExp(`^${workspace}/conversations/[0-9a-z]{26}$`));

    const chat = client.openChat({ timeoutMs: 45_000 });
    try {
      const session = await chat.start({ conversation: conversation.name });
      assert.equal(session.resumed, true);
      assert.equal(session.conversation?.name, conversation.name);

      // Turn 1: the whole answer.
      const first: ChatResponse[] = [];
      for await (const event of chat.send("Hello, who are you?")) first.push(event);
      const firstKinds = first.map((e) => e.kind.case);
      assert.equal(firstKinds[0], "turnStarted");
      assert.equal(firstKinds.at(-1), "turnCompleted");
      const firstDeltas = first.flatMap((e) => (e.kind.case === "delta" ? [e.kind.value.text] : []));
      assert.ok(firstDeltas.length >= 5, `expected several deltas, got ${firstDeltas.length}`);
      const firstDone = first.at(-1)?.kind;
      assert.ok(firstDone?.case === "turnCompleted");
      assert.equal(firstDone.value.interrupted, false);
      assert.deepEqual(firstDone.value.providers, ["offline"]);
      const firstAnswer = firstDeltas.join("");

      // Turn 2: interrupt after three deltas, telling the server what was delivered.
      let turnId = "";
      let delivered = "";
      let deltasBefore = 0;
      let deltasAfter = 0;
      let interrupted = false;
      const second: ChatResponse[] = [];
      for await (const event of chat.send("And what can you do for me?")) {
        second.push(event);
        const kind = event.kind;
        if (kind.case === "turnStarted") turnId = kind.value.turnId;
        if (kind.case !== "delta") continue;
        if (interrupted) {
          deltasAfter += 1;
          continue;
        }
        assert.equal(kind.value.turnId, turnId);
        assert.equal(kind.value.index, deltasBefore);
        deltasBefore += 1;
        delivered += kind.value.text;
        if (deltasBefore === 3) {
          chat.interrupt(turnId, [...delivered].length);
          interrupted = true;
        }
      }
      const secondDone = second.at(-1)?.kind;
      assert.ok(secondDone?.case === "turnCompleted", `the turn ended with ${secondDone?.case}`);
      assert.equal(secondDone.value.turnId, turnId);
      assert.equal(secondDone.value.interrupted, true);
      assert.equal(deltasBefore, 3);
      assert.ok(
        deltasBefore + deltasAfter < firstDeltas.length,
        `the interrupt landed after the whole answer (${deltasBefore}+${deltasAfter} deltas)`,
      );

      const rest = await chat.end();
      assert.deepEqual(rest, []);

      // The four messages, the second answer cut where the interrupt said.
      const { messages } = await client.conversations.listMessages({ parent: conversation.name });
      assert.deepEqual(
        messages.map((m) => m.role),
        [MessageRole.USER, MessageRole.ASSISTANT, MessageRole.USER, MessageRole.ASSISTANT],
      );
      assert.equal(messages[0]?.text, "Hello, who are you?");
      assert.equal(messages[1]?.text, firstAnswer);
      assert.equal(messages[1]?.interrupted, false);
      assert.equal(messages[2]?.text, "And what can you do for me?");
      assert.equal(messages[3]?.text, delivered);
      assert.equal(messages[3]?.interrupted, true);
      assert.equal(messages[3]?.turnId, turnId);
    } finally {
      chat.close();
    }
  });

  test("errors carry their ErrorReason from grpc-status-details-bin", { timeout: 30_000 }, async () => {
    assert.ok(client && server);
    const missing = `workspaces/${workspaceId}/conversations/${"0".repeat(26)}`;
    await assert.rejects(client.conversations.getConversation({ name: missing }), (err: unknown) => {
      assert.ok(err instanceof FenloError);
      assert.equal(err.reason, ErrorReason.RESOURCE_NOT_FOUND);
      assert.equal(err.info?.domain, "fenlo.ai");
      return true;
    });

    const other = `workspaces/${"1".repeat(26)}/conversations/${"0".repeat(26)}`;
    await assert.rejects(client.conversations.getConversation({ name: other }), (err: unknown) => {
      assert.ok(err instanceof FenloError);
      assert.equal(err.reason, ErrorReason.PERMISSION_DENIED_WORKSPACE);
      return true;
    });

    const anonymous = createFenloClient({ target: server.target, defaultTimeoutMs: 15_000 });
    const forged = createFenloClient({ target: server.target, token: `${token}x`, defaultTimeoutMs: 15_000 });
    try {
      await assert.rejects(anonymous.workspaces.getWorkspace({ name: `workspaces/${workspaceId}` }), (err: unknown) => {
        assert.ok(err instanceof FenloError);
        assert.equal(err.reason, ErrorReason.CREDENTIALS_MISSING);
        return true;
      });
      // A stream fails the same way, when it is read.
      const chat = forged.openChat({ timeoutMs: 15_000 });
      await assert.rejects(chat.start({ parent: `workspaces/${workspaceId}` }), (err: unknown) => {
        assert.ok(err instanceof FenloError);
        assert.equal(err.reason, ErrorReason.CREDENTIALS_INVALID);
        return true;
      });
      chat.close();
    } finally {
      anonymous.close();
      forged.close();
    }
  });
});
