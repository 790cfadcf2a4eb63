//! The `partnerhub` program, built by Cargo as a target of this package so that
//! the process tests and benchmarks run exactly the code under test
//! (`CARGO_BIN_EXE_partnerhub-under-test`) without building it themselves.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    partnerhub::cli::main().await
}
