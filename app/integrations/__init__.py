"""Client integrations over the engine: the OpenAI-compatible endpoint, the LangChain chat model,
and the replay of a client-held message list into a session."""
