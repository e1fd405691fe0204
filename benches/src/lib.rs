//! Kisara benchmarks live in `benches/`.
