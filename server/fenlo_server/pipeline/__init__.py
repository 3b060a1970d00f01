"""The chat turn pipeline: MessageContext, the Step protocol, the engine and its steps."""
