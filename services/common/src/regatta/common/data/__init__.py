"""The data layer: engine, failure classification, repositories, idempotency, migrations."""
