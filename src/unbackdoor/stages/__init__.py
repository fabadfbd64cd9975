"""Pipeline stages: one module per stage, each with one `XConfig` dataclass and one `run(...) -> Path`."""
