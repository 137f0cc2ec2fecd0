//! The deterministic simulator (placeholder; being written).
