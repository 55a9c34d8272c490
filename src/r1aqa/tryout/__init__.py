"""The CPU try-out (tiny model, tone task, format warm-up, demo); nothing of the paper's pipeline imports it."""
