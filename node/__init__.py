"""One organization's node: config, reward model, HTTP API, CLI; the composition root."""
