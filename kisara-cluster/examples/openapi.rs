//! Writes the HTTP API's OpenAPI document to stdout, for validators and
//! client generators: `cargo run -q -p kisara-cluster --example openapi`.

use std::io::Write;

fn main() -> std::io::Result<()> {
    let document = kisara_cluster::http::openapi()
        .to_pretty_json()
        .map_err(std::io::Error::other)?;
    let mut out = std::io::stdout().lock();
    out.write_all(document.as_bytes())?;
    out.write_all(b"\n")
}
