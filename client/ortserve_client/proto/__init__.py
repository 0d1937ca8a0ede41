"""Generated from protos/ortserve_client/proto/*.proto; regenerate with scripts/generate_stubs.py."""
