"""A model for the quickstart: echoes each input, with the size of the batch it ran in."""


class Echo:
    def __init__(self, greeting: str = "hello") -> None:
        self.greeting = greeting

    def predict(self, batch: list) -> list:
        return [
            {"echo": item, "greeting": self.greeting, "batch_size": len(batch)} for item in batch
        ]
