"""Shared core of the games: grid mechanics, rendering, audio, text, seeding."""
