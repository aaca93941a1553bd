"""A LangChain chat model for tests: answers every rationale request with the same three lines."""

from langchain_core.language_models.fake_chat_models import FakeListChatModel

ANSWER = ("DERIVATION: The viewer keeps two interests, space adventures and cartoons.\n"
          "EVOLUTION: Space adventures last; cartoons come and go.\n"
          "RECOMMENDATION: Serve the space interest with another starship story.")


def make() -> FakeListChatModel:
    return FakeListChatModel(responses=[ANSWER] * 10_000)
