"""The games: one module each, every one a batched game with single and vector envs."""
