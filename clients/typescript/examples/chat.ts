// A two-turn chat from Node against a running server (`make run` prints the
// token and the workspace):
//
//   FENLO_TOKEN=eyJ... FENLO_WORKSPACE=workspaces/01m8... npm run example
//
// FENLO_TARGET defaults to 127.0.0.1:50051.
import { Channel, createFenloClient, FenloError, ErrorReason } from "../src/index.js";

const target = process.env.FENLO_TARGET ?? "127.0.0.1:50051";
const token = process.env.FENLO_TOKEN;
const workspace = process.env.FENLO_WORKSPACE;
if (!token || !workspace) {
  console.error("set FENLO_TOKEN and FENLO_WORKSPACE (workspaces/<id>), as printed by `make run`");
  process.exit(2);
}

const client = createFenloClient({ target, token, defaultTimeoutMs: 10_000 });
try {
  const conversation = await client.conversations.createConversation({
    parent: workspace,
    conversation: { channel: Channel.WEB },
  });
  console.log(`conversation ${conversation.name}`);

  const chat = client.openChat({ timeoutMs: 60_000 });
  await chat.start({ conversation: conversation.name });
  for (const question of ["When are you open on Sunday?", "Can I pay in cash?"]) {
    console.log(`> ${question}`);
    for await (const event of chat.send(question)) {
      const kind = event.kind;
      if (kind.case === "delta") process.stdout.write(kind.value.text);
      else if (kind.case === "turnCompleted") console.log(`\n[turn ${kind.value.turnId} via ${kind.value.providers.join(", ")}]`);
      else if (kind.case === "error" && kind.value.status) console.log(`\n[turn failed: ${FenloError.fromStatus(kind.value.status).message}]`);
    }
  }
  await chat.end();

  const { messages } = await client.conversations.listMessages({ parent: conversation.name });
  console.log(`${messages.length} messages stored`);
} catch (err) {
  if (err instanceof FenloError && err.reason === ErrorReason.CREDENTIALS_EXPIRED) {
    console.error("the token has expired: run `make run` again for a new one");
  } else {
    console.error(err instanceof FenloError ? err.message : err);
  }
  process.exitCode = 1;
} finally {
  client.close();
}
