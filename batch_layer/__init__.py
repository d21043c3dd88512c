"""Batch layer: landing files -> immutable master dataset -> exact hourly/daily batch views."""
