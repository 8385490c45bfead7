"""Test doubles: a fake Azure endpoint and a scripted local engine."""
