"""Pipeline files written the way users write them, for tests that plug them in with --pipeline."""
