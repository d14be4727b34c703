"""Chat clients: AutoGen's `ChatCompletionClient` contract over crew's backends.

`base.ModelClient` owns what every client does (holding the model, timing, usage, failures,
the `CreateResult`); `convert` the message, tool and thinking conversions they share; one
module per backend (`ollama`, `embedded`) says only how to ask its server. The clients are
siblings: none inherits from another backend's client. This package imports AutoGen.
"""

from crew.clients.base import Ask, ModelClient, Piece

__all__ = ["Ask", "ModelClient", "Piece"]
