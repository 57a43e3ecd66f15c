"""The capture role and its frame sources. Never imports torch."""
